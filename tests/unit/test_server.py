"""The HTTP endpoint: the concurrent-scrape cap answers 503 beyond the limit; endpoints respond."""

import asyncio
import socket

from aiohttp import web

from exporter import server
from exporter.app import Exporter
from exporter.config import load_config_text


async def test_scrape_cap_answers_503_while_slow_clients_hold_the_slots(monkeypatch):
    config = load_config_text("targets:\n  - {name: v, engine: vllm, url: 'http://127.0.0.1:9'}\n", "t", {})
    exporter = Exporter(config, None)
    big = b"x" * (32 * 1024 * 1024)  # larger than the socket buffers: writes block on a client that does not read
    monkeypatch.setattr(server, "render_metrics", lambda exp, accept: (big, "text/plain"))
    app = server.build_app(exporter, max_requests=2)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stalled = []
    try:
        for _ in range(2):  # two clients that ask and never read
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(sock)
        await asyncio.sleep(0.5)
        assert app[server.SCRAPES_KEY].in_flight == 2

        def third() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64)

        assert (await loop.run_in_executor(None, third)).startswith(b"HTTP/1.1 503")

        def health() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64)

        assert (await loop.run_in_executor(None, health)).startswith(b"HTTP/1.1 200")
    finally:
        for sock in stalled:
            sock.close()
        await asyncio.sleep(0.2)
        await runner.cleanup()
    assert app[server.SCRAPES_KEY].in_flight == 0  # slots are given back when clients go away
