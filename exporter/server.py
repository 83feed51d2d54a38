"""The exporter's own HTTP endpoint: /metrics, /healthz, /readyz and a landing page."""

from __future__ import annotations

import html
import json
import time
from urllib.parse import quote

from aiohttp import web

from . import __version__
from .app import Exporter
from .collector import process_exposition
from .debugview import target_debug
from .webconfig import WebConfig
from .webconfig import install as install_web_config


class ScrapeLimit:
    """At most `limit` /metrics responses in flight (building or sending); more get HTTP 503,
    like node_exporter's --web.max-requests."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0


TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what prometheus_client answers too
EXPORTER_KEY = web.AppKey("exporter", Exporter)
SCRAPES_KEY = web.AppKey("scrapes", ScrapeLimit)


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def render_metrics(exporter: Exporter, accept: str) -> tuple[bytes, str]:
    if wants_openmetrics(accept):
        from prometheus_client.openmetrics import (
            exposition as openmetrics,  # rarely asked for
        )

        return openmetrics.generate_latest(exporter.registry), openmetrics.CONTENT_TYPE_LATEST
    return exporter.renderer.render() + process_exposition(), TEXT_CONTENT_TYPE


async def metrics(request: web.Request) -> web.StreamResponse:
    scrapes = request.app[SCRAPES_KEY]
    if scrapes.in_flight >= scrapes.limit:
        return web.Response(status=503, text="too many concurrent scrapes\n")
    scrapes.in_flight += 1
    try:
        body, content_type = render_metrics(request.app[EXPORTER_KEY], request.headers.get("Accept", ""))
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            import gzip

            body = gzip.compress(body, compresslevel=1)
            response.headers["Content-Encoding"] = "gzip"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)  # waits while a slow client drains: counted as in flight
        await response.write_eof()
        return response
    finally:
        scrapes.in_flight -= 1


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    if exporter.running and all(p.task is not None and not p.task.done() for p in exporter.pollers.values()):
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


def _age(timestamp: float | None) -> str:
    return "never" if timestamp is None else f"{time.time() - timestamp:.1f}s ago"


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
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            target.name, state.engine, target.url or "local", status, _age(health.last_success), error))
            + f"<td>{debug}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llm-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>llm-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
<table><tr><th>target</th><th>engine</th><th>url</th><th>state</th><th>last success</th><th>last error</th>
<th>what it saw</th></tr>
{''.join(rows)}
</table></body></html>
"""
    return web.Response(text=page, content_type="text/html")


async def debug_target(request: web.Request) -> web.Response:
    state = request.app[EXPORTER_KEY].states.get(request.match_info["name"])
    if state is None:
        return web.json_response({"error": "no such target"}, status=404)
    return web.json_response(target_debug(state), dumps=lambda value: json.dumps(value, indent=1, default=str))


def build_app(exporter: Exporter, max_requests: int = 40, web_config: WebConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    if web_config is not None:
        install_web_config(app, web_config)
    app[EXPORTER_KEY] = exporter
    app[SCRAPES_KEY] = ScrapeLimit(max_requests)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    app.router.add_get("/debug/targets/{name}", debug_target)
    return app
