"""The exporter's own HTTP endpoint: /metrics, /healthz, /readyz, a landing page and /debug/targets/<name>.

What no client can do to it (docs/reliability.md):
- make it build more than `--web.max-requests` responses at once: a scrape that needs a new body (or a
  debug view) holds a slot while it is built; more get HTTP 503. Scrapes of unchanged state share one
  immutable body per format (and one gzip of it, compressed once in a worker thread), so 1,000 concurrent
  scrapes hold one copy of the exposition, not 1,000;
- pin memory or slots by not reading: a response is written in 32 KiB chunks from the shared body (a slow
  reader holds at most a chunk of its own) and is cut after WRITE_TIMEOUT;
- hold a connection open without sending a request: a request head must be complete HEAD_TIMEOUT after
  the connection opened (or after the previous response); beyond MAX_CONNECTIONS, the oldest connection
  that is not being answered is closed to admit the new one.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from . import __version__, clock
from .app import Exporter
from .debugview import target_debug
from .text import process_exposition
from .webconfig import WebConfigHolder
from .webconfig import install as install_web_config

log = logging.getLogger("llm_exporter.server")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what prometheus_client answers too
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
HEAD_TIMEOUT = 10.0  # seconds for a client to send a whole request head
WRITE_TIMEOUT = 30.0  # seconds for a client to read a whole response (Prometheus' longest default timeout)
CHUNK = 32 * 1024  # bytes handed to the socket at a time
MAX_CONNECTIONS = 512  # open connections; the oldest idle one is closed beyond this
BODY_MAX_AGE = 1.0  # seconds a body of unchanged targets is reused (the exporter's own metrics age that much)


class ScrapeLimit:
    """At most `limit` responses being built at once (a /metrics body that is not cached yet, a debug view);
    more get HTTP 503, like node_exporter's --web.max-requests. Sending a built body holds no slot."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def take(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def give(self) -> None:
        self.in_flight -= 1


@dataclass
class Body:
    """One rendered exposition, immutable, shared by every scrape that asks for it while it is current."""

    key: tuple[Any, ...]
    made: float
    plain: bytes
    gzipped: asyncio.Future[bytes] | None = None


@dataclass
class Bodies:
    """The current body per format; gzip made once per body, one compression at a time, off the loop."""

    exporter: Exporter
    current: dict[bool, Body] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "gzip"))

    def key(self) -> tuple[Any, ...]:
        states = self.exporter.states.values()
        return (self.exporter.renderer.namespace, tuple((s.target.name, s.version) for s in states))

    def cached(self, openmetrics: bool) -> Body | None:
        body = self.current.get(openmetrics)
        if body is not None and time.monotonic() - body.made < BODY_MAX_AGE and body.key == self.key():
            return body
        return None

    def build(self, openmetrics: bool) -> Body:
        plain = render_metrics(self.exporter, openmetrics)
        body = self.current[openmetrics] = Body(self.key(), time.monotonic(), plain)
        return body

    async def gzipped(self, body: Body) -> bytes:
        if body.gzipped is None:
            loop = asyncio.get_running_loop()
            body.gzipped = loop.run_in_executor(self.pool, gzip.compress, body.plain, 1)
        return await asyncio.shield(body.gzipped)


EXPORTER_KEY = web.AppKey("exporter", Exporter)
SCRAPES_KEY = web.AppKey("scrapes", ScrapeLimit)
BODIES_KEY = web.AppKey("bodies", Bodies)


def wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when the client lists it with a higher (or equal, earlier) weight than text, as Prometheus
    does by default."""
    best: tuple[float, int, bool] | None = None
    for index, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media in ("application/openmetrics-text", "text/plain", "*/*") and weight > 0:
            candidate = (weight, -index, media == "application/openmetrics-text")
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    return best is not None and best[2]


def render_metrics(exporter: Exporter, openmetrics: bool = False) -> bytes:
    """The whole exposition in one format, from the renderer's cached per-target lines."""
    body = exporter.renderer.render(openmetrics) + process_exposition(openmetrics)
    return body + b"# EOF\n" if openmetrics else body


async def send(request: web.Request, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """Write a shared body in chunks (no copy of it per client) within WRITE_TIMEOUT; a client that does
    not read in time is disconnected."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    view = memoryview(body)
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await response.prepare(request)
            for start in range(0, len(view), CHUNK):
                await response.write(view[start : start + CHUNK])
            await response.write_eof()
    except TimeoutError:
        request.app[EXPORTER_KEY].status.connections_dropped["write_timeout"] += 1
        if request.transport is not None:
            request.transport.abort()
        log.debug("a client did not read its response within %.0fs: disconnected", WRITE_TIMEOUT)
    return response


async def metrics(request: web.Request) -> web.StreamResponse:
    bodies = request.app[BODIES_KEY]
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    zipped = "gzip" in request.headers.get("Accept-Encoding", "")
    body = bodies.cached(openmetrics)
    if body is None or (zipped and body.gzipped is None):
        scrapes = request.app[SCRAPES_KEY]
        if not scrapes.take():
            return web.Response(status=503, text="too many concurrent scrapes\n")
        try:
            body = bodies.cached(openmetrics) or bodies.build(openmetrics)
            data = await bodies.gzipped(body) if zipped else body.plain
        finally:
            scrapes.give()
    else:
        data = await bodies.gzipped(body) if zipped else body.plain
    request.app[EXPORTER_KEY].status.scrapes["openmetrics" if openmetrics else "text"] += 1
    headers = {
        "Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
        "Cache-Control": "no-store",
    }
    if zipped:
        headers["Content-Encoding"] = "gzip"
    return await send(request, data, headers)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    if exporter.running and all(p.task is not None and not p.task.done() for p in exporter.pollers.values()):
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


def _age(timestamp: float | None) -> str:
    return "never" if timestamp is None else f"{clock.now() - timestamp:.1f}s ago"


async def landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    rows = []
    for state in exporter.states.values():
        target = state.target
        health = state.health
        # "up, ready" / "up, loading" while polls work; "down" (the reason is in the error column) else
        status = f"up, {health.readiness.value}" if health.up and health.readiness else "up" if health.up else "down"
        error = f"{health.last_error[0].value}: {health.last_error[1]}" if health.last_error else ""
        debug = f'<a href="/debug/targets/{quote(target.name, safe="")}">debug</a>'
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (target.name, state.engine, target.url or "local", status, _age(health.last_success), error)
            )
            + f"<td>{debug}</td></tr>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llm-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>llm-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
<table><tr><th>target</th><th>engine</th><th>url</th><th>state</th><th>last success</th><th>last error</th>
<th>what it saw</th></tr>
{"".join(rows)}
</table></body></html>
"""
    return web.Response(text=page, content_type="text/html")


async def debug_target(request: web.Request) -> web.StreamResponse:
    """The debug view: built under the scrape cap, and bounded in size (debugview.py caps what it lists)."""
    state = request.app[EXPORTER_KEY].states.get(request.match_info["name"])
    if state is None:
        return web.json_response({"error": "no such target"}, status=404)
    scrapes = request.app[SCRAPES_KEY]
    if not scrapes.take():
        return web.Response(status=503, text="too many concurrent requests\n")
    try:
        body = json.dumps(target_debug(state), indent=1, default=str).encode()
    finally:
        scrapes.give()
    return await send(request, body, {"Content-Type": "application/json; charset=utf-8"})


class ConnectionGuard:
    """Counts open connections; beyond `limit`, closes the oldest one that is not being answered (a
    slowloris socket or an idle keep-alive) so the port keeps serving."""

    def __init__(self, limit: int = MAX_CONNECTIONS, dropped: dict[str, int] | None = None):
        self.limit = limit
        self.opened: dict[Any, None] = {}  # request handlers, oldest first
        self.busy: set[Any] = set()
        self.evicted = 0
        self.dropped = dropped if dropped is not None else {"evicted": 0}  # the exporter's status counts

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            transport.set_write_buffer_limits(high=CHUNK)
            made(handler, transport)
            self.opened[handler] = None
            if len(self.opened) > self.limit:
                victim = next((h for h in self.opened if h not in self.busy and h is not handler), None)
                if victim is not None:
                    self.opened.pop(victim, None)
                    self.evicted += 1
                    self.dropped["evicted"] = self.dropped.get("evicted", 0) + 1
                    victim.force_close()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self.opened.pop(handler, None)
            self.busy.discard(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol = request.protocol
        self.busy.add(protocol)
        try:
            return await handler(request)
        finally:
            self.busy.discard(protocol)


GUARD_KEY = web.AppKey("connections", ConnectionGuard)


async def _no_banner(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "llm-exporter"  # no Python or aiohttp versions


def build_app(
    exporter: Exporter,
    max_requests: int = 40,
    web_config: WebConfigHolder | None = None,
    guard: ConnectionGuard | None = None,
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, handler_args={"keepalive_timeout": HEAD_TIMEOUT})
    guard = guard or ConnectionGuard(dropped=exporter.status.connections_dropped)
    app[GUARD_KEY] = guard
    app.middlewares.append(guard.middleware)
    if web_config is not None:
        install_web_config(app, web_config)
    app[EXPORTER_KEY] = exporter
    app[SCRAPES_KEY] = ScrapeLimit(max_requests)
    app[BODIES_KEY] = Bodies(exporter)
    app.on_response_prepare.append(_no_banner)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    app.router.add_get("/debug/targets/{name}", debug_target)

    async def close_pool(app: web.Application) -> None:
        app[BODIES_KEY].pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(close_pool)
    return app


async def start_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An AppRunner whose server counts connections (ConnectionGuard) and logs malformed requests
    rate-limited, without their bytes (aiohttp's own messages can echo an Authorization header)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **kwargs)
    await runner.setup()
    assert runner.server is not None
    app[GUARD_KEY].install(runner.server)
    return runner
