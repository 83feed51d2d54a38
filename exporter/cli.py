"""Command line: `llm-exporter [--config FILE] [--listen HOST:PORT] ...`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys

from aiohttp import web

from . import __version__
from .app import Exporter
from .config import Config, ConfigError, load_config, parse_listen, read_small_file
from .logsetup import setup_logging
from .server import build_app, render_metrics, start_runner
from .sources import engine_specs
from .webconfig import WebConfig, WebConfigHolder, load_web_config

log = logging.getLogger("llm_exporter")
EXIT_CONFIG = 2
SHUTDOWN_BUDGET = 1.5  # seconds; SIGTERM must end the process within 2 s


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (0 would refuse every scrape), got {number}")
    return number


def _config_error(what: str, exc: Exception, as_json: bool) -> int:
    """A config problem: one JSON log line under --log-format json, else plain text on stderr."""
    if as_json:
        log.error("%s: %s", what, exc)
    else:
        print(f"llm-exporter: {what}: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-exporter",
        description="Prometheus exporter for LLM inference servers (llama.cpp, vLLM, SGLang, TGI, TensorRT-LLM, "
        "LMDeploy, Ollama, "
        "NVIDIA GPUs): model load time, token queue latency, KV-cache hit ratio.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (default: $LLM_EXPORTER_CONFIG when that file exists, else the embedded default config)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=os.environ.get("LLM_EXPORTER_LISTEN") or None,
        help="address to serve /metrics on (overrides the config; default: $LLM_EXPORTER_LISTEN)",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--healthcheck",
        action="store_true",
        help="exit 0 when the exporter that this config (and --listen) describes answers /healthz "
        "on this host, else 1 (a container HEALTHCHECK)",
    )
    parser.add_argument(
        "--once", action="store_true", help="poll every target once, print the exposition to stdout and exit"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    parser.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=_positive,
        default=40,
        metavar="N",
        help="maximum /metrics bodies (and debug views) being built at once; more get HTTP 503 "
        "(default 40); scrapes of unchanged state share one body",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        default=os.environ.get("LLM_EXPORTER_WEB_CONFIG") or None,
        help="TLS and basic auth for this endpoint (Prometheus exporter-toolkit format; "
        "default: $LLM_EXPORTER_WEB_CONFIG)",
    )
    parser.add_argument("--version", action="version", version=f"llm-exporter {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    config_path = args.config
    if config_path is None and os.environ.get("LLM_EXPORTER_CONFIG"):
        candidate = os.environ["LLM_EXPORTER_CONFIG"]
        if os.path.exists(candidate):
            config_path = candidate
        else:
            log.info("%s (from LLM_EXPORTER_CONFIG) does not exist: using the embedded default config", candidate)
    args.config = config_path
    try:
        config = load_config(args.config, engines=engine_specs())
        if args.listen:
            parse_listen(args.listen)
            config = dataclasses.replace(config, listen=args.listen)
    except ConfigError as exc:
        return _config_error("config error", exc, args.log_format == "json")
    except ValueError as exc:
        return _config_error("--listen", exc, args.log_format == "json")
    web_config = None
    if args.web_config:
        try:
            web_config = load_web_config(args.web_config)
        except ConfigError as exc:
            return _config_error("web config error", exc, args.log_format == "json")
    if args.check_config:
        print(f"{config.source}: OK ({len(config.targets)} targets)")
        return 0
    if args.healthcheck:
        return _healthcheck(config, web_config, args.config, args.listen)
    if args.once:
        return asyncio.run(_once(config, args.config))
    try:
        holder = WebConfigHolder(args.web_config, web_config) if web_config is not None else None
        return asyncio.run(_serve(config, args.config, args.max_requests, holder, args.listen))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled in the loop
        return 0


def _runtime_file(config_path: str | None) -> str:
    """Where a running exporter says what it serves, so `--healthcheck` with the same --config probes that
    (not what the file on disk says now): one file per config path, in $XDG_RUNTIME_DIR or the temp dir."""
    import hashlib
    import tempfile

    key = hashlib.sha256(os.path.abspath(config_path).encode() if config_path else b"<default>").hexdigest()[:12]
    directory = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(directory, f"llm-exporter-{os.getuid()}-{key}.json")


def _announce(config_path: str | None, url: str) -> str | None:
    import json

    path = _runtime_file(config_path)
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "healthz": url}, handle)
        os.replace(path + ".tmp", path)
        return path
    except OSError:  # a read-only filesystem: --healthcheck falls back to the config file
        return None


def _announced(config_path: str | None) -> str | None:
    import json

    try:
        data = json.loads(read_small_file(_runtime_file(config_path), 4096))
        os.kill(int(data["pid"]), 0)  # still running (signal 0 checks only)
        return str(data["healthz"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _healthcheck(
    config: Config, web_config: WebConfig | None, config_path: str | None = None, listen_override: str | None = None
) -> int:
    import ssl
    import urllib.request

    host, port = config.host_port
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    scheme = "https" if web_config is not None and web_config.ssl_context is not None else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/healthz"
    if listen_override is None:
        url = _announced(config_path) or url
    context = ssl._create_unverified_context() if url.startswith("https") else None  # liveness of this host
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"llm-exporter: {url}: {exc}", file=sys.stderr)
        return 1


async def _once(config: Config, config_path: str | None) -> int:
    exporter = Exporter(config, config_path)
    await exporter.start(poll=False)
    try:
        await exporter.poll_all_once()
        sys.stdout.write(render_metrics(exporter).decode("utf-8"))
    finally:
        await exporter.stop()
    return 0


def raise_fd_limit() -> None:
    """Use the hard limit on open files (Go programs do this at start): a default soft limit of 1,024 is
    what a slowloris client exhausts first. The shipped unit sets LimitNOFILE (soft = hard), so nothing is
    asked of its system-call filter there."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without it, or refused
        pass


async def _reload_web_config(holder: WebConfigHolder) -> None:
    from .config import read_off_loop

    try:
        new = await read_off_loop(lambda: load_web_config(holder.path), 10.0, holder.path)
    except ConfigError as exc:
        log.error("web config reload rejected, keeping the running one: %s", exc)
        return
    problem = holder.reload(new)
    if problem:
        log.error("web config reload rejected, keeping the running one: %s", problem)
    else:
        log.info("web config reloaded from %s", holder.path)


async def _serve(
    config: Config,
    config_path: str | None,
    max_requests: int,
    web_config: WebConfigHolder | None = None,
    listen_override: str | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    raise_fd_limit()
    exporter = Exporter(config, config_path, listen_override)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        jobs: list[asyncio.Task[object]] = [loop.create_task(exporter.reload())]
        if web_config is not None:
            jobs.append(loop.create_task(_reload_web_config(web_config)))
        for task in jobs:
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)

    host, port = config.host_port
    runner = await start_runner(build_app(exporter, max_requests, web_config), shutdown_timeout=0.5)
    site = web.TCPSite(
        runner, host, port, reuse_address=True, ssl_context=web_config.ssl_context if web_config else None
    )
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        await runner.cleanup()
        return 1
    await exporter.start()
    log.info(
        "llm-exporter %s listening on %s:%d with %d targets (config: %s)",
        __version__,
        host,
        port,
        len(exporter.config.targets),
        exporter.config.source,
    )
    probe_host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    scheme = "https" if web_config is not None and web_config.ssl_context is not None else "http"
    announced = _announce(
        config_path, f"{scheme}://{'[' + probe_host + ']' if ':' in probe_host else probe_host}:{port}/healthz"
    )
    await stop.wait()
    if announced is not None:
        with contextlib.suppress(OSError):
            os.unlink(announced)
    log.info("shutting down")
    try:
        async with asyncio.timeout(SHUTDOWN_BUDGET):
            for task in reloads:
                task.cancel()
            await exporter.stop()
            await runner.cleanup()
    except TimeoutError:
        log.warning("shutdown took longer than %.1fs; exiting anyway", SHUTDOWN_BUDGET)
    return 0
