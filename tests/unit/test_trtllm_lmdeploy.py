"""TensorRT-LLM and LMDeploy on payloads built from their own metrics code (tests/fixtures/*/SOURCES.md: no
server runs here), served over HTTP: every unified metric equals the scripted workload's truth."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

TRT = (FIXTURES / "trtllm" / "trtllm-main-050f80d-metrics.prom").read_text()
LMD = (FIXTURES / "lmdeploy" / "lmdeploy-main-0168eed-metrics.prom").read_text()
# The workload both payloads observed: three finished requests.
PROMPT, CACHED, GENERATED = 120 + 120 + 64, 0 + 96 + 48, 30 + 35 + 25


async def polled(engine: str, routes: dict[str, Reply]) -> Pipeline:
    srv = ReplayServer(routes)
    await srv.start()
    pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
    pipe.server = srv  # type: ignore[attr-defined]
    await pipe.poll()
    return pipe


async def close(pipe: Pipeline) -> None:
    await pipe.close()
    await pipe.server.stop()  # type: ignore[attr-defined]


async def test_trtllm_text_lives_at_another_path():
    """trtllm-serve's /metrics is JSON iteration stats; the Prometheus text is at /prometheus/metrics."""
    pipe = await polled(
        "trtllm", {"/health": Reply(200), "/metrics": Reply.json([{"iter": 1}]), "/prometheus/metrics": Reply.text(TRT)}
    )
    try:
        assert pipe.state.health.up, pipe.state.health.last_error
        m = {"model": "tiny-llama"}
        assert pipe.value("llm_requests_running", **m) == 1 and pipe.value("llm_requests_waiting", **m) == 2
        assert pipe.value("llm_kv_cache_usage_ratio", **m) == 0.125
        assert pipe.value("llm_prompt_tokens_total", **m) == PROMPT
        assert pipe.value("llm_generation_tokens_total", **m) == GENERATED
        assert pipe.value("llm_kv_cache_hit_tokens_total", **m) == CACHED
        assert pipe.value("llm_kv_cache_query_tokens_total", **m) == PROMPT
        assert pipe.value("llm_requests_finished_total", reason="stop", **m) == 3
        assert pipe.value("llm_inter_token_latency_seconds_count", **m) is None  # per request: not ITL
        for family in (
            "token_queue_latency_seconds",
            "time_to_first_token_seconds",
            "time_per_output_token_seconds",
            "request_latency_seconds",
            "request_prefill_seconds",
            "request_decode_seconds",
            "request_inference_seconds",
        ):
            assert pipe.value(f"llm_{family}_count", **m) == 3, family
        assert pipe.value("llm_request_prefill_seconds_sum", **m) == pytest.approx(0.12 + 0.18 + 0.14)
        assert pipe.value("llm_request_inference_seconds_sum", **m) == pytest.approx(
            0.12 + 0.9 + 0.18 + 1.2 + 0.14 + 0.7
        )
        assert pipe.state.report.mapping_misses == {}
        assert "/metrics" not in pipe.server.hits  # type: ignore[attr-defined]
    finally:
        await close(pipe)


async def test_lmdeploy_tokens_come_from_per_request_sums_not_the_double_counting_counter():
    pipe = await polled("lmdeploy", {"/health": Reply(200), "/metrics": Reply.text(LMD)})
    try:
        assert pipe.state.health.up, pipe.state.health.last_error
        m = {"model": "tiny-llama"}
        assert "lmdeploy:generation_tokens_total" in LMD and f"{2 * GENERATED}.0" in LMD  # counted twice upstream
        assert pipe.value("llm_generation_tokens_total", **m) == GENERATED
        assert pipe.value("llm_prompt_tokens_total", **m) == PROMPT
        assert pipe.value("llm_kv_cache_usage_ratio", **m) == 0.125
        assert pipe.value("llm_kv_cache_hit_ratio", **m) is None  # no query counter of the same meaning
        for family in (
            "request_prefill_seconds",
            "request_decode_seconds",
            "request_inference_seconds",
            "request_prompt_tokens",
            "request_generation_tokens",
            "time_to_first_token_seconds",
        ):
            assert pipe.value(f"llm_{family}_count", **m) == 3, family
        assert pipe.value("llm_request_prompt_tokens_sum", **m) == PROMPT
    finally:
        await close(pipe)


@pytest.mark.parametrize(
    "routes, expected",
    [
        (
            {"/metrics": Reply.json([{"iter": 1}]), "/prometheus/metrics": Reply.text(TRT), "/health": Reply(200)},
            "trtllm",
        ),
        ({"/metrics": Reply.text(LMD), "/health": Reply(200)}, "lmdeploy"),
    ],
)
async def test_auto_detection(routes, expected):
    srv = ReplayServer(routes)
    await srv.start()
    pipe = Pipeline("auto", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.value("llm_engine_detected_info", detected=expected) == 1
        assert pipe.value("llm_requests_running", engine=expected) == 1
    finally:
        await pipe.close()
        await srv.stop()


async def test_vllm_request_phases_and_lengths_from_the_real_032_payload():
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-prefix.prom").read_text()
    pipe = await polled("vllm", {"/health": Reply(200), "/metrics": Reply.text(text)})
    try:
        from exporter.promparse import parse

        upstream = parse(text)
        for ours, theirs in (
            ("request_prefill_seconds", "vllm:request_prefill_time_seconds"),
            ("request_decode_seconds", "vllm:request_decode_time_seconds"),
            ("request_inference_seconds", "vllm:request_inference_time_seconds"),
            ("request_prompt_tokens", "vllm:request_prompt_tokens"),
            ("request_generation_tokens", "vllm:request_generation_tokens"),
        ):
            expected = sum(v for _, v in upstream.get(theirs + "_count"))
            assert pipe.value(f"llm_{ours}_count") == expected, ours
            assert pipe.value(f"llm_{ours}_sum") == pytest.approx(sum(v for _, v in upstream.get(theirs + "_sum")))
    finally:
        await close(pipe)


async def test_vllm_033_engine_healthy_per_rank():
    """vLLM 0.33 with --enable-fault-tolerance adds `vllm:engine_healthy{engine=<rank>}` (a GaugeMetricFamily
    with the label `engine` only, in vllm/entrypoints/serve/instrumentator/metrics.py): one series per rank."""
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text() + (
        "# HELP vllm:engine_healthy Whether the engine reports healthy under fault tolerance.\n"
        "# TYPE vllm:engine_healthy gauge\n"
        'vllm:engine_healthy{engine="0"} 1.0\nvllm:engine_healthy{engine="1"} 0.0\n'
    )
    pipe = await polled("vllm", {"/health": Reply(200), "/metrics": Reply.text(text)})
    try:
        assert pipe.value("llm_engine_healthy", rank="0") == 1 and pipe.value("llm_engine_healthy", rank="1") == 0
    finally:
        await close(pipe)
