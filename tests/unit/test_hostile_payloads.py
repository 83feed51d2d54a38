"""Valid-looking payloads with hostile values: the exporter exposes nothing wrong and never crashes."""

import math
import subprocess

import pytest

from exporter.promparse import parse
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

HEAD = "# TYPE vllm:num_requests_running gauge\n# TYPE vllm:prompt_tokens_total counter\n"


def payload(running="1", prompt="10", model="m", extra=""):
    return (HEAD + f'vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}\n'
            f'vllm:prompt_tokens_total{{engine="0",model_name="{model}"}} {prompt}\n' + extra)


@pytest.fixture
async def server():
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(payload())})
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def pipe(server):
    p = Pipeline("vllm", f"http://127.0.0.1:{server.port}", window="1m")
    yield p
    await p.close()


@pytest.mark.parametrize("running, prompt", [("NaN", "NaN"), ("+Inf", "+Inf"), ("-Inf", "-5"), ("1e308", "-1")])
async def test_nan_inf_negative_values_are_not_exposed(server, pipe, running, prompt):
    server.set("/metrics", Reply.text(payload(running, prompt)))
    await pipe.poll()
    assert pipe.state.health.up
    # non-finite and negative values are dropped; a huge finite count is kept as it is
    assert pipe.value("llm_requests_running") == (1e308 if running == "1e308" else None)
    assert pipe.value("llm_prompt_tokens_total") is None


async def test_huge_counter_is_kept_and_ratios_stay_finite(server, pipe):
    server.set("/metrics", Reply.text(payload(prompt="1e300")))
    await pipe.poll()
    server.set("/metrics", Reply.text(payload(prompt="1.5e300")))
    await pipe.poll()
    assert pipe.value("llm_prompt_tokens_total") == 1.5e300
    assert all(math.isfinite(v) for v in pipe.state.report.models["m"].derived.values())


async def test_duplicate_series_are_counted_once(server, pipe):
    text = payload() + 'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
    server.set("/metrics", Reply.text(text))
    await pipe.poll()
    assert pipe.value("llm_requests_running") == 1


@pytest.mark.prometheus
async def test_hostile_label_values_round_trip_and_pass_promtool(server, pipe, promtool):
    weird = 'q\\"uote back\\\\slash new\\nline ünïcødé ' + "x" * 500
    server.set("/metrics", Reply.text(payload(model=weird)))
    await pipe.poll()
    text = pipe.exposition()
    models = {labels["model"] for labels, _ in parse(text).get("llm_requests_running")}
    expected = 'q"uote back\\slash new\nline ünïcødé ' + "x" * 500
    assert models == {expected[:200]}  # capped at 200 characters
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_non_monotonic_histogram_is_dropped(server, pipe):
    text = payload() + """# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.1",model_name="m"} 5.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 6.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 1.0
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 6.0
"""
    server.set("/metrics", Reply.text(text))
    await pipe.poll()
    assert pipe.state.health.up and pipe.value("llm_requests_running") == 1
    assert pipe.value("llm_token_queue_latency_seconds_count") is None


async def test_model_name_change_replaces_series(server, pipe):
    await pipe.poll()
    server.set("/metrics", Reply.text(payload(model="renamed")))
    await pipe.poll()
    models = {labels["model"] for labels, _ in parse(pipe.exposition()).get("llm_requests_running")}
    assert models == {"renamed"}


async def test_counter_backwards_mid_window_is_a_restart(server, pipe):
    for prompt in ("10", "20", "30"):
        server.set("/metrics", Reply.text(payload(prompt=prompt)))
        await pipe.poll()
    server.set("/metrics", Reply.text(payload(prompt="2")))
    await pipe.poll()
    assert pipe.value("llm_engine_restarts_total") == 1
    assert pipe.value("llm_prompt_tokens_per_second") is None  # window reseeded: no rate yet


async def test_series_churn_is_capped(server):
    pipe = Pipeline("vllm", f"http://127.0.0.1:{server.port}", max_series=300)
    try:
        for round_ in range(3):
            text = HEAD + "".join(f'vllm:num_requests_running{{engine="0",model_name="m{round_}-{i}"}} 1\n'
                                  for i in range(1000))
            server.set("/metrics", Reply.text(text))
            await pipe.poll()
            models = {labels["model"] for labels, _ in parse(pipe.exposition()).get("llm_requests_running")}
            assert 0 < len(models) <= 300 and all(m.startswith(f"m{round_}-") for m in models)
        assert pipe.value("llm_exporter_series_dropped_total") > 2000
    finally:
        await pipe.close()
