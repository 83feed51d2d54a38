"""A golden exposition per captured engine payload, as node_exporter's e2e-output.txt: the exact lines the
exporter renders for the target after one poll of the payload (tests/fixtures/golden/*.prom). A change to any
mapping, name, label or value shows up here as a diff to review; regenerate on purpose with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_golden_expositions.py

Left out, because they are the clock's and not the payload's: the exporter's own families (llm_exporter_*)
and *_timestamp_seconds samples."""

import os
import pathlib
import re

import pytest

from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden"
VLLM = sorted((FIXTURES / "vllm-real").glob("v0.32.0-metrics-*.prom"))
CASES = [("vllm", path, {"/health": Reply(200), "/metrics": Reply.text(path.read_text())}) for path in VLLM] + [
    (
        "sglang",
        FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom",
        {
            "/ready": Reply(200),
            "/metrics": Reply.text((FIXTURES / "sglang-real" / "sglang-0.5.23-metrics.prom").read_text()),
        },
    ),
    (
        "trtllm",
        FIXTURES / "trtllm" / "trtllm-main-050f80d-metrics.prom",
        {
            "/health": Reply(200),
            "/prometheus/metrics": Reply.text((FIXTURES / "trtllm" / "trtllm-main-050f80d-metrics.prom").read_text()),
        },
    ),
    (
        "lmdeploy",
        FIXTURES / "lmdeploy" / "lmdeploy-main-0168eed-metrics.prom",
        {
            "/health": Reply(200),
            "/metrics": Reply.text((FIXTURES / "lmdeploy" / "lmdeploy-main-0168eed-metrics.prom").read_text()),
        },
    ),
]
CLOCK = re.compile(r"^(# (HELP|TYPE) )?(llm_exporter_\w+|\w+_timestamp_seconds)\b")


def stable(exposition: str) -> str:
    return "".join(line + "\n" for line in exposition.splitlines() if line and not CLOCK.match(line))


@pytest.mark.parametrize("engine, payload, routes", CASES, ids=[f"{e}-{p.stem}" for e, p, _ in CASES])
async def test_golden_exposition(engine, payload, routes):
    srv = ReplayServer(routes)
    await srv.start()
    pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
    try:
        await pipe.poll()
        assert pipe.state.health.up, pipe.state.health.last_error
        got = stable(pipe.exposition())
    finally:
        await pipe.close()
        await srv.stop()
    golden = GOLDEN / f"{engine}-{payload.stem}.prom"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1 and review it"
    assert got == golden.read_text(), f"{golden.name} differs: review the diff, regenerate with UPDATE_GOLDEN=1"
