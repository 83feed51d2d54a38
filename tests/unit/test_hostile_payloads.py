"""Valid-looking payloads with hostile values: the exporter exposes nothing wrong and never crashes."""

import math
import subprocess

import pytest

from exporter.promparse import parse
from tests.support.net import serve_handler
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

HEAD = "# TYPE vllm:num_requests_running gauge\n# TYPE vllm:prompt_tokens_total counter\n"


def payload(running="1", prompt="10", model="m", extra=""):
    return (
        HEAD + f'vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}\n'
        f'vllm:prompt_tokens_total{{engine="0",model_name="{model}"}} {prompt}\n' + extra
    )


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
    text = (
        payload()
        + """# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.1",model_name="m"} 5.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="m"} 6.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 1.0
vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 6.0
"""
    )
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
            text = HEAD + "".join(
                f'vllm:num_requests_running{{engine="0",model_name="m{round_}-{i}"}} 1\n' for i in range(1000)
            )
            server.set("/metrics", Reply.text(text))
            await pipe.poll()
            models = {labels["model"] for labels, _ in parse(pipe.exposition()).get("llm_requests_running")}
            assert 0 < len(models) <= 300 and all(m.startswith(f"m{round_}-") for m in models)
        assert pipe.value("llm_exporter_series_dropped_total") > 2000
    finally:
        await pipe.close()


# ---------------------------------------------------------------- attacks from the reliability report


def test_label_cache_is_bounded_in_bytes():
    """H1: unique long label values every poll are parsed but not kept; the cache stays within its bytes; a
    1 MB label set fails the parse (as Prometheus' label_value_length_limit does) before any regex runs."""
    from exporter.promparse import LabelCache, PromParseError

    cache = LabelCache(max_bytes=1024 * 1024)
    with pytest.raises(PromParseError, match="label set longer than"):
        parse(HEAD + f'vllm:num_requests_running{{engine="0",model_name="{"x" * (1 << 20)}"}} 1\n', ("vllm:",), cache)
    for poll in range(20):
        big = "".join(
            f'vllm:num_requests_running{{engine="0",model_name="m",junk="{poll}-{k}-{"x" * 10_000}"}} 1\n'
            for k in range(3)
        )
        small = "".join(f'vllm:num_requests_running{{engine="{poll}-{i}",model_name="m"}} 1\n' for i in range(5000))
        payload = parse(HEAD + big + small, ("vllm:",), cache)
        assert len(payload.get("vllm:num_requests_running")) == 5003
        assert cache.bytes <= cache.max_bytes
        assert all(len(block) <= cache.MAX_CACHED_BLOCK for block in cache.entries)


async def test_ratios_an_upstream_pushes_above_one_are_not_exported(server, pipe):
    """L4: hits growing 5x faster than queries, and a usage of 5.0, are lies: no ratio is exported."""

    def body(n: int) -> str:
        return (
            "# TYPE vllm:prefix_cache_hits_total counter\n# TYPE vllm:prefix_cache_queries_total counter\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {50 * n}\n'
            f'vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {10 * n}\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 5.0\n'
        )

    for n in range(1, 4):
        server.set("/metrics", Reply.text(body(n)))
        await pipe.poll()
    assert pipe.state.health.up
    assert pipe.value("llm_kv_cache_hit_ratio") is None and pipe.value("llm_kv_cache_usage_ratio") is None


@pytest.mark.parametrize(
    "slots, props, up, reason",
    [
        ("[" * 200_000 + "]" * 200_000, None, False, "parse"),  # /slots nested 200k deep
        (None, "[" * 200_000 + "]" * 200_000, True, None),  # /props nested: ignored, target stays up
        (
            '[{"id":0,"id_task":1,"n_ctx":1' + "0" * 400 + ',"is_processing":true,"n_prompt_tokens":5}]',
            None,
            True,
            None,
        ),  # 400-digit integer
        (
            '[{"id":0,"id_task":1,"n_ctx":4096,"is_processing":true,"n_prompt_tokens":5,"next_token":5}]',
            None,
            True,
            None,
        ),  # wrong type
        (
            "[" + ",".join(f'{{"id":{i},"id_task":1,"n_ctx":4096,"is_processing":true}}' for i in range(70_000)) + "]",
            None,
            False,
            "parse",
        ),  # 70k slots
    ],
)
async def test_absurd_llamacpp_json_is_a_clean_parse_error_or_ignored(slots, props, up, reason):
    """L5: deep nesting, huge integers and wrong types in /slots or /props never become an internal error."""
    from tests.conftest import FIXTURES

    metrics = (
        (FIXTURES / "llamacpp" / "b11434-metrics-idle-after-load.prom")
        .read_text()
        .replace("llamacpp:requests_processing 0", "llamacpp:requests_processing 1")
    )
    srv = ReplayServer(
        {
            "/health": Reply.json({"status": "ok"}),
            "/metrics": Reply.text(metrics),
            "/props": Reply.text(
                props or (FIXTURES / "llamacpp" / "b11434-props.json").read_text(), content_type="application/json"
            ),
            "/slots": Reply.text(slots or "[]", content_type="application/json"),
        }
    )
    await srv.start()
    p = Pipeline("llamacpp", f"http://127.0.0.1:{srv.port}")
    try:
        await p.poll()
        assert p.state.health.up is up, p.state.health.last_error
        if reason:
            assert p.state.health.last_error[0].value == reason
    finally:
        await p.close()
        await srv.stop()


async def test_router_listing_fresh_models_every_poll_keeps_no_state_for_gone_ones():
    """H2: a router whose /models lists new ids each poll: per-model state is pruned to what is listed now."""
    from aiohttp import web

    from tests.conftest import FIXTURES

    llama = (FIXTURES / "llamacpp" / "b11434-metrics-idle-after-load.prom").read_text()
    polls = {"n": 0}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/metrics" and "model" not in request.query:
            return web.json_response({"error": {"message": "model name is missing"}}, status=400)
        if request.path == "/models":
            polls["n"] += 1
            return web.json_response(
                {"data": [{"id": f"m{polls['n']}-{i}", "status": {"value": "loaded", "args": []}} for i in range(50)]}
            )
        if request.path == "/metrics":
            return web.Response(text=llama)
        if request.path == "/props":
            return web.Response(
                text='{"total_slots": 1, "x": "' + "p" * 200_000 + '"}', content_type="application/json"
            )
        return web.json_response({"status": "ok"})

    runner, port = await serve_handler(handle, "GET")
    p = Pipeline("llamacpp", f"http://127.0.0.1:{port}")
    try:
        for _ in range(5):
            await p.poll()
        assert p.state.health.up, p.state.health.last_error
        source = p.source
        assert set(source.router.model_props) <= {f"m{polls['n']}-{i}" for i in range(50)}
        assert all(len(str(props)) < 1000 for props in source.router.model_props.values())  # only what is used
        assert set(source.router.children) <= {f"m{polls['n']}-{i}" for i in range(50)}
        assert len(p.state.life.lifecycles) == 50
    finally:
        await p.close()
        await runner.cleanup()


async def test_one_absurd_waiting_count_cannot_poison_the_queue_estimate():
    """M9: `requests_deferred 1e308` for a few polls, then healthy: the estimate's sum stays finite."""
    from tests.conftest import FIXTURES

    base = (
        (FIXTURES / "llamacpp" / "b11434-metrics-idle-after-load.prom")
        .read_text()
        .replace("llamacpp:requests_processing 0", "llamacpp:requests_processing 1")
    )
    srv = ReplayServer(
        {
            "/health": Reply.json({"status": "ok"}),
            "/metrics": Reply.text(base.replace("llamacpp:requests_deferred 0", "llamacpp:requests_deferred 1e308")),
            "/props": Reply.text(
                (FIXTURES / "llamacpp" / "b11434-props.json").read_text(), content_type="application/json"
            ),
            "/slots": Reply.json([{"id": 0, "id_task": 1, "n_ctx": 4096, "is_processing": True}]),
        }
    )
    await srv.start()
    p = Pipeline("llamacpp", f"http://127.0.0.1:{srv.port}")
    try:
        for _ in range(4):
            await p.poll()
        srv.set("/metrics", Reply.text(base))
        for _ in range(3):
            await p.poll()
        total = p.value("llm_token_queue_latency_seconds_sum")
        assert total is not None and math.isfinite(total)
    finally:
        await p.close()
        await srv.stop()


async def test_passthrough_labels_are_capped(server):
    """L9: a 10,000-character label value is not re-exposed (the series is dropped and counted)."""
    p = Pipeline("vllm", f"http://127.0.0.1:{server.port}", passthrough="true")
    server.set("/metrics", Reply.text(payload(model="m" * 10_000)))
    try:
        await p.poll()
        text = p.exposition()
        assert max(len(line) for line in text.splitlines()) < 2000
        assert p.state.report.series_dropped >= 1
    finally:
        await p.close()


async def test_a_large_payload_is_parsed_off_the_event_loop(monkeypatch):
    """M1: a /metrics body over OFF_LOOP_BYTES is parsed in a worker thread (the loop keeps its turns)."""
    import threading

    from exporter.sources import base

    seen: list[str] = []
    real = base.parse_metrics

    def spy(text, prefixes, labels, max_samples=None):
        seen.append(threading.current_thread().name)
        return real(text, prefixes, labels, max_samples)

    monkeypatch.setattr(base, "parse_metrics", spy)
    big = payload() + "".join(f'vllm:num_requests_running{{engine="{i}",model_name="m"}} 1\n' for i in range(20_000))
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(payload())})
    await srv.start()
    p = Pipeline("vllm", f"http://127.0.0.1:{srv.port}")
    try:
        await p.poll()
        srv.set("/metrics", Reply.text(big))
        await p.poll()
        assert p.state.health.up
        assert seen[0] == threading.main_thread().name and seen[1] != threading.main_thread().name
    finally:
        await p.close()
        await srv.stop()


async def test_series_past_the_cap_are_not_even_parsed():
    """M1: 115,000 series of one wanted family: the parser stops keeping samples at the target's max_series
    (no 115k label sets in memory), the target stays up and the rest is counted as dropped."""
    big = payload() + "".join(f'vllm:num_requests_running{{engine="{i}",model_name="m"}} 1\n' for i in range(115_000))
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(big)})
    await srv.start()
    p = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", max_series="1000", max_body_bytes="16MiB")
    try:
        await p.poll()
        assert p.state.health.up, p.state.health.last_error
        assert p.state.report.series_dropped >= 115_000 + 2 - 1000
    finally:
        await p.close()
        await srv.stop()
