"""SGLang and TGI from their fixtures, mapping misses per engine, and auto-detection on every fixture."""

import json

import pytest

from exporter.promparse import parse
from exporter.sources import auto, sglang, tgi
from exporter.sources.mapping import apply, prefixes
from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

SGL_NEW = (FIXTURES / "sglang" / "datadog-sglang-0.5.10.post1-abridged.prom").read_text()
SGL_REAL = (FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()  # a real server, unedited
SGL_OLD = (FIXTURES / "sglang" / "sglang-docs-production-metrics-v0.3.prom").read_text()
TGI = (FIXTURES / "tgi" / "datadog-tgi-payload-partial.prom").read_text()


def mapped(module, text):
    """What the engine's source maps from a payload (its parse prefixes, table and model label)."""
    source = {sglang: sglang.SglangSource, tgi: tgi.TgiSource}[module]
    return apply(parse(text, prefixes(source.mapping)), source.mapping, source.model_label)


def test_sglang_0523_real_every_unified_metric():
    """A real SGLang 0.5.23 server (tests/fixtures/sglang-real/SOURCES.md): 9 of 44 prompt tokens cached."""
    models, misses = mapped(sglang, SGL_REAL)
    m = models["tiny-llama"]
    assert (m.get("requests_running"), m.get("requests_waiting"), m.get("kv_cache_usage_ratio")) == (0, 0, 0)
    assert m.get("kv_cache_hit_tokens") == 9 and m.get("kv_cache_query_tokens") == 44
    assert m.get("kv_cache_hit_tokens_by_tier", tier="device") == 9  # the tier stays visible
    assert m.get("generation_tokens") == 24
    assert m.histograms["token_queue_latency"].count == 4
    # 0.5.23 observes time per output token once per request: that is not the inter-token latency
    assert m.histograms["time_per_output_token"].count == 3 and "inter_token_latency" not in m.histograms
    assert m.histograms["time_to_first_token"].count == 3 and m.histograms["request_latency"].count == 3
    assert m.get("startup_phase_seconds", phase="tokenizer_e2e") == pytest.approx(12.677011202999893)
    assert misses == []  # nothing rises on every poll any more


def test_sglang_0510_abridged_capture_still_maps():
    models, misses = mapped(sglang, SGL_NEW)
    m = models["facebook/opt-125m"]
    assert m.get("kv_cache_hit_tokens") == 1 and m.histograms["token_queue_latency"].count == 1
    assert misses == []


def test_sglang_03_docs_sample_has_no_queue_histogram():
    models, misses = mapped(sglang, SGL_OLD)
    m = models["meta-llama/Llama-3.1-8B-Instruct"]
    assert m.get("requests_running") is not None and m.get("requests_waiting") is not None
    assert m.get("kv_cache_usage_ratio") is not None
    assert "token_queue_latency" not in m.histograms and "token_queue_latency" in misses
    assert "kv_cache_hit_tokens" in misses  # no cached_tokens_total in 0.3: no hit ratio, not a made-up one


def test_sglang_cache_hit_rate_gauge_is_not_the_ratio():
    # the real 0.5.23 server reports cache_hit_rate 0.9 while its counters say 9 of 44: it is not used
    assert "sglang:cache_hit_rate{" in SGL_REAL
    models, _ = mapped(sglang, SGL_REAL)
    keys = {key for key, _ in models["tiny-llama"].values}
    assert not keys & {"kv_cache_hit_ratio", "kv_cache_lifetime_hit_ratio"}


def test_sglang_startup_phases():
    text = (
        "# TYPE sglang:startup_time_seconds gauge\n"
        'sglang:startup_time_seconds{model_name="m",phase="load_weights"} 3.5\n'
        'sglang:startup_time_seconds{model_name="m",phase="cuda_graph"} 9.0\n'
    )
    m = mapped(sglang, text)[0]["m"]
    assert m.get("startup_phase_seconds", phase="load_weights") == 3.5


def test_tgi_every_unified_metric_and_no_cache_metrics():
    models, misses = mapped(tgi, TGI)
    m = models[""]
    assert m.get("requests_running") == 0 and m.get("requests_waiting") == 0
    assert m.histograms["token_queue_latency"].count > 0 and "request_latency" in m.histograms
    assert m.get("requests_finished", reason="success") == 109
    assert m.get("requests_finished", reason="validation") == 2
    assert not [k for k in m.values if k[0].startswith("kv_cache")]
    # the partial capture left out the token-length histograms (see SOURCES.md)
    assert set(misses) == {"prompt_tokens", "generation_tokens"}


async def test_tgi_source_names_the_model_from_info():
    srv = ReplayServer(
        {
            "/health": Reply(200),
            "/metrics": Reply.text(TGI),
            "/info": Reply.json({"model_id": "bigscience/bloom-560m", "router": "text-generation-router"}),
        }
    )
    await srv.start()
    pipe = Pipeline("tgi", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.value("llm_requests_waiting", model="bigscience/bloom-560m", engine="tgi") == 0
        # TGI gives no build or model path: those labels are left out, not exposed empty
        [(labels, _)] = parse(pipe.exposition()).get("llm_engine_info")
        assert dict(labels) == {"target": "t", "engine": "tgi", "model": "bigscience/bloom-560m"}
        assert pipe.value("llm_kv_cache_usage_ratio") is None
        assert pipe.value("llm_exporter_mapping_misses_total", metric="generation_tokens") == 1
    finally:
        await pipe.close()
        await srv.stop()


async def test_tgi_asks_info_again_until_it_answers():
    """A failed /info leaves the model unnamed for that poll only: the next poll asks again."""
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(TGI), "/info": Reply(500)})
    await srv.start()
    pipe = Pipeline("tgi", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.value("llm_requests_waiting", model="", engine="tgi") == 0
        srv.set("/info", Reply.json({"model_id": "bigscience/bloom-560m"}))
        await pipe.poll()
        assert pipe.value("llm_requests_waiting", model="bigscience/bloom-560m", engine="tgi") == 0
        assert pipe.value("llm_requests_waiting", model="") is None
    finally:
        await pipe.close()
        await srv.stop()


def remove_family(text: str, family: str) -> str:
    return "".join(line for line in text.splitlines(True) if family not in line)


@pytest.mark.parametrize(
    "engine, text, family, metric",
    [
        (
            "vllm",
            (FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text(),
            "vllm:num_requests_waiting",
            "requests_waiting",
        ),
        (
            "vllm",
            (FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text(),
            "vllm:request_queue_time_seconds",
            "token_queue_latency",
        ),
        ("sglang", SGL_REAL, "sglang:num_queue_reqs", "requests_waiting"),
        ("tgi", TGI, "tgi_queue_size", "requests_waiting"),
        (
            "llamacpp",
            (FIXTURES / "llamacpp" / "b11434-metrics-idle.prom").read_text(),
            "llamacpp:requests_deferred",
            "requests_waiting",
        ),
    ],
)
async def test_mapping_miss_counter_fires_when_a_family_disappears(engine, text, family, metric):
    routes = {
        "/health": Reply(200),
        "/ready": Reply(200),
        "/metrics": Reply.text(text),
        "/info": Reply.json({"model_id": "m"}),
        "/slots": Reply.json([]),
        "/props": Reply.json({"model_path": "/m.gguf"}),
    }
    srv = ReplayServer(routes)
    await srv.start()
    pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.state.health.up
        assert pipe.value("llm_exporter_mapping_misses_total", metric=metric) is None
        srv.set("/metrics", Reply.text(remove_family(text, family)))
        await pipe.poll()
        await pipe.poll()
        assert pipe.state.health.up
        assert pipe.value("llm_exporter_mapping_misses_total", metric=metric) == 2
    finally:
        await pipe.close()
        await srv.stop()


EXPECTED = {
    "llamacpp": "llamacpp",
    "vllm": "vllm",
    "vllm-real": "vllm",
    "sglang-real": "sglang",
    "sglang": "sglang",
    "trtllm": "trtllm",
    "lmdeploy": "lmdeploy",
    "tgi": "tgi",
}


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.rglob("*.prom")) + [FIXTURES / "nvml" / "nvml-metrics.prom"], ids=lambda p: p.name
)
def test_auto_detection_on_every_fixture(path):
    detected = auto.detect_from_metrics(path.read_text())
    folder = path.parent.name if path.parent.parent == FIXTURES else path.parent.parent.name  # llamacpp/router
    assert detected == EXPECTED.get(folder), (path, detected)


def test_auto_detection_on_every_series_payload():
    for line in (FIXTURES / "llamacpp" / "b11434-load-series.jsonl").open():
        assert auto.detect_from_metrics(json.loads(line)["metrics"]) == "llamacpp"


@pytest.mark.parametrize(
    "routes, expected",
    [
        ({"/metrics": Reply.text(SGL_REAL), "/ready": Reply(200)}, "sglang"),
        (
            {
                "/metrics": Reply.text((FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text()),
                "/health": Reply(200),
            },
            "vllm",
        ),
        (
            {
                "/metrics": Reply(
                    501,
                    (FIXTURES / "llamacpp" / "b11434-health-loading.json")
                    .read_bytes()
                    .replace(b"unavailable_error", b"not_supported_error"),
                ),
                "/health": Reply(200, b'{"status":"ok"}'),
                "/slots": Reply.json([]),
                "/props": Reply(200, (FIXTURES / "llamacpp" / "b11434-props.json").read_bytes()),
            },
            "llamacpp",
        ),
    ],
)
async def test_auto_source_detects_and_delegates(routes, expected):
    srv = ReplayServer(routes)
    await srv.start()
    pipe = Pipeline("auto", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.state.health.up, pipe.state.health.last_error
        assert pipe.value("llm_engine_detected_info", detected=expected) == 1
        # every series carries the engine it was identified as, so dashboards filtering on it see it
        assert pipe.value("llm_up", engine=expected) == 1
        assert pipe.value("llm_up", engine="auto") is None
        assert all(labels["engine"] == expected for labels, _ in parse(pipe.exposition()).get("llm_ready"))
    finally:
        await pipe.close()
        await srv.stop()


async def test_auto_source_cannot_identify_garbage():
    srv = ReplayServer({"/metrics": Reply.text("# TYPE other gauge\nother 1\n")})
    await srv.start()
    pipe = Pipeline("auto", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert not pipe.state.health.up and "cannot identify" in pipe.state.health.last_error[1]
        assert pipe.value("llm_up", engine="auto") == 0  # detection pending: it says so
    finally:
        await pipe.close()
        await srv.stop()


@pytest.mark.prometheus
async def test_passthrough_reexposes_engine_families_under_the_namespace(promtool):
    import subprocess

    from exporter.status import ExporterStatus
    from exporter.text import TextRenderer

    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(text)})
    await srv.start()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", passthrough="true")
    try:
        await pipe.poll()
        body = TextRenderer("llm", lambda: [pipe.state], ExporterStatus()).render().decode()
    finally:
        await pipe.close()
        await srv.stop()
    samples = parse(body)
    running = samples.get("llm_vllm_num_requests_running")
    assert running and dict(running[0][0]) == {
        "exported_engine": "0",
        "model_name": "tiny-llama",
        "target": "t",
        "engine": "vllm",
    }
    assert samples.get("llm_vllm_request_queue_time_seconds_count")[0][1] == 8
    assert samples.get("llm_requests_running")  # the unified metrics are still there
    assert "# TYPE llm_vllm_request_queue_time_seconds histogram" in body
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    # valid exposition; lint remarks only about vLLM's own names, passed through as they are
    # (vLLM calls a histogram iteration_tokens_total)
    remarks = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert all(line.startswith("llm_vllm_") and "should not have" in line for line in remarks), remarks


async def test_sglang_real_start_load_time_is_tokenizer_e2e():
    """SGLang 0.5.23 real payload (tests/fixtures/sglang-real): the start-to-ready phase is tokenizer_e2e;
    503 while warming up is loading, then loaded."""
    text = (FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()
    srv = ReplayServer({"/ready": Reply(503), "/metrics": Reply.text(text)})
    await srv.start()
    pipe = Pipeline("sglang", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.value("llm_model_state", state="loading") == 1
        srv.set("/ready", Reply(200))
        await pipe.poll()
        assert pipe.value("llm_model_state", model="tiny-llama", state="loaded") == 1
        assert pipe.value(
            "llm_model_last_load_duration_seconds", model="tiny-llama", kind="start", basis="engine_reported"
        ) == pytest.approx(12.677011202999893)
        assert pipe.value("llm_model_loads_total", model="tiny-llama", kind="start") == 1
    finally:
        await pipe.close()
        await srv.stop()


def test_router_children_join_gpu_processes_to_their_model():
    """GPU memory per process joins to (target, model): each router child's PID maps to its model."""
    from exporter.observation import ModelState, ModelStatus, Observation, Readiness
    from exporter.state import TargetState
    from tests.support.pipeline import target_config

    state = TargetState(target_config("llamacpp", "http://127.0.0.1:1"))
    obs = Observation(
        Readiness.READY,
        lifecycle={
            "small": ModelStatus(ModelState.LOADED, model="small", pid=101),
            "large": ModelStatus(ModelState.SLEEPING, model="large", pid=202),
            "medium": ModelStatus(ModelState.UNLOADED, model="medium"),
        },
    )
    state.record_success(obs, 1.0, 0.01)
    assert state.model_pids() == {101: "small", 202: "large"}
    state.record_success(
        Observation(Readiness.READY, lifecycle={"small": ModelStatus(ModelState.UNLOADED, model="small")}), 2.0, 0.01
    )
    assert state.model_pids() == {}  # unloaded: its process is gone, nothing to join


async def test_passthrough_in_both_renderers_from_one_sample_stream():
    """Pass-through goes through the same sample stream as the unified metrics: the text renderer and the
    prometheus_client Collector (OpenMetrics) show the same engine families with the target's labels."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from exporter.openmetrics import ExporterCollector
    from exporter.status import ExporterStatus
    from exporter.text import TextRenderer

    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(text)})
    await srv.start()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", passthrough="true", labels="{pod: p1}")
    try:
        await pipe.poll()
        body = TextRenderer("llm", lambda: [pipe.state], ExporterStatus()).render().decode()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ExporterCollector("llm", lambda: [pipe.state], ExporterStatus()))
        om = openmetrics(registry).decode()
    finally:
        await pipe.close()
        await srv.stop()
    want = {"exported_engine": "0", "model_name": "tiny-llama", "target": "t", "engine": "vllm", "pod": "p1"}
    assert dict(parse(body).get("llm_vllm_num_requests_running")[0][0]) == want
    families = {f.name: f for f in text_string_to_metric_families(om)}  # valid OpenMetrics
    running = families["llm_vllm_num_requests_running"]
    assert running.type == "gauge" and running.samples[0].labels == want
    queue = families["llm_vllm_request_queue_time_seconds"]
    assert queue.type == "histogram"
    assert [s.value for s in queue.samples if s.name.endswith("_count")] == [8]
    assert families["llm_requests_running"].samples  # the unified metrics are still there


async def test_auto_detects_sglang_without_metrics_from_its_real_server_info():
    """SGLang started without --enable-metrics: /metrics 404, /get_server_info (real 0.5.23) names it."""
    info = (FIXTURES / "sglang-real" / "sglang-0.5.23-get_server_info.json").read_bytes()
    srv = ReplayServer({"/get_server_info": Reply(200, info, {"Content-Type": "application/json"})})
    await srv.start()
    try:
        from exporter.app import make_session
        from exporter.sources.auto import detect
        from exporter.sources.base import HttpFetcher
        from tests.support.pipeline import target_config

        async with make_session() as session:
            fetcher = HttpFetcher(session, target_config("auto", f"http://127.0.0.1:{srv.port}"))
            assert await detect(fetcher) == "sglang"
    finally:
        await srv.stop()


async def test_passthrough_own_families_only_unless_all():
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(text)})
    await srv.start()
    try:
        for mode, runtime_families in (("true", False), ("all", True)):
            pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", passthrough=mode)
            try:
                await pipe.poll()
                names = {family.name for family in pipe.state.report.passthrough}
            finally:
                await pipe.close()
            assert "vllm_num_requests_running" in names
            assert ("process_resident_memory_bytes" in names) is runtime_families  # the engine's runtime
            assert not any(name.endswith("_created") for name in names)
    finally:
        await srv.stop()


async def test_passthrough_of_a_payload_that_only_parses_in_part_is_a_notice_not_a_failure():
    """A runtime family the mapping never reads is malformed: the unified metrics still come (the parser skips
    what it is not asked for); `passthrough: all` passes nothing through and says why, once; `true` (the
    engine's own families) is unaffected."""
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text() + 'python_info{x="1" 1\n'
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(text)})
    await srv.start()
    try:
        for mode, passed in (("all", False), ("true", True)):
            pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", passthrough=mode)
            try:
                await pipe.poll()
                await pipe.poll()
                assert pipe.state.health.up and pipe.value("llm_requests_running") is not None
                assert bool(pipe.state.report.passthrough) is passed
                notices = [text for _, text in pipe.state.events if "pass-through" in text]
                assert len(notices) == (0 if passed else 1), notices
            finally:
                await pipe.close()
    finally:
        await srv.stop()


async def test_the_debug_views_fed_by_is_what_fed_this_poll():
    """A family that fed a unified key in one poll and is gone in the next is not named in the next."""
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(text)})
    await srv.start()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.state.last_observation[1].fed_by["requests_waiting"] == "vllm:num_requests_waiting"
        srv.set("/metrics", Reply.text(remove_family(text, "vllm:num_requests_waiting")))
        await pipe.poll()
        fed_by = pipe.state.last_observation[1].fed_by
        assert "requests_waiting" not in fed_by and fed_by["requests_running"] == "vllm:num_requests_running"
    finally:
        await pipe.close()
        await srv.stop()


async def test_sglang_is_never_asked_to_run_a_generation():
    """SGLang's /health runs a one-token generation (tests/fixtures/sglang-real/SOURCES.md): a replay server
    that records every request sees 60 polls (a minute at the default interval) and never /health or
    /health_generate; readiness comes from /ready."""
    text = (FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()
    srv = ReplayServer(
        {"/ready": Reply(200), "/metrics": Reply.text(text), "/health": Reply(200), "/health_generate": Reply(200)}
    )
    await srv.start()
    pipe = Pipeline("sglang", f"http://127.0.0.1:{srv.port}")
    try:
        for _ in range(60):
            await pipe.poll()
        assert pipe.state.health.up and pipe.value("llm_ready") == 1
        assert srv.hits.get("/health", 0) == 0 and srv.hits.get("/health_generate", 0) == 0
        assert srv.hits["/ready"] == 60 and set(srv.hits) == {"/ready", "/metrics"}
    finally:
        await pipe.close()
        await srv.stop()


async def test_sglang_without_ready_falls_back_to_model_info_not_the_deprecated_one():
    """An older SGLang (no /ready): /model_info tells it is up; /get_model_info (which logs a deprecation
    warning on every call where /model_info exists) is never asked, and the working path is kept."""
    text = (FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()
    info = (FIXTURES / "sglang-real" / "sglang-0.5.23-get_model_info.json").read_bytes()
    srv = ReplayServer(
        {"/metrics": Reply.text(text), "/model_info": Reply(200, info), "/get_model_info": Reply(200, info)}
    )
    await srv.start()
    pipe = Pipeline("sglang", f"http://127.0.0.1:{srv.port}")
    try:
        for _ in range(3):
            await pipe.poll()
        assert pipe.state.health.up and pipe.value("llm_ready") == 1
        assert srv.hits.get("/ready") == 1 and srv.hits["/model_info"] == 3 and "/get_model_info" not in srv.hits
        assert "/health" not in srv.hits
    finally:
        await pipe.close()
        await srv.stop()
