"""Each failure reason, produced by a real (fault-injecting) HTTP server or the network."""

import time

import pytest

from exporter.observation import Readiness, Reason
from exporter.sources import engine_specs
from tests.conftest import FIXTURES
from tests.support.net import free_port
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

IDLE = (FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text()


@pytest.fixture
async def server():
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(IDLE)})
    await srv.start()
    yield srv
    await srv.stop()


async def poll_reason(url: str, **extra) -> tuple[Pipeline, Reason | None, float]:
    pipe = Pipeline("vllm", url, **extra)
    started = time.monotonic()
    await pipe.poll()
    elapsed = time.monotonic() - started
    reason = pipe.state.health.last_error[0] if pipe.state.health.last_error else None
    await pipe.close()
    return pipe, reason, elapsed


async def test_healthy_baseline(server):
    pipe, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is None and pipe.state.health.up


async def test_connection_refused():
    pipe, reason, _ = await poll_reason(f"http://127.0.0.1:{free_port()}")
    assert reason is Reason.CONNECT and pipe.state.health.readiness is Readiness.DOWN
    assert "cannot connect" in pipe.state.health.last_error[1]


async def test_dns_failure():
    pipe, reason, _ = await poll_reason("http://nonexistent-host.invalid:8000")
    assert reason is Reason.CONNECT and "DNS" in pipe.state.health.last_error[1]


async def test_tls_handshake_failure(server):
    # https against a plain-HTTP server: the handshake fails
    _pipe, reason, _ = await poll_reason(f"https://127.0.0.1:{server.port}")
    assert reason is Reason.TLS


@pytest.mark.parametrize("fault", ["hang", "trickle"])
async def test_slow_targets_time_out_within_budget(server, fault):
    server.set("/metrics", Reply(200, IDLE.encode()[:50], fault=fault))
    _pipe, reason, elapsed = await poll_reason(f"http://127.0.0.1:{server.port}", interval="1s", timeout="500ms")
    assert reason is Reason.TIMEOUT
    assert elapsed < 1.0


@pytest.mark.parametrize("status", [401, 404, 500, 502])
async def test_http_status(server, status):
    server.set("/metrics", Reply(status, b"nope"))
    _, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is Reason.HTTP_STATUS


async def test_redirects_are_not_followed(server):
    server.set("/metrics", Reply(302, b"", {"Location": "http://169.254.169.254/latest"}))
    _pipe, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is Reason.HTTP_STATUS and server.hits.get("/latest") is None


async def test_truncated_body(server):
    server.set("/metrics", Reply(200, IDLE.encode(), fault="truncate"))
    _, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is Reason.OTHER


async def test_huge_body_is_cut_at_the_cap(server):
    server.set("/metrics", Reply(200, b"", {"Content-Type": "text/plain"}, fault="huge"))
    pipe, reason, _elapsed = await poll_reason(f"http://127.0.0.1:{server.port}", max_body_bytes="1MiB", timeout="3s")
    assert reason is Reason.TOO_LARGE and "read cut" in pipe.state.health.last_error[1]
    # the declared-length path is refused before reading
    server.set("/metrics", Reply(200, b"x" * (2 * 1024 * 1024)))
    pipe, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}", max_body_bytes="1MiB")
    assert reason is Reason.TOO_LARGE and "exceeds" in pipe.state.health.last_error[1]


@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage\x80", bytes(range(256)) * 4])
async def test_non_utf8_and_binary_garbage(server, body):
    server.set("/metrics", Reply(200, body))
    _, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is Reason.PARSE


async def test_valid_utf8_garbage(server):
    server.set("/metrics", Reply.text("<html>this is not prometheus</html>\n"))
    _, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is Reason.PARSE


async def test_connection_reset_is_retried_then_reported(server):
    server.set("/metrics", Reply(200, IDLE.encode(), {"Content-Length": str(len(IDLE))}, fault="reset"))
    _, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason in (Reason.OTHER,)
    assert server.hits["/metrics"] >= 2  # tenacity retried within the budget


async def test_transient_reset_recovers_within_one_poll(server):
    server.set("/metrics", Reply(200, IDLE.encode(), {"Content-Length": str(len(IDLE))}, fault="reset_once"))
    pipe, reason, _ = await poll_reason(f"http://127.0.0.1:{server.port}")
    assert reason is None and pipe.state.health.up
    assert server.hits["/metrics"] == 2


async def test_error_reason_counters_and_recovery(server):
    pipe = Pipeline("vllm", f"http://127.0.0.1:{server.port}")
    try:
        server.set("/metrics", Reply(500))
        await pipe.poll()
        await pipe.poll()
        server.set("/metrics", Reply.text(IDLE))
        await pipe.poll()
        assert pipe.value("llm_exporter_poll_errors_total", reason="http_status") == 2
        assert pipe.value("llm_up") == 1 and pipe.state.health.last_error is None
        assert pipe.value("llm_exporter_last_success_timestamp_seconds") == pytest.approx(time.time(), abs=5)
    finally:
        await pipe.close()


async def test_errors_name_the_path_really_requested_and_the_tls_files(tmp_path):
    from tests.support.pipeline import Pipeline
    from tests.support.replay import ReplayServer

    srv = ReplayServer({})
    await srv.start()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}/engines/a")
    try:
        await pipe.poll()
        assert pipe.state.health.last_error[1] == "GET /engines/a/health: HTTP 404"  # the prefix is shown
    finally:
        await pipe.close()
        await srv.stop()
    bad_ca = tmp_path / "ca.crt"
    # a PEM block that does not decode: it passes the load-time check (a certificate marker), fails at use
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    pipe = Pipeline("vllm", "https://127.0.0.1:9", tls=f"{{ca_file: '{bad_ca}'}}")
    try:
        await pipe.poll()
        assert str(bad_ca) in pipe.state.health.last_error[1]  # which TLS file could not be loaded
    finally:
        await pipe.close()


async def test_a_bug_after_collect_is_an_other_error_not_a_dead_poller(caplog):
    """The whole poll is inside the error boundary: a bug in the render after the state update (here the
    renderer's hook raising) is a logged `other` error on that target, and the next poll runs."""
    srv = ReplayServer(
        {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()),
        }
    )
    await srv.start()
    pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}")
    calls = {"n": 0}

    def broken(state) -> None:
        calls["n"] += 1
        raise KeyError("a bug in rendering")

    pipe.poller.on_update = broken
    try:
        await pipe.poll()
        await pipe.poll()
        assert calls["n"] == 2  # the second poll ran
        assert pipe.state.health.errors[Reason.OTHER] == 2
        assert "KeyError" in pipe.state.health.last_error[1]
        assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await pipe.close()
        await srv.stop()


async def test_debug_view_of_ten_thousand_models_is_bounded():
    """M8: the debug view lists at most MODELS_SHOWN models per section and says how many it left out."""
    import json

    from exporter.config import load_config_text
    from exporter.debugview import MODELS_SHOWN, target_debug
    from exporter.observation import ModelSample, Observation, Readiness
    from exporter.state import TargetState

    target = load_config_text(
        "targets:\n  - {name: t, engine: vllm, url: 'http://h:1', max_series: 1000000}\n",
        "t",
        {},
        engines=engine_specs(),
    ).targets[0]
    state = TargetState(target)
    models = {}
    for i in range(10_000):
        sample = ModelSample()
        sample.set("requests_running", i)
        models[f"model-{i:05d}"] = sample
    state.record_success(Observation(Readiness.READY, models=models), 1.0, 0.01)
    view = target_debug(state)
    text = json.dumps(view, default=str)
    assert len(view["exposed_models"]) == MODELS_SHOWN + 1 and view["exposed_model_count"] == 10_000
    assert view["last_observation"]["models"]["…"] == f"{10_000 - MODELS_SHOWN} more not shown"
    assert len(text) < 100_000
