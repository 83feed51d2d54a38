"""Ollama on the responses of a real Ollama 0.32.15 (tests/fixtures/ollama-real/SOURCES.md), served over
HTTP: models loaded and unloaded (expired or evicted), memory, VRAM, keep-alive, context; loads dated only
by a runner process; only endpoints that never load a model or extend a keep-alive are read."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import datetime

import pytest

from exporter.sources import ollama
from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

OL = FIXTURES / "ollama-real"
EXPIRES = "2026-11-30T16:59:15.024063591Z"


def body(name: str) -> bytes:
    """The JSON body of a capture (its first line; the status line follows it)."""
    return (OL / name).read_text().splitlines()[0].encode()


def routes(ps: str = "ps-loaded.txt") -> dict[str, Reply]:
    return {
        "/api/ps": Reply(200, body(ps), {"Content-Type": "application/json"}),
        "/api/version": Reply(200, body("version.txt"), {"Content-Type": "application/json"}),
        "/api/tags": Reply(200, body("tags.txt"), {"Content-Type": "application/json"}),
    }


@pytest.fixture
async def server():
    srv = ReplayServer(routes())
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def pipe(server):
    p = Pipeline("ollama", f"http://127.0.0.1:{server.port}")
    yield p
    await p.close()


def test_go_timestamps_with_nanoseconds():
    assert ollama.parse_stamp(EXPIRES) == pytest.approx(
        datetime.fromisoformat("2026-11-30T16:59:15+00:00").timestamp() + 0.024063591
    )
    assert ollama.parse_stamp("2026-11-30T17:59:15+01:00") == ollama.parse_stamp("2026-11-30T16:59:15Z")
    assert ollama.parse_stamp("yesterday") is None and ollama.parse_stamp(5) is None


async def test_a_loaded_model(server, pipe):
    await pipe.poll()
    assert pipe.state.health.up, pipe.state.health.last_error
    model = {"model": "tiny:latest"}
    assert pipe.value("llm_model_state", state="loaded", **model) == 1
    assert pipe.value("llm_model_memory_bytes", **model) == 93050633
    assert pipe.value("llm_model_vram_bytes", **model) == 0  # CPU only: Ollama says 0, and so do we
    assert pipe.value("llm_model_keep_alive_expiry_timestamp_seconds", **model) == pytest.approx(
        ollama.parse_stamp(EXPIRES)
    )
    assert pipe.value("llm_context_size_tokens", **model) == 4096
    assert pipe.value("llm_engine_info", build="0.32.15") == 1
    # Ollama keeps no request or token counters: none are made up
    assert pipe.value("llm_requests_running") is None and pipe.value("llm_prompt_tokens_total") is None
    assert pipe.value("llm_model_loads_total", kind="load", **model) == 0  # met loaded: not a load it saw


async def test_reads_only_endpoints_that_never_load_or_keep_awake(server, pipe):
    for _ in range(30):
        await pipe.poll()
    assert set(server.hits) == {"/api/ps", "/api/version", "/api/tags"}
    assert server.hits["/api/version"] == 1 and server.hits["/api/tags"] == 3 and server.hits["/api/ps"] == 30


async def test_keep_alive_expiring_is_an_expired_unload(server, pipe, monkeypatch):
    """Replays the real capture: /api/ps once a second while a 5 s keep-alive runs out."""
    lines = (OL / "keepalive-ps-poll.txt").read_text().splitlines()
    polled = [line for line in lines if line.startswith("t+")]
    for line in polled:
        _, clock, json_body = line.split(" ", 2)
        at = datetime.fromisoformat(f"2026-11-30T{clock}+00:00").timestamp()
        monkeypatch.setattr(ollama.time, "time", lambda at=at: at)
        server.set("/api/ps", Reply(200, json_body.encode(), {"Content-Type": "application/json"}))
        await pipe.poll()
    model = {"model": "tiny:latest"}
    assert pipe.value("llm_model_state", state="unloaded", **model) == 1
    assert pipe.value("llm_model_unloads_total", reason="expired", **model) == 1
    assert pipe.value("llm_model_unloads_total", reason="evicted", **model) is None
    assert pipe.value("llm_model_memory_bytes", **model) is None  # nothing stale once it is gone


async def test_unloaded_before_its_keep_alive_is_evicted_and_a_new_load_is_counted(server, pipe, monkeypatch):
    monkeypatch.setattr(ollama.time, "time", lambda: ollama.parse_stamp(EXPIRES) - 60)  # a minute to go
    await pipe.poll()
    server.set("/api/ps", Reply(200, body("ps-before-load.txt"), {"Content-Type": "application/json"}))
    await pipe.poll()
    model = {"model": "tiny:latest"}
    assert pipe.value("llm_model_unloads_total", reason="evicted", **model) == 1
    server.set("/api/ps", Reply(200, body("ps-loaded.txt"), {"Content-Type": "application/json"}))
    await pipe.poll()
    assert pipe.value("llm_model_loads_total", kind="load", **model) == 1
    assert pipe.value("llm_model_last_load_duration_seconds", **model) is None  # no runner: no duration, no guess


async def test_a_model_not_yet_in_tags_that_appears_is_a_load(server, pipe):
    server.set("/api/tags", Reply(404))
    server.set("/api/ps", Reply(200, body("ps-before-load.txt"), {"Content-Type": "application/json"}))
    await pipe.poll()
    server.set("/api/ps", Reply(200, body("ps-loaded.txt"), {"Content-Type": "application/json"}))
    await pipe.poll()
    assert pipe.value("llm_model_loads_total", kind="load", model="tiny:latest") == 1


@pytest.mark.tools
async def test_a_load_is_dated_by_its_runner_process(server, pipe, tmp_path):
    """Same host: the model appears with one new `ollama runner` process; the load is dated from its start
    and its PID is the model's (GPU memory joins through it)."""
    server.set("/api/ps", Reply(200, body("ps-before-load.txt"), {"Content-Type": "application/json"}))
    await pipe.poll()
    (tmp_path / "runner").write_text("sleep 30\n")
    runner = subprocess.Popen(["ollama", "runner"], executable="/bin/sh", cwd=tmp_path)  # argv: ollama runner
    try:
        await asyncio.sleep(0.3)
        server.set("/api/ps", Reply(200, body("ps-loaded.txt"), {"Content-Type": "application/json"}))
        await pipe.poll()
        seconds = pipe.value(
            "llm_model_last_load_duration_seconds", kind="load", basis="process_start", model="tiny:latest"
        )
        assert seconds is not None and 0.2 < seconds < 5
        assert pipe.state.model_pids() == {runner.pid: "tiny:latest"}
    finally:
        runner.kill()
        runner.wait()


async def test_auto_detection_from_the_real_version_endpoint():
    srv = ReplayServer({**routes(), "/metrics": Reply(404, b"404 page not found")})
    await srv.start()
    p = Pipeline("auto", f"http://127.0.0.1:{srv.port}")
    try:
        await p.poll()
        assert p.value("llm_engine_detected_info", detected="ollama") == 1
        assert p.value("llm_model_state", state="loaded", model="tiny:latest", engine="ollama") == 1
    finally:
        await p.close()
        await srv.stop()


@pytest.mark.parametrize("ps", [b"[]", b'{"models": 3}', b"{" * 100_000, b"not json"])
async def test_odd_answers_are_parse_errors(server, pipe, ps):
    server.set("/api/ps", Reply(200, ps, {"Content-Type": "application/json"}))
    await pipe.poll()
    assert not pipe.state.health.up and pipe.state.health.last_error[0].value == "parse"
