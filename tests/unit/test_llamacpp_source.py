"""llama.cpp source on payloads recorded from a real llama-server b11434, served over HTTP."""

import json
import logging

import pytest

from exporter.observation import Readiness
from exporter.promparse import parse
from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

LC = FIXTURES / "llamacpp"


def fixture_text(name: str) -> str:
    return (LC / name).read_text()


def metrics_reply(name: str, header: str = "2673431268") -> Reply:
    return Reply.text(fixture_text(name), **{"Process-Start-Time-Unix": header})


def ready_routes(metrics="b11434-metrics-idle.prom", slots="b11434-slots-idle.json", header="2673431268"):
    return {
        "/metrics": metrics_reply(metrics, header),
        "/slots": Reply(200, (LC / slots).read_bytes(), {"Content-Type": "application/json"}),
        "/props": Reply(200, (LC / "b11434-props.json").read_bytes(), {"Content-Type": "application/json"}),
        "/health": Reply(200, (LC / "b11434-health.json").read_bytes()),
    }


@pytest.fixture
async def server():
    srv = ReplayServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def pipe(server):
    p = Pipeline("llamacpp", f"http://127.0.0.1:{server.port}", interval="200ms", timeout="190ms", window="1m")
    yield p
    await p.close()


async def test_loading_503_means_loading_not_down(server, pipe):
    loading = (LC / "b11434-health-loading.json").read_bytes()
    for path in ("/metrics", "/health", "/slots", "/props"):
        server.set(path, Reply(503, loading, {"Content-Type": "application/json; charset=utf-8"}))
    state = await pipe.poll()
    assert state.health.up and state.health.readiness is Readiness.LOADING
    assert pipe.value("llm_up") == 1 and pipe.value("llm_ready") == 0
    assert pipe.value("llm_requests_running") is None


async def test_idle_server_values_and_info(server, pipe):
    for path, reply in ready_routes().items():
        server.set(path, reply)
    await pipe.poll()
    assert pipe.value("llm_ready") == 1
    model = "small-random-llama.gguf"
    assert pipe.value("llm_requests_running", model=model) == 0
    assert pipe.value("llm_slots", model=model) == 2
    assert pipe.value("llm_context_size_tokens", model=model) == 1024
    assert pipe.value("llm_engine_info", model=model, build="b11434-unknown") == 1
    assert pipe.value("llm_engine_endpoint_enabled", endpoint="slots") == 1
    # fresh server: no hit ratio yet (nothing queried), never a made-up 0
    assert pipe.value("llm_kv_cache_hit_ratio") is None


async def test_under_load_running_waiting_and_cache_counters(server, pipe):
    for path, reply in ready_routes("b11434-metrics-load.prom", "b11434-slots-busy.json").items():
        server.set(path, reply)
    await pipe.poll()
    assert pipe.value("llm_requests_running") == 2
    assert pipe.value("llm_requests_waiting") == 3
    assert pipe.value("llm_kv_cache_hit_tokens_total") == 2844
    assert pipe.value("llm_kv_cache_query_tokens_total") == 2844 + 1298
    assert pipe.value("llm_prompt_tokens_total") == 1298 + 2844  # computed + cached: every prompt token
    assert pipe.value("llm_generation_tokens_total") == 536
    # this build exports no KV gauge, and no llama-server process is found for this URL: the KV cache's layout
    # (one pool or one per slot) is unknown, so no usage ratio is made up (it would be off by the slot count)
    assert pipe.value("llm_kv_cache_usage_ratio") is None


async def test_older_build_kv_usage_gauge_is_used(server, pipe):
    routes = ready_routes()
    text = fixture_text("b11434-metrics-idle.prom") + (
        "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.25\n"
    )
    routes["/metrics"] = Reply.text(text)
    for path, reply in routes.items():
        server.set(path, reply)
    await pipe.poll()
    assert pipe.value("llm_kv_cache_usage_ratio") == 0.25


@pytest.mark.parametrize("phase", ["phase1", "phase3"])
async def test_series_hit_ratio_and_queue_estimate(server, pipe, phase):
    """Replay the ~10 Hz recorded series through HTTP + source + state at the recorded times."""
    rows = [json.loads(line) for line in (LC / "b11434-load-series.jsonl").open() if phase in line[:30]]
    requests = json.loads(fixture_text("b11434-load-requests.json"))[phase]
    for path, reply in ready_routes().items():
        server.set(path, reply)
    before = None
    for row in rows:
        server.set("/metrics", Reply.text(row["metrics"]))
        server.set("/slots", Reply.json(row["slots"]))
        t = 1_000_000.0 + row["t_rel_s"]
        obs = await pipe.source.collect()
        pipe.state.record_success(obs, t, 0.001)
        if before is None:
            before = pipe.state.report.models["small-random-llama.gguf"].latest.histograms["token_queue_latency"]
    after = pipe.state.report.models["small-random-llama.gguf"].latest.histograms["token_queue_latency"]
    started = after.count - before.count
    mean = (after.sum - before.sum) / started
    client = sum(r["client_wait_s"] for r in requests) / len(requests)
    assert started == len(requests)
    assert abs(mean - client) / client < 0.20
    # the windowed mean the exporter exposes is the same quantity
    model = pipe.state.report.models["small-random-llama.gguf"]
    assert model.derived[("token_queue_latency_mean", ())] == pytest.approx(mean)
    # windowed hit ratio == Δcached / (Δcached + Δprocessed) over the same window (the whole phase)
    assert rows[-1]["t_rel_s"] - rows[0]["t_rel_s"] < 60
    first, last = parse(rows[0]["metrics"]), parse(rows[-1]["metrics"])

    def delta(name):
        return last.get(name)[0][1] - first.get(name)[0][1]

    d_cached, d_processed = delta("llamacpp:prompt_tokens_cached_total"), delta("llamacpp:prompt_tokens_total")
    assert d_cached + d_processed > 0
    assert model.derived[("kv_cache_hit_ratio", (("unit", "tokens"),))] == pytest.approx(
        d_cached / (d_cached + d_processed)
    )


async def test_disabled_endpoints_degrade_with_one_notice(server, pipe, caplog):
    routes = ready_routes("b11434-metrics-load.prom")  # work in flight: the only time /slots is read
    routes["/slots"] = Reply.json(
        {
            "error": {
                "code": 501,
                "message": "This server does not support slots endpoint.",
                "type": "not_supported_error",
            }
        },
        status=501,
    )
    for path, reply in routes.items():
        server.set(path, reply)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await pipe.poll()
    assert pipe.value("llm_engine_endpoint_enabled", endpoint="slots") == 0
    assert pipe.value("llm_requests_running") == 2  # /metrics still read
    assert pipe.value("llm_token_queue_latency_seconds_count") is None  # no estimate without /slots
    notices = [r for r in caplog.records if "--slots" in r.getMessage()]
    assert len(notices) == 1


async def test_metrics_disabled_reads_health_and_props_never_slots(server, pipe):
    """Without /metrics the source cannot tell whether work is in flight, and GET /slots resets the
    idle timer of a server started with --sleep-idle-seconds: it reads /health and /props only."""
    routes = ready_routes(slots="b11434-slots-busy.json")
    routes["/metrics"] = Reply.json(
        {
            "error": {
                "code": 501,
                "type": "not_supported_error",
                "message": "This server does not support metrics endpoint.",
            }
        },
        status=501,
    )
    for path, reply in routes.items():
        server.set(path, reply)
    await pipe.poll()
    assert pipe.value("llm_ready") == 1
    assert pipe.value("llm_engine_endpoint_enabled", endpoint="metrics") == 0
    assert pipe.value("llm_requests_running") is None  # unknown without /metrics: nothing, not 0
    assert pipe.value("llm_requests_waiting") is None
    assert pipe.value("llm_slots") == 2  # from /props
    assert "/slots" not in server.hits


async def test_no_slot_available_503_is_not_a_failure(server, pipe):
    routes = ready_routes("b11434-metrics-load.prom")
    routes["/slots"] = Reply(503, (LC / "b11434-slots-no-slot-available.json").read_bytes())
    for path, reply in routes.items():
        server.set(path, reply)
    await pipe.poll()
    assert pipe.state.health.up and pipe.value("llm_requests_waiting") == 3


async def test_restart_detected_from_ready_header(server, pipe):
    for path, reply in ready_routes("b11434-metrics-load.prom").items():
        server.set(path, reply)
    await pipe.poll()
    server.set("/metrics", metrics_reply("b11434-metrics-idle.prom", header="2999999999"))
    await pipe.poll()
    assert pipe.value("llm_engine_restarts_total") == 1


async def test_garbage_slots_is_a_parse_error(server, pipe):
    routes = ready_routes("b11434-metrics-load.prom")
    routes["/slots"] = Reply(200, b'[{"id": "x"}]')
    for path, reply in routes.items():
        server.set(path, reply)
    await pipe.poll()
    assert not pipe.state.health.up
    assert pipe.value("llm_exporter_poll_errors_total", reason="parse") == 1


async def test_a_clock_step_during_a_load_bends_no_duration(server, pipe, monkeypatch):
    """M3: the system clock steps +1 h while a model loads (NTP, `date -s`): the load is timed on the
    stepless clock (not 3,600 s), and exported timestamps still show the system's Unix time."""
    import asyncio
    import time

    from exporter import clock

    loading = (LC / "b11434-health-loading.json").read_bytes()
    for path in ("/metrics", "/health", "/slots", "/props"):
        server.set(path, Reply(503, loading, {"Content-Type": "application/json; charset=utf-8"}))
    await pipe.poll()
    monkeypatch.setattr(clock, "_wall", lambda: time.time() + 3600.0)
    await asyncio.sleep(0.3)
    for path, reply in ready_routes().items():
        server.set(path, reply)
    await pipe.poll()
    seconds = [v for k, v in pipe.state.life.lifecycles[""].durations.items()]
    assert pipe.state.life.lifecycles[""].loads == {"start": 1}
    load = pipe.state.life.lifecycles[""].last
    assert load is not None and load.seconds is not None and 0.2 < load.seconds < 5, load
    assert seconds and seconds[0].sum < 5
    shown = pipe.value("llm_exporter_last_success_timestamp_seconds")
    assert abs(shown - (time.time() + 3600.0)) < 2  # the system's (stepped) Unix time


@pytest.mark.tools
@pytest.mark.parametrize(
    "flags, unified",
    [
        ((), True),  # default: -np auto = 4 slots sharing one unified pool
        (("-np", "4"), False),  # -np given: one pool per slot
        (("--parallel=2", "-kvu"), True),
        (("-np", "2", "--kv-unified"), True),
        (("-no-kvu",), False),
    ],
)
async def test_kv_usage_with_the_layout_from_the_engines_command_line(server, tmp_path, flags, unified):
    """The llama-server beside the exporter is found by the port in its command line (no `process:`); its
    flags say whether the slots share one KV pool (each slot then reports the whole pool as n_ctx) or have one
    each. Usage = tokens the busy slots hold (b11434 counts decoded tokens in n_prompt_tokens) / the cells."""
    import asyncio
    import subprocess

    (tmp_path / "serve").write_text("sleep 30\n")
    argv = ["llama-server", "serve", "--port", str(server.port), *flags]
    engine = subprocess.Popen(argv, executable="/bin/sh", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    pipe = Pipeline("llamacpp", f"http://127.0.0.1:{server.port}", interval="200ms", timeout="190ms", window="1m")
    try:
        await asyncio.sleep(0.2)
        for path, reply in ready_routes("b11434-metrics-load.prom", "b11434-slots-busy.json").items():
            server.set(path, reply)
        await pipe.poll()
        await pipe.poll()
        slots = [s for s in json.loads(fixture_text("b11434-slots-busy.json"))]
        held = sum(s["n_prompt_tokens"] for s in slots if s["is_processing"])  # decoded already counted
        capacity = max(s["n_ctx"] for s in slots) if unified else sum(s["n_ctx"] for s in slots)
        assert pipe.state.life.process_pid == engine.pid
        assert pipe.value("llm_kv_cache_usage_ratio") == pytest.approx(min(held, capacity) / capacity)
    finally:
        engine.kill()
        engine.wait()
        await pipe.close()


def test_held_tokens_counts_each_token_once_in_both_slot_shapes():
    from exporter.sources.llamacpp import held_tokens

    b11434 = {
        "n_prompt_tokens": 494,
        "n_prompt_tokens_cache": 468,
        "n_prompt_tokens_processed": 17,
        "next_token": [{"n_decoded": 9}],
    }
    assert held_tokens(b11434) == 494
    prompt_only = {
        "n_prompt_tokens": 485,
        "n_prompt_tokens_cache": 468,
        "n_prompt_tokens_processed": 17,
        "next_token": [{"n_decoded": 9}],
    }
    assert held_tokens(prompt_only) == 494
    assert held_tokens({"n_prompt_tokens": 100, "next_token": [{"n_decoded": 5}]}) == 105  # older shape
    assert held_tokens({"n_prompt_tokens": "x"}) == 0


def test_kv_layout_unknown_when_the_environment_could_decide_it():
    from exporter.sources.llamacpp import KvLayout, kv_layout

    assert kv_layout(("llama-server",), None) is None  # LLAMA_ARG_N_PARALLEL could be set: unreadable
    assert kv_layout(("llama-server", "-np", "4"), None) is None  # LLAMA_ARG_KV_UNIFIED could be set
    assert kv_layout(("llama-server", "-np", "4", "-no-kvu"), None) == KvLayout(unified=False)
    assert kv_layout(("llama-server",), {"LLAMA_ARG_N_PARALLEL": "2"}) == KvLayout(unified=False)
    assert kv_layout(("llama-server",), {"LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_KV_UNIFIED": "1"}) == KvLayout(
        unified=True
    )
    assert kv_layout(("llama-server", "--kv-unified-per-slot", "512"), {}) is None  # slots report a cap
