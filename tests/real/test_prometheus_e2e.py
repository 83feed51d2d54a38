"""A real Prometheus (Debian's package) with the shipped rules scrapes a real llm-exporter, which polls
a real llama-server and a replayed vLLM; recorded expositions of the exporter on a real H100 stand in
for the GPU box. Every Grafana dashboard query must return data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.real.test_llamacpp_real import LlamaServer
from tests.support.net import (
    ExporterProcess,
    free_port,
    http_get,
    kill_tree,
    start_prometheus,
    wait_until,
)

pytestmark = [pytest.mark.real_engine, pytest.mark.prometheus]
VLLM = FIXTURES / "vllm-real"


def prom_query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def prom_api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())["data"]


def replay_set(port: int, path: str, body: str) -> None:
    data = json.dumps({"path": path, "body": body, "headers": {"Content-Type": "text/plain; version=0.0.4"}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/_replay", data=data), timeout=5)


def dashboard_expr(expr: str) -> str:
    """A panel's query with every variable set to All (as the dashboard's allValue) and Grafana's rate
    interval set."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$(\w+)", lambda m: ".+" if m.group(1) == "target" else ".*", expr)


def test_prometheus_scrapes_rules_and_dashboard(llama_server_bin, tiny_gguf, prometheus_bin, promtool, tmp_path):
    llama_port, exporter_port, replay_port, prom_port = free_port(), free_port(), free_port(), free_port()
    spec = tmp_path / "replay.json"
    spec.write_text(
        json.dumps(
            {
                "/health": {"status": 200},
                "/metrics": {"file": str(VLLM / "v0.32.0-metrics-idle.prom")},
                "/gpu/metrics": {"file": str(FIXTURES / "nvml" / "nvml-metrics.prom")},
                "/gpu-join/metrics": {"file": str(FIXTURES / "nvml" / "join-metrics.prom")},
                # Hopper GPM counters under a matmul, and a CUDA llama-server with per-process utilisation
                # and llm_gpu_target_info (tests/fixtures/nvml-gpm)
                "/gpu-gpm/metrics": {"file": str(FIXTURES / "nvml-gpm" / "matmul.prom")},
                "/gpu-llama/metrics": {"file": str(FIXTURES / "nvml-gpm" / "llama-join.prom")},
                # dcgm-exporter on a node whose GPU 0 is held by the llama pod (tests/fixtures/dcgm-exporter)
                "/dcgm/metrics": {"file": str(FIXTURES / "dcgm-exporter" / "kubernetes-pod.prom")},
                "/lora/health": {"status": 200},
                "/lora/metrics": {"file": str(VLLM / "v0.32.0-metrics-lora-busy.prom")},
            }
        )
    )
    replay = subprocess.Popen(
        [sys.executable, "tests/support/replay.py", "--port", str(replay_port), "--spec", str(spec)],
        cwd=ROOT,
        process_group=0,
    )
    config = tmp_path / "exporter.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{exporter_port}
targets:
  - name: llama
    engine: llamacpp
    url: http://127.0.0.1:{llama_port}
    interval: 200ms
    timeout: 190ms
    process: {{cmdline: "llama-server .*--port {llama_port} "}}
  - name: vllm
    engine: vllm
    url: http://127.0.0.1:{replay_port}
    interval: 1s
  - name: vllm-lora
    engine: vllm
    url: http://127.0.0.1:{replay_port}/lora
    interval: 1s
""")
    rules = ROOT / "deploy" / "prometheus" / "llm-exporter.rules.yml"
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: llm-exporter
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
    # as a PodMonitor would label the llama sidecar's series (one model per pod for the dcgm join)
    metric_relabel_configs:
      - {{source_labels: [target], regex: llama, target_label: namespace, replacement: serving}}
      - {{source_labels: [target], regex: llama, target_label: pod, replacement: llama-0}}
  - job_name: dcgm-exporter
    metrics_path: /dcgm/metrics
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{replay_port}"]}}]
  - job_name: llm-exporter-gpu-recorded
    metrics_path: /gpu/metrics
    static_configs: [{{targets: ["127.0.0.1:{replay_port}"]}}]
  - job_name: llm-exporter-gpu-join-recorded
    metrics_path: /gpu-join/metrics
    static_configs: [{{targets: ["127.0.0.1:{replay_port}"]}}]
  - job_name: llm-exporter-gpm-recorded
    metrics_path: /gpu-gpm/metrics
    static_configs: [{{targets: ["127.0.0.1:{replay_port}"]}}]
  - job_name: llm-exporter-gpu-llama-recorded
    metrics_path: /gpu-llama/metrics
    static_configs: [{{targets: ["127.0.0.1:{replay_port}"]}}]
""")
    server = LlamaServer(llama_server_bin, tiny_gguf, llama_port, tmp_path / "llama-server.log")
    prometheus = exporter = None
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{replay_port}/health")[0] == 200, 10, what="replay")
        exporter = ExporterProcess(config, exporter_port)
        server.start()
        prometheus = start_prometheus(prometheus_bin, prom_config, prom_port, tmp_path)

        # ---- load: llama.cpp queueing and prefix reuse; vLLM's recorded phases in order
        prefix = "You are a helpful assistant for a monitoring project. " * 6
        threads = [threading.Thread(target=server.complete, args=(prefix + f"Question {i}?", 48)) for i in range(6)]
        for thread in threads:
            thread.start()
        for phase in ("load", "after-load", "after-prefix"):
            time.sleep(3)
            replay_set(replay_port, "/metrics", (VLLM / f"v0.32.0-metrics-{phase}.prom").read_text())
        for thread in threads:
            thread.join(120)
        for i in range(3):
            server.complete(prefix + f"Follow-up {i}?", 8)
        time.sleep(6)  # several scrapes and rule evaluations after the last change

        # ---- the exporter's target is up (and the recorded GPU ones)
        targets = prom_api(prom_port, "/api/v1/targets")["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {
            "llm-exporter": "up",
            "llm-exporter-gpu-recorded": "up",
            "llm-exporter-gpu-join-recorded": "up",
            "llm-exporter-gpm-recorded": "up",
            "llm-exporter-gpu-llama-recorded": "up",
            "dcgm-exporter": "up",
        }

        # ---- headline series with the expected labels
        live = 'job="llm-exporter"'  # the recorded GPU captures also carry target="llama" series
        for expr, labels in [
            (
                f'llm_model_last_load_duration_seconds{{{live},target="llama",basis="process_start"}}',
                {"engine": "llamacpp"},
            ),
            (
                f'llm_model_last_load_duration_seconds{{{live},target="vllm",basis="engine_timestamps"}}',
                {"engine": "vllm"},
            ),
            (f'llm_token_queue_latency_seconds_count{{{live},target="llama"}}', {"model": "tiny-llama.gguf"}),
            (f'llm_token_queue_latency_seconds_bucket{{{live},target="vllm",le="0.3"}}', {"model": "tiny-llama"}),
            (f'llm_token_queue_latency_mean_seconds{{{live},target="vllm"}}', {"model": "tiny-llama"}),
            (f'llm_kv_cache_hit_ratio{{{live},target="llama",unit="tokens"}}', {"model": "tiny-llama.gguf"}),
            (f'llm_kv_cache_hit_ratio{{{live},target="vllm",unit="tokens"}}', {"model": "tiny-llama"}),
            (f'llm_requests_waiting{{{live},target="vllm"}}', {"engine": "vllm"}),
        ]:
            result = prom_query(prom_port, expr)
            assert len(result) == 1, (expr, result)
            assert all(result[0]["metric"].get(k) == v for k, v in labels.items()), (expr, result[0]["metric"])
        # the hit ratio Prometheus sees for vLLM is the recorded phases' Δhits/Δqueries
        ratio = float(prom_query(prom_port, f'llm_kv_cache_hit_ratio{{{live},target="vllm"}}')[0]["value"][1])
        assert ratio == pytest.approx(1280 / 2524, rel=1e-9)  # window: idle (0, 0) → after-prefix

        # ---- rules loaded and evaluating without errors
        groups = prom_api(prom_port, "/api/v1/rules")["groups"]
        assert {g["name"] for g in groups} == {
            "llm-exporter.replica",
            "llm-exporter.fleet",
            "llm-exporter.gpu",
            "llm-exporter.kubernetes",
            "llm-exporter.dcgm",
            "llm-exporter.alerts",
        }
        for group in groups:
            for rule in group["rules"]:
                assert rule["health"] == "ok" and not rule.get("lastError"), rule
        assert prom_query(prom_port, "replica:llm_kv_cache_hit_ratio:ratio_5m")
        assert prom_query(prom_port, "model:llm_kv_cache_hit_ratio:ratio_5m")
        # dcgm-exporter's GPU 0 (87 %, 61184 MiB, held by pod serving/llama-0) joins the llama sidecar's model;
        # its idle GPU 1 (no pod) joins nothing
        (util,) = prom_query(prom_port, "namespace_pod_gpu:dcgm_gpu_utilization:ratio")
        assert util["metric"]["pod"] == "llama-0" and util["metric"]["gpu"] == "0", util
        assert util["metric"]["target"] == "llama" and util["metric"]["model"] == "tiny-llama.gguf", util
        assert float(util["value"][1]) == pytest.approx(0.87)
        (memory,) = prom_query(prom_port, "namespace_target_model:dcgm_fb_used_bytes:sum")
        assert memory["metric"] == {
            "__name__": "namespace_target_model:dcgm_fb_used_bytes:sum",
            "namespace": "serving",
            "target": "llama",
            "model": "tiny-llama.gguf",
        }, memory
        assert float(memory["value"][1]) == 61184 * 1048576

        # ---- every dashboard query returns data
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "llm-exporter-dashboard.json").read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = dashboard_expr(target["expr"])
                if not prom_query(prom_port, expr):
                    empty.append((panel["title"], expr))
        assert not empty, empty

        # ---- promtool check metrics on the exporter's own output
        _, body = http_get(f"http://127.0.0.1:{exporter_port}/metrics")
        out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    finally:
        for proc in (prometheus, replay):
            if proc is not None:
                kill_tree(proc)
        if exporter is not None:
            exporter.stop()
        server.stop()
