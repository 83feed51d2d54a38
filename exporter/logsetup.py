"""Logging to stderr, one line per event, as text or JSON. Control characters in messages are escaped
so a hostile target cannot forge log lines or send terminal escapes. Noisy sources a client controls
(aiohttp's malformed-request errors, failed accepts when file descriptors run out) are rate-limited and
logged without the request's bytes (aiohttp's parser errors can echo an Authorization header)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    return {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


class RateLimited:
    """A token bucket for log lines a client or an upstream can cause: at most `burst` per `window`
    seconds; the next line that gets through says how many were held back."""

    def __init__(
        self, logger: logging.Logger, burst: int = 3, window: float = 60.0, note: str = "more like this not logged"
    ):
        self.logger = logger
        self.note = note
        self.burst, self.window = burst, window
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.held = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.burst / self.window)
        self.stamp = now
        if self.tokens < 1:
            self.held += 1
            return False
        self.tokens -= 1
        return True

    def emit(self, level: int, message: str, *args: object) -> None:
        if not self.allow():
            return
        if self.held:
            message += f" (%d {self.note})"
            args = (*args, self.held)
            self.held = 0
        self.logger.log(level, message, *args)


class _ClientNoise(logging.Filter):
    """Replaces aiohttp's per-request error records (malformed requests: a traceback at error level, and
    the offending header's bytes in the message) and asyncio's failed-accept records with one rate-limited
    line that names only the error's type."""

    def __init__(self, what: str, limiter: RateLimited):
        super().__init__()
        self.what, self.limiter = what, limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if self.what == "accept" and not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else "error"
        if self.what == "accept":
            self.limiter.emit(logging.WARNING, "cannot accept connections: %s (file descriptors exhausted?)", kind)
        else:
            self.limiter.emit(logging.WARNING, "malformed or failed HTTP request from a client: %s", kind)
        return False


class _OneLine(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.as_json:
            return json.dumps(
                {"ts": stamp, "level": record.levelname.lower(), "logger": record.name, "msg": message},
                ensure_ascii=False,
            )
        message = _CONTROL.sub(_escape_control, message)
        return f"{stamp} {record.levelname.lower():<7} {record.name}: {message}"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_client_noise()


def quiet_client_noise() -> None:
    """Rate-limit (and strip) what clients can make aiohttp and asyncio log."""
    quiet = logging.getLogger("llm_exporter.server")
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [_ClientNoise("request", RateLimited(quiet, burst=3, window=60.0))]
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.filters[:] = [_ClientNoise("accept", RateLimited(quiet, burst=3, window=60.0))]
