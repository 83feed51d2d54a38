"""The HTTP endpoint under hostile clients: slow readers, half-sent heads, too many sockets, floods of
malformed requests; shared bodies; OpenMetrics from the same cached lines as text."""

import asyncio
import logging
import socket
import time

import pytest
from aiohttp import web

from exporter import server
from exporter.app import Exporter
from exporter.config import load_config_text
from exporter.logsetup import quiet_client_noise
from exporter.sources import engine_specs
from exporter.state import TargetState

BIG = b"x" * (16 * 1024 * 1024)  # larger than the socket buffers: writes block on a client that does not read


def exporter_for(text: str = "targets:\n  - {name: v, engine: vllm, url: 'http://127.0.0.1:9'}\n") -> Exporter:
    exporter = Exporter(load_config_text(text, "t", {}, engines=engine_specs()), None)
    exporter.states = {t.name: TargetState(t) for t in exporter.config.targets}  # targets, never polled
    return exporter


async def serve(app: web.Application, **guard: int) -> tuple[web.AppRunner, int]:
    runner = await server.start_runner(app)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def get(port: int, path: str = "/metrics", extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_slow_readers_hold_no_slot_pin_no_copy_and_are_cut(monkeypatch):
    """Clients that ask and never read neither starve other scrapes (no slot held while sending) nor pin a
    copy of the body each (one shared body, written in chunks), and are disconnected after WRITE_TIMEOUT."""
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 1.0)
    monkeypatch.setattr(server, "render_metrics", lambda exp, openmetrics=False: BIG)
    app = server.build_app(exporter_for(), max_requests=2)
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    stalled = []
    try:
        for _ in range(6):  # more than the cap, asking and never reading
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(sock)
        await asyncio.sleep(0.3)
        assert app[server.SCRAPES_KEY].in_flight == 0
        assert len(app[server.BODIES_KEY].current) == 1  # one body for all of them
        answer = await loop.run_in_executor(None, get, port)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(BIG[-100:])
        assert len(app[server.GUARD_KEY].opened) == 6
        await asyncio.sleep(1.5)  # past WRITE_TIMEOUT: the server closed the stalled connections
        assert len(app[server.GUARD_KEY].opened) == 0
    finally:
        for sock in stalled:
            sock.close()
        await runner.cleanup()


async def test_builds_are_capped_and_cache_hits_are_free(monkeypatch):
    """--web.max-requests caps bodies being built (here a slow gzip): another scrape that needs a new body
    gets 503, one that can reuse the current body does not."""
    import gzip as gzip_module

    real = gzip_module.compress

    def slow(data: bytes, level: int = 9) -> bytes:
        time.sleep(1.0)
        return real(data, level)

    monkeypatch.setattr(server.gzip, "compress", slow)
    app = server.build_app(exporter_for(), max_requests=1)
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    try:
        zipped = loop.run_in_executor(None, get, port, "/metrics", b"Accept-Encoding: gzip\r\n")
        await asyncio.sleep(0.3)
        assert app[server.SCRAPES_KEY].in_flight == 1
        other = await loop.run_in_executor(
            None, get, port, "/metrics", b"Accept: application/openmetrics-text; version=1.0.0\r\n"
        )
        assert other.startswith(b"HTTP/1.1 503")
        plain = await loop.run_in_executor(None, get, port)  # the text body exists already: no build
        assert plain.startswith(b"HTTP/1.1 200")
        assert (await zipped).startswith(b"HTTP/1.1 200")
        debug_busy = app[server.SCRAPES_KEY]
        debug_busy.in_flight = 1  # the debug view counts under the same cap
        assert (await loop.run_in_executor(None, get, port, "/debug/targets/v")).startswith(b"HTTP/1.1 503")
        debug_busy.in_flight = 0
        assert (await loop.run_in_executor(None, get, port, "/debug/targets/v")).startswith(b"HTTP/1.1 200")
    finally:
        await runner.cleanup()


async def test_half_sent_heads_are_cut_and_the_port_keeps_serving(monkeypatch):
    """Slowloris: a connection that does not finish its request head within HEAD_TIMEOUT is closed; past
    MAX_CONNECTIONS the oldest idle connection makes room, so /healthz and /metrics keep answering."""
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.5)
    guard = server.ConnectionGuard(limit=20)
    app = server.build_app(exporter_for(), guard=guard)
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(sock)
        await asyncio.sleep(0.2)
        assert len(guard.opened) <= 20 and guard.evicted >= 40
        assert (await loop.run_in_executor(None, get, port, "/healthz")).startswith(b"HTTP/1.1 200")
        assert (await loop.run_in_executor(None, get, port)).startswith(b"HTTP/1.1 200")
        late = socket.create_connection(("127.0.0.1", port))
        late.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        late.settimeout(3)
        started = time.monotonic()
        assert await loop.run_in_executor(None, late.recv, 100) == b""  # closed by the server
        assert time.monotonic() - started < 2.5
        late.close()
    finally:
        for sock in socks:
            sock.close()
        await runner.cleanup()


async def test_malformed_requests_are_logged_rate_limited_without_their_bytes(caplog):
    """2,000 malformed requests (one carrying valid Basic credentials in a bad header) make a handful of
    log lines, none with a traceback or the credentials; no Server banner names versions."""
    quiet_client_noise()
    app = server.build_app(exporter_for())
    runner, port = await serve(app)
    secret = b"cHJvbTpzM2NyZXQ="  # base64 of prom:s3cret

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        bad = (
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"
            if i % 2
            else b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + secret + b"\x01\r\n\r\n"
        )
        writer.write(bad)
        await writer.drain()
        await reader.read()
        writer.close()

    try:
        with caplog.at_level(logging.INFO):
            for _ in range(20):
                await asyncio.gather(*(one(i) for i in range(100)))
        lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "llm_exporter", "asyncio"))]
        assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]
        text = "\n".join(r.getMessage() for r in lines)
        assert secret.decode() not in text and not any(r.exc_info for r in lines)
        answer = await asyncio.get_running_loop().run_in_executor(None, get, port, "/healthz")
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert b"server: llm-exporter" in head and b"python" not in head and b"aiohttp" not in head
    finally:
        await runner.cleanup()
        for name in ("aiohttp.server", "asyncio"):
            logging.getLogger(name).filters.clear()


@pytest.mark.parametrize(
    "accept, openmetrics",
    [
        # Prometheus 2.x's default scrape Accept header
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
        ("text/plain;version=0.0.4,application/openmetrics-text;version=1.0.0;q=0.5", False),
        ("application/openmetrics-text; version=1.0.0", True),
        ("", False),
        ("application/openmetrics-text;q=0", False),
    ],
)
def test_format_negotiation(accept, openmetrics):
    assert server.wants_openmetrics(accept) is openmetrics
