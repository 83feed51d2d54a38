"""llama.cpp router events (`GET /models/sse`, as b11434's server-models.cpp sends them): exact load times,
reconnect with backoff on a dropped stream, and nothing asked of a build without it."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from tests.conftest import FIXTURES
from tests.support.net import serve_handler
from tests.support.pipeline import Pipeline

LC = FIXTURES / "llamacpp"


class FakeRouter:
    """/models, /metrics?model=, /props and /models/sse (events pushed by the test); records every request."""

    def __init__(self, sse: bool = True):
        self.state = "unloaded"
        self.sse = sse
        self.requests: list[tuple[str, str]] = []
        self.streams: list[web.StreamResponse] = []
        self.stream_opened = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path == "/models/sse" and self.sse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            self.streams.append(response)
            self.stream_opened.set()
            while response in self.streams:  # until the test drops it
                await asyncio.sleep(0.02)
            return response
        if request.path == "/models":
            return web.json_response(
                {"data": [{"id": "m", "path": "/models/m.gguf", "status": {"value": self.state, "args": []}}]}
            )
        if request.path == "/metrics" and "model" not in request.query:
            return web.json_response({"error": {"message": "model name is missing"}}, status=400)
        if request.path == "/metrics":
            return web.Response(text=(LC / "b11434-metrics-idle-after-load.prom").read_text())
        if request.path == "/props":
            return web.Response(body=(LC / "b11434-props.json").read_bytes(), content_type="application/json")
        return web.Response(status=404)

    async def push(self, event: str, status: str) -> None:
        line = "data: " + json.dumps({"model": "m", "event": event, "data": {"status": status}}) + "\n\n"
        for stream in list(self.streams):
            await stream.write(line.encode())

    async def drop(self) -> None:
        for stream in list(self.streams):
            self.streams.remove(stream)


@pytest.fixture
async def router(request):
    fake = FakeRouter(sse=getattr(request, "param", True))
    runner, fake.port = await serve_handler(fake.handle)  # type: ignore[attr-defined]
    yield fake
    await fake.drop()
    await runner.cleanup()


async def test_event_times_date_the_load_and_a_dropped_stream_reconnects(router):
    pipe = Pipeline("llamacpp", f"http://127.0.0.1:{router.port}")
    try:
        await pipe.poll()  # finds the router, starts the stream
        await asyncio.wait_for(router.stream_opened.wait(), 5)
        started = time.monotonic()
        await router.push("model_status", "loading")
        await asyncio.sleep(0.4)
        router.state = "loaded"
        await router.push("status_change", "loaded")
        took = time.monotonic() - started
        await asyncio.sleep(0.1)
        await pipe.poll()
        load = pipe.state.life.lifecycles["m"].last
        assert load is not None and load.basis == "engine_events", load
        assert load.seconds == pytest.approx(took, abs=0.1)
        # the stream drops: it is opened again after the backoff, and no request ever loads or wakes anything
        router.stream_opened.clear()
        await router.drop()
        await asyncio.wait_for(router.stream_opened.wait(), 5)
        assert pipe.source.router.events.connects == 2
        assert all(method == "GET" for method, _ in router.requests)
        assert [path for _, path in router.requests].count("/models/sse") == 2
    finally:
        await pipe.close()


@pytest.mark.parametrize("router", [False], indirect=True)
async def test_a_build_without_the_stream_is_asked_once_and_polling_still_dates_loads(router):
    pipe = Pipeline("llamacpp", f"http://127.0.0.1:{router.port}", interval="200ms", timeout="190ms")
    try:
        await pipe.poll()
        await asyncio.sleep(0.3)
        router.state = "loading"
        await pipe.poll()
        router.state = "loaded"
        await pipe.poll()
        await asyncio.sleep(1.5)
        assert pipe.source.router.events.supported is False
        assert [path for _, path in router.requests].count("/models/sse") == 1
        load = pipe.state.life.lifecycles["m"].last
        assert load is not None and load.basis == "first_seen_loading"
    finally:
        await pipe.close()
