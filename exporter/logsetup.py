"""Logging to stderr, one line per event, as text or JSON. Newlines in messages are escaped
so a hostile target cannot forge log lines."""

from __future__ import annotations

import json
import logging
import sys
import time


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
            return json.dumps({"ts": stamp, "level": record.levelname.lower(), "logger": record.name,
                               "msg": message}, ensure_ascii=False)
        message = message.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"{stamp} {record.levelname.lower():<7} {record.name}: {message}"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
