"""The exporter's own HTTP endpoint: /metrics, /healthz, /readyz and a landing page."""

from __future__ import annotations

import asyncio
import html
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .app import Exporter

EXPORTER_KEY = web.AppKey("exporter", Exporter)
SEMAPHORE_KEY = web.AppKey("scrape_slots", asyncio.Semaphore)


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def render_metrics(exporter: Exporter, accept: str) -> tuple[bytes, str]:
    if wants_openmetrics(accept):
        from prometheus_client.openmetrics import exposition as openmetrics  # rarely asked for

        return openmetrics.generate_latest(exporter.registry), openmetrics.CONTENT_TYPE_LATEST
    return exporter.renderer.render() + generate_latest(exporter.process_registry), CONTENT_TYPE_LATEST


async def metrics(request: web.Request) -> web.Response:
    slots = request.app[SEMAPHORE_KEY]
    if slots.locked():
        return web.Response(status=503, text="too many concurrent scrapes\n")
    async with slots:
        body, content_type = render_metrics(request.app[EXPORTER_KEY], request.headers.get("Accept", ""))
    headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        import gzip

        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


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
        status = ("up" if state.up else "down") + (f", {state.readiness.value}" if state.readiness else "")
        error = f"{state.last_error[0].value}: {state.last_error[1]}" if state.last_error else ""
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            target.name, target.engine, target.url or "local", status, _age(state.last_success), error)) + "</tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llm-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>llm-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
<table><tr><th>target</th><th>engine</th><th>url</th><th>state</th><th>last success</th><th>last error</th></tr>
{''.join(rows)}
</table></body></html>
"""
    return web.Response(text=page, content_type="text/html")


def build_app(exporter: Exporter, max_requests: int = 40) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[EXPORTER_KEY] = exporter
    app[SEMAPHORE_KEY] = asyncio.Semaphore(max_requests)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", landing)
    return app
