"""A real Prometheus (Debian's 2.42, whose default Accept header asks for OpenMetrics first) scrapes an
exporter with 1,000 targets: it gets OpenMetrics from the same cached lines as text, at the text path's
cost, not the 50x slower prometheus_client path (bench/RESULTS.md has the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.real.test_prometheus_e2e import prom_query
from tests.support.net import ExporterProcess, free_port, http_get, kill_tree, start_prometheus, wait_until

pytestmark = [pytest.mark.prometheus]
TARGETS = 1000


def timed_scrape(port: int, accept: str) -> float:
    started = time.perf_counter()
    status, _ = http_get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers={"Accept": accept})
    assert status == 200
    return time.perf_counter() - started


def text_only_proxy(upstream: int) -> tuple[ThreadingHTTPServer, int]:
    """Prometheus 2.42 cannot be told to ask for text: a second job scrapes through this proxy, which asks
    the exporter for text format 0.0.4 (the cached path before this change too)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{upstream}{self.path}", headers={"Accept": "text/plain;version=0.0.4"}
            )
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = resp.read()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.headers["Content-Type"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy, proxy.server_address[1]


def median_scrape(port: int, job: str) -> tuple[float, list[float]]:
    values = [float(v) for _, v in prom_query(port, f'scrape_duration_seconds{{job="{job}"}}[1m]')[0]["values"]]
    return sorted(values[1:])[len(values[1:]) // 2], values  # the first scrape renders every target: left out


def test_real_prometheus_gets_openmetrics_at_the_text_paths_cost(prometheus_bin, tmp_path):
    replay_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    spec = tmp_path / "replay.json"
    spec.write_text(
        json.dumps(
            {
                "/health": {"status": 200},
                "/metrics": {"file": str(FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom")},
            }
        )
    )
    replay = subprocess.Popen(
        [sys.executable, "tests/support/replay.py", "--port", str(replay_port), "--spec", str(spec)],
        cwd=ROOT,
        process_group=0,
    )
    config = tmp_path / "exporter.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{exporter_port}\ndefaults: {{interval: 5s, timeout: 4s, window: 1m}}\n"
        "targets:\n"
        + "".join(
            f"  - {{name: t{i}, engine: vllm, url: 'http://127.0.0.1:{replay_port}/t/{i}'}}\n" for i in range(TARGETS)
        )
    )
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(f"""
global: {{scrape_interval: 2s, scrape_timeout: 2s}}
scrape_configs:
  - job_name: llm
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
  - job_name: llm-text
    static_configs: [{{targets: ["127.0.0.1:PROXY"]}}]
""")
    prometheus = exporter = proxy = None
    try:
        proxy, proxy_port = text_only_proxy(exporter_port)
        prom_config.write_text(prom_config.read_text().replace("PROXY", str(proxy_port)))
        wait_until(lambda: http_get(f"http://127.0.0.1:{replay_port}/health")[0] == 200, 10, what="replay")
        exporter = ExporterProcess(config, exporter_port)
        wait_until(
            lambda: (
                exporter.metrics().count('llm_up{engine="vllm"') == TARGETS
                and 'llm_up{engine="vllm",target="t999"} 1.0' in exporter.metrics()
            ),
            60,
            interval=1,
            what="all targets polled",
        )
        prometheus = start_prometheus(prometheus_bin, prom_config, prom_port, tmp_path)
        wait_until(
            lambda: (
                len(prom_query(prom_port, 'count_over_time(scrape_duration_seconds{job="llm"}[1m])'))
                and float(
                    prom_query(prom_port, 'count_over_time(scrape_duration_seconds{job="llm"}[1m])')[0]["value"][1]
                )
                >= 6
            ),
            60,
            interval=1,
            what="six scrapes",
        )
        # Every target's series reached Prometheus, and every target answered within the last minute. (At one
        # instant a few may be down: on 2 shared cores, Prometheus ingesting 2 x 24 MiB every 2 s starves the
        # one-process replay server of 1,000 targets enough that some polls pass their 4 s timeout.)
        series = prom_query(prom_port, 'count(llm_up{job="llm"})')
        assert float(series[0]["value"][1]) == TARGETS
        up = prom_query(prom_port, 'count(max_over_time(llm_up{job="llm"}[1m]) == 1)')
        assert float(up[0]["value"][1]) == TARGETS
        # Prometheus asked for OpenMetrics and got it (the exporter counts scrapes by format)
        om = float(prom_query(prom_port, 'llm_exporter_scrapes_total{job="llm",format="openmetrics"}')[0]["value"][1])
        assert om >= 5
        prom_seconds, durations = median_scrape(prom_port, "llm")
        prom_text_seconds, text_durations = median_scrape(prom_port, "llm-text")
        text_seconds = sorted(timed_scrape(exporter_port, "text/plain;version=0.0.4") for _ in range(5))[2]
        om_seconds = sorted(
            timed_scrape(exporter_port, "application/openmetrics-text;version=1.0.0") for _ in range(5)
        )[2]
        (tmp_path / "figures.json").write_text(
            json.dumps(
                {
                    "prometheus_openmetrics_median": prom_seconds,
                    "prometheus_text_median": prom_text_seconds,
                    "prometheus_openmetrics": durations,
                    "prometheus_text": text_durations,
                    "curl_text_median": text_seconds,
                    "curl_openmetrics_median": om_seconds,
                }
            )
        )
        print(
            f"\n1,000 targets: Prometheus scrape_duration_seconds median: OpenMetrics {prom_seconds:.3f} s, "
            f"text (proxy) {prom_text_seconds:.3f} s; curl medians of 5: text {text_seconds:.3f} s, "
            f"OpenMetrics {om_seconds:.3f} s"
        )
        # Same path, same cost: within a small factor of the text scrape measured in the same run (the old
        # prometheus_client path was ~50x the text path here).
        assert om_seconds < 3 * text_seconds + 0.05, (om_seconds, text_seconds)
        assert prom_seconds < 2 * prom_text_seconds + 0.1, (prom_seconds, prom_text_seconds)  # was ~10x
    finally:
        for proc in (prometheus, replay):
            if proc is not None:
                kill_tree(proc)
        if exporter is not None:
            exporter.stop()
        if proxy is not None:
            proxy.shutdown()
