"""llama.cpp's router mode on a real router's captured answers (tests/fixtures/llamacpp/router/SOURCES.md):
models and their states from /models, each loaded child's metrics under its model, a failed load and an
unload, nothing that loads a model, and a URL whose server changes from router to single-model and back."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from tests.conftest import FIXTURES
from tests.support.net import serve_handler
from tests.support.pipeline import Pipeline

ROUTER = FIXTURES / "llamacpp" / "router"


def answer(name: str) -> web.Response:
    """A captured answer as served: its body, status and headers (from <name>.meta.json)."""
    meta = json.loads((ROUTER / f"{name}.meta.json").read_text())
    return web.Response(status=meta["status"], body=(ROUTER / name).read_bytes(), headers=meta["headers"])


class CapturedServer:
    """Serves the captures by path and query, as the server was when `mode` and `models` are set; records
    every request (method and path with its query)."""

    def __init__(self, mode: str = "router", models: str = "models-two-loaded.json"):
        self.mode = mode
        self.models = models
        self.models_status: int | None = None  # set: /models answers this status with an empty body
        self.requests: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.path == "/models/sse":
            return web.Response(status=404)  # the stream's own tests are in test_llamacpp_router_events.py
        if self.mode == "single":
            if request.path == "/models":
                return answer("single-models.json")
            if request.path == "/metrics":
                return answer("single-metrics.prom")
            if request.path == "/props":  # a single-model b11434 server's /props (tests/fixtures/llamacpp)
                body = (FIXTURES / "llamacpp" / "b11434-props.json").read_bytes()
                return web.Response(body=body, content_type="application/json")
            return web.Response(status=404)
        if request.path == "/models":
            if self.models_status is not None:
                return web.Response(status=self.models_status)
            return answer(self.models)
        loaded = {m["id"] for m in json.loads((ROUTER / self.models).read_text())["data"]}
        loaded = {m for m in loaded if self._state(m) == "loaded"}
        model = request.query.get("model")
        if request.path == "/metrics" and model is None:
            return answer("metrics-no-model.json")
        if request.path == "/metrics":
            return answer("child-metrics.prom") if model in loaded else answer("metrics-not-loaded.json")
        if request.path == "/props" and model is not None:
            return answer("child-props.json") if model in loaded else answer("metrics-not-loaded.json")
        return web.Response(status=404)

    def _state(self, model: str) -> str:
        for entry in json.loads((ROUTER / self.models).read_text())["data"]:
            if entry["id"] == model:
                return str(entry["status"]["value"])
        return ""


@pytest.fixture
async def captured():
    """A server answering as the captured router (two models loaded) and a pipeline polling it."""
    server = CapturedServer(models="models-two-loaded.json")
    runner, port = await serve_handler(server.handle)
    pipe = Pipeline("llamacpp", f"http://127.0.0.1:{port}")
    yield server, pipe
    await pipe.close()
    await runner.cleanup()


def states(pipe: Pipeline) -> dict[str, str]:
    from exporter.promparse import parse

    return {
        labels["model"]: labels["state"]
        for labels, value in parse(pipe.exposition()).get("llm_model_state")
        if value == 1
    }


async def test_router_models_states_and_each_loaded_childs_metrics(captured):
    server, pipe = captured
    await pipe.poll()
    assert pipe.state.health.up, pipe.state.health.last_error
    assert states(pipe) == {"broken": "unloaded", "large": "loaded", "small": "loaded"}
    child = (ROUTER / "child-metrics.prom").read_text()
    generated = next(line for line in child.splitlines() if line.startswith("llamacpp:tokens_predicted_total"))
    for model in ("large", "small"):  # each child's own counters, under its own model
        assert pipe.value("llm_generation_tokens_total", model=model) == float(generated.split()[-1])
        assert pipe.value("llm_slots", model=model) == 2  # from the child's /props (total_slots)
    assert pipe.value("llm_generation_tokens_total", model="broken") is None  # not loaded: no values
    # nothing asked could load a model: every per-model read says autoload=false, nothing is POSTed
    per_model = [path for _, path in server.requests if "model=" in path]
    assert per_model and all("autoload=false" in path for path in per_model)
    assert all(method == "GET" for method, _ in server.requests)


async def test_router_loading_failed_and_requested_unload(captured):
    server, pipe = captured
    server.models = "models-one-loading.json"
    await pipe.poll()
    assert states(pipe) == {"broken": "unloaded", "large": "loading", "small": "unloaded"}
    server.models = "models-two-loaded.json"
    await pipe.poll()
    assert states(pipe)["large"] == "loaded"
    assert pipe.value("llm_model_loads_total", model="large", kind="load") == 1
    server.models = "models-failed-and-unloaded.json"
    await pipe.poll()
    assert states(pipe) == {"broken": "failed", "large": "unloaded", "small": "loaded"}
    assert pipe.value("llm_model_load_failures_total", model="broken") == 1
    # nothing was loading when large left: the router was asked to unload it (not evicted for another)
    assert pipe.value("llm_model_unloads_total", model="large", reason="requested") == 1


async def test_a_router_restarted_as_a_single_model_server_is_followed_and_back(captured):
    server, pipe = captured
    await pipe.poll()
    assert pipe.source.router is not None
    router = pipe.source.router
    # /models fails while /metrics still says router: the poll fails, router mode and its state stay
    server.models_status = 503
    await pipe.poll()
    assert not pipe.state.health.up and pipe.source.router is router
    server.models_status = None
    # the same URL now serves one model (-m small.gguf): its /models entries carry no status
    server.mode = "single"
    await pipe.poll()
    assert pipe.state.health.up, pipe.state.health.last_error
    assert pipe.source.router is None
    assert states(pipe) == {"small-random-llama.gguf": "loaded"}  # named by its /props
    single = (ROUTER / "single-metrics.prom").read_text()
    generated = next(line for line in single.splitlines() if line.startswith("llamacpp:tokens_predicted_total"))
    tokens = float(generated.split()[-1])
    assert pipe.value("llm_generation_tokens_total", model="small-random-llama.gguf") == tokens
    assert any("no longer a router" in text for _, text in pipe.state.events)
    # and a router again
    server.mode = "router"
    await pipe.poll()
    assert pipe.source.router is not None and pipe.source.router is not router  # fresh state
    assert states(pipe) == {"broken": "unloaded", "large": "loaded", "small": "loaded"}
