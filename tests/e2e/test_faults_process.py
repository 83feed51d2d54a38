"""Faults against the real exporter process: a 100 MB body, a flapping target, a scrape storm.
Healthy targets keep their series; the process stays up, bounded and quiet."""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.support.net import (
    ExporterProcess,
    free_port,
    http_get,
    kill_tree,
    value,
    wait_until,
)

IDLE = FIXTURES / "vllm-real" / "v0.32.0-metrics-after-prefix.prom"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def scene(tmp_path):
    port = free_port()
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "/health": {"status": 200},
                "/metrics": {"file": str(IDLE)},
                "/huge/health": {"status": 200},
                "/huge/metrics": {"status": 200, "fault": "huge"},
                "/flap/health": {"status": 200},
                "/flap/metrics": {"file": str(IDLE), "fault": "flap"},
            }
        )
    )
    replay = subprocess.Popen(
        [sys.executable, "tests/support/replay.py", "--port", str(port), "--spec", str(spec)], cwd=ROOT, process_group=0
    )
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 10, what="replay")
    exporter_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{exporter_port}
defaults: {{interval: 300ms, timeout: 280ms, window: 30s}}
targets:
  - {{name: good, engine: vllm, url: "http://127.0.0.1:{port}"}}
  - {{name: huge, engine: vllm, url: "http://127.0.0.1:{port}/huge", interval: 2s, timeout: 1900ms}}
  - {{name: flap, engine: vllm, url: "http://127.0.0.1:{port}/flap"}}
""")
    exporter = ExporterProcess(config, exporter_port, ("--web.max-requests", "4"))
    yield exporter
    exporter.stop()
    kill_tree(replay)


def test_huge_body_cut_at_cap_memory_bounded_healthy_target_intact(scene):
    body = wait_until(
        lambda: (
            lambda b: b if value(b, "llm_exporter_poll_errors_total", target="huge", reason="too_large") else None
        )(scene.metrics()),
        15,
    )
    assert value(body, "llm_up", target="huge") == 0
    assert value(body, "llm_up", target="good") == 1
    assert value(body, "llm_kv_cache_hit_tokens_total", target="good") == 1280
    assert rss_mib(scene.proc.pid) < 120  # the 100 MB body was never held (cap 8 MiB)


def test_flapping_target_logs_a_few_lines_not_a_flood(scene):
    time.sleep(6)  # ~20 polls of the flapping target: ~20 up/down changes
    polls = value(scene.metrics(), "llm_exporter_polls_total", target="flap")
    assert polls >= 12
    lines = [line for line in scene.logs().splitlines() if "target flap " in line]
    assert 1 <= len(lines) <= 4, lines
    assert value(scene.metrics(), "llm_up", target="good") == 1


def test_scrape_storm_is_capped_with_503_and_polling_continues(scene):
    wait_until(lambda: value(scene.metrics(), "llm_up", target="good") == 1, 10)
    before = value(scene.metrics(), "llm_exporter_polls_total", target="good")
    statuses: list[int] = []

    def hammer():
        for _ in range(5):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{scene.port}/metrics", timeout=10) as resp:
                    resp.read()
                    statuses.append(resp.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)

    threads = [threading.Thread(target=hammer) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 300 and set(statuses) <= {200, 503} and 200 in statuses
    assert scene.proc.poll() is None
    time.sleep(1.0)
    after = value(scene.metrics(), "llm_exporter_polls_total", target="good")
    assert after > before + 2
