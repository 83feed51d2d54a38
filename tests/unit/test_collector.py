"""The exposition: names pass promtool, series vanish with their target/model, failures hide stale values."""

import subprocess

import pytest
from prometheus_client import generate_latest

from exporter.catalogue import ALL_METRICS, exposed_names
from exporter.observation import ModelSample, Observation, Readiness
from tests.conftest import FIXTURES
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply


@pytest.fixture
async def pipe():
    srv = ReplayServer(
        {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()),
        }
    )
    await srv.start()
    p = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", window="1m")
    yield p, srv
    await p.close()
    await srv.stop()


@pytest.mark.prometheus
async def test_exposition_passes_promtool_check_metrics(pipe, promtool):
    p, _srv = pipe
    await p.poll()
    await p.poll()
    text = p.exposition()
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


async def test_failure_hides_stale_engine_values_but_keeps_self_metrics(pipe):
    p, srv = pipe
    await p.poll()
    assert p.value("llm_requests_running") == 0
    srv.set("/metrics", Reply(500))
    await p.poll()
    assert p.value("llm_requests_running") is None
    assert p.value("llm_up") == 0 and p.value("llm_exporter_poll_errors_total", reason="http_status") == 1
    assert p.state.report.models  # history kept for when the target is back


def test_vanished_models_vanish_from_exposition():
    from exporter.state import TargetState
    from tests.support.configs import load_target

    target = load_target("vllm", "http://h:1")
    state = TargetState(target)
    a, b = ModelSample(), ModelSample()
    a.set("requests_running", 1)
    b.set("requests_running", 2)
    state.record_success(Observation(Readiness.READY, models={"a": a, "b": b}), 1.0, 0.01)
    assert set(state.report.models) == {"a", "b"}
    c = ModelSample()
    c.set("requests_running", 3)
    state.record_success(Observation(Readiness.READY, models={"a": c}), 2.0, 0.01)
    from exporter.samples import target_samples

    exposed = {
        labels["model"]: value for key, _, labels, value in target_samples(state, {}) if key == "requests_running"
    }
    assert exposed == {"a": 3}


def test_series_cap_drops_and_counts():
    from exporter.state import TargetState
    from tests.support.configs import load_target

    target = load_target("vllm", "http://h:1", max_series=30)
    state = TargetState(target)
    models = {}
    for i in range(100):
        sample = ModelSample()
        sample.set("requests_running", i)
        models[f"m{i:03d}"] = sample
    state.record_success(Observation(Readiness.READY, models=models), 1.0, 0.01)
    # each model costs its one value plus 8 series of overhead: 3 fit in 30, the other 97 are dropped
    assert sorted(state.report.models) == ["m000", "m001", "m002"]
    assert state.report.series_dropped == 97 * 9


def test_catalogue_names_are_valid_and_unique():
    import re

    names = [n for spec in ALL_METRICS for n in exposed_names("llm", spec)]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", n) for n in names)


async def test_cached_text_renderer_equals_prometheus_client_output(pipe):
    """The fast renderer must produce exactly what prometheus_client's generate_latest produces."""
    from prometheus_client import CollectorRegistry

    from exporter.openmetrics import ExporterCollector
    from exporter.status import ExporterStatus
    from exporter.text import TextRenderer

    p, srv = pipe
    await p.poll()
    await p.poll()
    status = ExporterStatus()
    status.config_reload_ok, status.config_reload_time = True, 1.5e9
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector("llm", lambda: [p.state], status))
    renderer = TextRenderer("llm", lambda: [p.state], status)

    def same(ours: bytes) -> tuple[str, str]:
        # the render-duration gauge is set by the render itself: compare everything else
        drop = lambda text: "".join(lab for lab in text.splitlines(True) if "scrape_render_seconds" not in lab)  # noqa: E731
        return drop(ours.decode()), drop(generate_latest(registry).decode())

    mine, reference = same(renderer.render())
    assert mine == reference
    # cached until the state changes, then re-rendered
    first, _ = same(renderer.render())
    assert same(renderer.render())[0] == first
    srv.set("/metrics", Reply(500))
    await p.poll()
    mine, reference = same(renderer.render())
    assert mine == reference and mine != first


def test_own_process_metrics_match_prometheus_client_process_collector():
    """The text format's process_* come from /proc without prometheus_client: same names, HELP, types,
    and values (the CPU counter may tick between the two reads)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from exporter.promparse import parse
    from exporter.text import process_exposition

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    reference = generate_latest(registry).decode()
    ours = process_exposition().decode()
    heads = [line for line in ours.splitlines() if line.startswith("#")]
    assert heads == [line for line in reference.splitlines() if line.startswith("#")]
    mine, theirs = parse(ours), parse(reference)
    for name in ("process_start_time_seconds", "process_max_fds", "process_virtual_memory_bytes"):
        assert mine.get(name)[0][1] == pytest.approx(theirs.get(name)[0][1], rel=0.01), name
    assert abs(mine.get("process_cpu_seconds_total")[0][1] - theirs.get("process_cpu_seconds_total")[0][1]) < 0.5
    assert abs(mine.get("process_open_fds")[0][1] - theirs.get("process_open_fds")[0][1]) <= 2


def test_go_float_matches_prometheus_client():
    from prometheus_client.utils import floatToGoString

    from exporter.samples import go_float

    for value in (
        0.0,
        1.0,
        -1.0,
        0.25,
        1e6,
        123456789.0,
        1.5e-7,
        2.0**53,
        1e300,
        float("inf"),
        -float("inf"),
        float("nan"),
        7.5,
        1234567.125,
        0.1 + 0.2,
    ):
        assert go_float(value) == floatToGoString(value), value


async def test_openmetrics_comes_from_the_cached_lines_and_equals_prometheus_client():
    """A real Prometheus asks for OpenMetrics first: that output joins the same cached per-target lines as
    text (no prometheus_client on the scrape path) and is exactly what prometheus_client writes, pass-through
    included; prometheus_client's strict OpenMetrics parser reads it."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from exporter.openmetrics import ExporterCollector
    from exporter.status import ExporterStatus
    from exporter.text import TextRenderer

    srv = ReplayServer(
        {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()),
        }
    )
    await srv.start()
    p = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", window="1m", passthrough="true")
    try:
        await p.poll()
        await p.poll()
    finally:
        await p.close()
        await srv.stop()
    status = ExporterStatus()
    status.config_reload_ok, status.config_reload_time = True, 1.5e9
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector("llm", lambda: [p.state], status))
    renderer = TextRenderer("llm", lambda: [p.state], status)
    text = renderer.render()
    lines_before = dict(renderer._cache)
    ours = (renderer.render(openmetrics=True) + b"# EOF\n").decode()
    assert renderer._cache == lines_before  # the same cached sample lines served both formats
    drop = lambda t: "".join(x for x in t.splitlines(True) if "scrape_render_seconds" not in x)  # noqa: E731
    assert drop(ours) == drop(openmetrics(registry).decode())
    families = {f.name: f for f in text_string_to_metric_families(ours)}
    assert families["llm_prompt_tokens"].type == "counter" and families["llm_vllm_num_requests_running"]
    assert set(text.decode().splitlines()) - set(ours.splitlines()) == {
        line for line in text.decode().splitlines() if line.startswith("# ")
    } - set(ours.splitlines())
