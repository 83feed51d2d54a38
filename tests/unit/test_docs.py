"""docs/metrics.md must list every metric the code can expose (its tables are generated)."""

from pathlib import Path

from exporter import docgen
from exporter.catalogue import ALL_METRICS, exposed_names

ROOT = Path(__file__).resolve().parents[2]


def test_generated_tables_are_current():
    assert docgen.main(["--check"]) == 0, "run: python -m exporter.docgen"


def test_every_metric_is_documented():
    text = (ROOT / "docs" / "metrics.md").read_text()
    for spec in ALL_METRICS:
        for name in exposed_names("llm", spec):
            assert f"`{name}`" in text, name


def test_architecture_doc_names_every_module_and_only_real_ones():
    """docs/architecture.md's module table stays true: every module is in it, every module it names exists."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "exporter"
    modules = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "__main__.py" and str(p.relative_to(package)) not in ("__init__.py", "derive/__init__.py")
    }
    named = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", text))
    assert modules <= named, sorted(modules - named)
    assert named <= modules, sorted(named - modules)


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's tables: exposed sample name → (type column, label names)."""
    import re

    rows: dict[str, tuple[str, set[str]]] = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0]):
                rows[name] = (cells[1], {label.strip() for label in cells[2].split(",") if label.strip()})
    return rows


async def test_docs_match_a_real_exposition():
    """Every family a real exposition carries (engines replayed from their captures, the exporter's own
    metrics, process_*) is documented with the type and the labels it really has."""
    from exporter.promparse import parse
    from exporter.status import ExporterStatus
    from exporter.text import TextRenderer, process_exposition
    from tests.conftest import FIXTURES
    from tests.support.pipeline import Pipeline
    from tests.support.replay import ReplayServer, Reply

    lc = FIXTURES / "llamacpp"
    payloads = {
        "vllm": {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "vllm-real" / "v0.32.0-metrics-lora-busy.prom").read_text()),
        },
        "sglang": {
            "/ready": Reply(200),
            "/metrics": Reply.text((FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()),
        },
        "tgi": {
            "/health": Reply(200),
            "/info": Reply.json({"model_id": "m"}),
            "/metrics": Reply.text((FIXTURES / "tgi" / "datadog-tgi-payload-partial.prom").read_text()),
        },
        "llamacpp": {
            "/metrics": Reply.text((lc / "b11434-metrics-load.prom").read_text(), **{"Process-Start-Time-Unix": "1"}),
            "/slots": Reply(200, (lc / "b11434-slots-busy.json").read_bytes()),
            "/props": Reply(200, (lc / "b11434-props.json").read_bytes()),
        },
        "trtllm": {
            "/health": Reply(200),
            "/prometheus/metrics": Reply.text((FIXTURES / "trtllm" / "trtllm-main-050f80d-metrics.prom").read_text()),
        },
        "lmdeploy": {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "lmdeploy" / "lmdeploy-main-0168eed-metrics.prom").read_text()),
        },
        "ollama": {
            path: Reply(200, (FIXTURES / "ollama-real" / name).read_text().splitlines()[0].encode())
            for path, name in (("/api/ps", "ps-loaded.txt"), ("/api/version", "version.txt"), ("/api/tags", "tags.txt"))
        },
    }
    states = []
    for engine, routes in payloads.items():
        srv = ReplayServer(routes)
        await srv.start()
        pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
        try:
            await pipe.poll()
            await pipe.poll()
            assert pipe.state.health.up, (engine, pipe.state.health.last_error)
            states.append(pipe.state)
        finally:
            await pipe.close()
            await srv.stop()
    status = ExporterStatus()
    status.config_reload_ok, status.config_reload_time = True, 1.0
    status.host_cpu = (("brand", "x"), ("arch", "X86_64"))
    body = (TextRenderer("llm", lambda: states, status).render() + process_exposition()).decode()
    documented = _documented()
    types = dict(line.split()[2:4] for line in body.splitlines() if line.startswith("# TYPE"))
    payload = parse(body)
    checked = 0
    for name, samples in payload.samples.items():
        family = next((f for f in types if name in (f, f + "_bucket", f + "_sum", f + "_count")), name)
        assert name in documented or family + "_bucket" in documented, f"{name} is not in docs/metrics.md"
        doc_type, doc_labels = documented.get(name) or documented[family + "_bucket"]
        assert doc_type.split()[0] == types[family], (name, doc_type, types[family])
        for labels, _ in samples:
            assert set(labels) - {"le"} <= doc_labels, (name, set(labels) - doc_labels)
        checked += 1
    assert checked >= 55  # the families of four engines, the lifecycle, the exporter and its process
