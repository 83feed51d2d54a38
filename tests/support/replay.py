"""A replay server: answers engine endpoints with recorded payloads (and injected faults).

Routes are `path → Reply`; any prefix `/t/<anything>` is stripped first, so one
server can stand in for many targets (http://127.0.0.1:PORT/t/17 is target 17).
Tests change replies at run time with `server.set(path, reply)` (in process) or
`POST /_replay` (JSON: {"path": ..., "status": ..., "body": ..., "headers": {...},
"fault": ...}) when it runs as a separate process:

    python tests/support/replay.py --port 9000 --spec spec.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

PREFIX_RE = re.compile(r"^/t/[^/]+")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Faults: "hang" (accept, never answer), "trickle" (1 byte/s), "reset" (close mid-body),
    # "truncate" (Content-Length larger than the body), "huge" (stream `huge_bytes` of data),
    # "reset_once" (close the connection on the first request only), "flap" (every other request 503).
    fault: str | None = None
    huge_bytes: int = 100 * 1024 * 1024
    tripped: bool = False  # "reset_once": the first request was reset already

    @staticmethod
    def text(body: str, status: int = 200, content_type: str = "text/plain; version=0.0.4", **headers: str) -> Reply:
        return Reply(status, body.encode("utf-8"), {"Content-Type": content_type, **headers})

    @staticmethod
    def json(obj: object, status: int = 200, **headers: str) -> Reply:
        return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **headers})


class ReplayServer:
    def __init__(self, routes: dict[str, Reply] | None = None):
        self.routes: dict[str, Reply] = dict(routes or {})
        self.hits: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_post("/_replay", self._control)
        self.app.router.add_route("GET", "/{tail:.*}", self._serve)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.required_authorization: str | None = None  # answer 401 unless this header is sent
        self.seen_authorization: list[str | None] = []

    def set(self, path: str, reply: Reply) -> None:
        self.routes[path] = reply

    def remove(self, path: str) -> None:
        self.routes.pop(path, None)

    async def start(self, port: int = 0, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _control(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.set(
            spec["path"],
            Reply(spec.get("status", 200), spec.get("body", "").encode(), spec.get("headers", {}), spec.get("fault")),
        )
        return web.Response(text="ok")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = PREFIX_RE.sub("", request.path) or "/"
        self.hits[path] = self.hits.get(path, 0) + 1
        self.seen_authorization.append(request.headers.get("Authorization"))
        if (
            self.required_authorization is not None
            and request.headers.get("Authorization") != self.required_authorization
        ):
            return web.Response(status=401, text="unauthorized")
        reply = self.routes.get(path)
        if reply is None:
            return web.Response(status=404, text="not found")
        if reply.fault == "flap":
            reply.tripped = not reply.tripped
            if reply.tripped:
                return web.Response(status=503, text="flapping")
        if reply.fault == "reset_once" and not reply.tripped:
            reply.tripped = True
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if reply.fault == "hang":
            await asyncio.sleep(3600)
        if reply.fault in ("trickle", "reset", "truncate", "huge"):
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            if reply.fault == "truncate":
                response.content_length = len(reply.body) + 1000
            await response.prepare(request)
            if reply.fault == "trickle":
                for byte in reply.body:
                    await response.write(bytes([byte]))
                    await asyncio.sleep(1.0)
            elif reply.fault == "huge":
                chunk = b"x" * 65536
                for _ in range(reply.huge_bytes // len(chunk)):
                    await response.write(chunk)
            else:
                await response.write(reply.body[: len(reply.body) // 2])
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def load_spec(path: Path) -> dict[str, Reply]:
    """Spec JSON: {"/metrics": {"file": "...", "status": 200, "headers": {...}}, ...}."""
    routes = {}
    for route, item in json.loads(path.read_text()).items():
        body = Path(item["file"]).read_bytes() if "file" in item else item.get("body", "").encode()
        routes[route] = Reply(item.get("status", 200), body, item.get("headers", {}), item.get("fault"))
    return routes


async def _main(port: int, spec: Path) -> None:
    server = ReplayServer(load_spec(spec))
    await server.start(port)
    print(f"replay server on 127.0.0.1:{server.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.spec))
