"""A fleet: three real exporter processes, each polling its own replayed vLLM 0.32 (real captured payloads,
the same target name `vllm`, different values), scraped by a real Prometheus (Debian's package) with the
shipped rules. Per-replica rule series stay apart and each equals that replica's truth from its payloads;
fleet aggregates are Σ/Σ over the three, not the mean of three ratios; an alert names exactly the replica
that is down; every dashboard query on engine series returns one series per replica."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.real.test_prometheus_e2e import dashboard_expr, prom_query, replay_set
from tests.support.net import ExporterProcess, free_port, http_get, kill_tree, start_prometheus, wait_until

pytestmark = [pytest.mark.prometheus]
VLLM = FIXTURES / "vllm-real"
# each replica's first and last payload (a vLLM that has served: the prefix-cache counters exist)
START = {"a": "load", "b": "after-load", "c": "load"}
END = {"a": "after-prefix", "b": "after-prefix", "c": "after-load"}


def query_at(port: int, expr: str, at: float) -> list:
    """`expr` evaluated at `at` (a recorded series' evaluation time), as the rule was."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def counter(phase: str, name: str) -> float:
    text = (VLLM / f"v0.32.0-metrics-{phase}.prom").read_text()
    return float(re.search(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))


def truth(replica: str) -> tuple[float, float]:
    """(Δ prefix-cache hits, Δ prefix-cache queries) of a replica, from its payloads."""
    start, end = START[replica], END[replica]
    return (
        counter(end, "prefix_cache_hits_total") - counter(start, "prefix_cache_hits_total"),
        counter(end, "prefix_cache_queries_total") - counter(start, "prefix_cache_queries_total"),
    )


def test_three_replicas_keep_their_identity_and_fleet_rules_are_ratios_of_sums(prometheus_bin, tmp_path):
    replays, exporters, prometheus = {}, {}, None
    ports = {name: (free_port(), free_port()) for name in START}  # replica → (engine, exporter)
    prom_port = free_port()
    try:
        for name, (engine_port, exporter_port) in ports.items():
            spec = tmp_path / f"replay-{name}.json"
            spec.write_text(
                json.dumps(
                    {
                        "/health": {"status": 200},
                        "/metrics": {"file": str(VLLM / f"v0.32.0-metrics-{START[name]}.prom")},
                    }
                )
            )
            replays[name] = subprocess.Popen(
                [sys.executable, "tests/support/replay.py", "--port", str(engine_port), "--spec", str(spec)],
                cwd=ROOT,
                process_group=0,
            )
            wait_until(lambda p=engine_port: http_get(f"http://127.0.0.1:{p}/health")[0] == 200, 10, what="replay")
            config = tmp_path / f"exporter-{name}.yaml"
            config.write_text(
                f"listen: 127.0.0.1:{exporter_port}\ntargets:\n"
                f"  - {{name: vllm, engine: vllm, url: 'http://127.0.0.1:{engine_port}', interval: 500ms}}\n"
            )
            exporters[name] = ExporterProcess(config, exporter_port)
        instance = {name: f"127.0.0.1:{exporter_port}" for name, (_, exporter_port) in ports.items()}
        rules = ROOT / "deploy" / "prometheus" / "llm-exporter.rules.yml"
        prom_config = tmp_path / "prometheus.yml"
        targets = ", ".join(f'"{address}"' for address in instance.values())
        prom_config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f'rule_files: ["{rules}"]\n'
            "scrape_configs:\n"
            "  - job_name: llm\n"
            f"    static_configs: [{{targets: [{targets}], labels: {{namespace: serving}}}}]\n"
        )
        prometheus = start_prometheus(prometheus_bin, prom_config, prom_port, tmp_path)
        # several scrapes of each replica's first payload (Prometheus' first scrape comes a few seconds in)
        wait_until(
            lambda: len(prom_query(prom_port, "count_over_time(llm_kv_cache_query_tokens_total[1m]) >= 3")) == 3,
            30,
            what="three scrapes of every replica",
        )
        for name, (engine_port, _) in ports.items():
            replay_set(engine_port, "/metrics", (VLLM / f"v0.32.0-metrics-{END[name]}.prom").read_text())
        time.sleep(5)  # polls, scrapes and rule evaluations after the change

        # ---- per replica: three distinct series, each its own Δhits/Δqueries. The series are seconds old in
        # a 5 m window, so Prometheus extrapolates a counter starting at 0 (hits) less than one starting
        # above 0 (queries): rate ratios sit within a few % of Δhits/Δqueries here (exactly equal once the
        # series are older than the window). Exactness is checked against the instance's own rates.
        results = prom_query(prom_port, 'replica:llm_kv_cache_hit_ratio:ratio_5m{target="vllm"}')
        by_instance = {r["metric"]["instance"]: (r["metric"], float(r["value"][1])) for r in results}
        assert len(by_instance) == len(results)  # never two series for one replica
        evaluated = results[0]["value"][0]  # one rule group: one evaluation time
        direct = {
            r["metric"]["instance"]: (r["metric"], float(r["value"][1]))
            for r in query_at(
                prom_port,
                'rate(llm_kv_cache_hit_tokens_total{target="vllm"}[5m])'
                ' / rate(llm_kv_cache_query_tokens_total{target="vllm"}[5m])',
                evaluated,
            )
        }
        assert set(by_instance) == set(instance.values())
        for name, address in instance.items():
            labels, value = by_instance[address]
            assert labels["namespace"] == "serving" and labels["job"] == "llm" and labels["model"] == "tiny-llama"
            # (a scrape can land after the evaluation that its timestamp precedes: a hair of difference)
            assert value == pytest.approx(direct[address][1], rel=0.02), name
            hits, queries = truth(name)
            assert value == pytest.approx(hits / queries, rel=0.1, abs=1e-9), name
        assert len({round(v, 3) for _, v in by_instance.values()}) == 3  # different values, kept apart

        # ---- fleet: Σ hits / Σ queries over the three, not the mean of the three ratios
        total_hits = sum(truth(name)[0] for name in START)
        total_queries = sum(truth(name)[1] for name in START)
        fleet_expr = (
            'sum(rate(llm_kv_cache_hit_tokens_total{target="vllm"}[5m]))'
            ' / sum(rate(llm_kv_cache_query_tokens_total{target="vllm"}[5m]))'
        )
        mean_of_ratios = sum(v for _, v in by_instance.values()) / 3
        for expr in (
            'namespace_target_model:llm_kv_cache_hit_ratio:ratio_5m{namespace="serving",target="vllm"}',
            'model:llm_kv_cache_hit_ratio:ratio_5m{model="tiny-llama"}',
        ):
            (result,) = prom_query(prom_port, expr)
            fleet = float(result["value"][1])
            (sums,) = query_at(prom_port, fleet_expr, result["value"][0])
            assert fleet == pytest.approx(float(sums["value"][1]), rel=0.02), expr
            assert fleet == pytest.approx(total_hits / total_queries, rel=0.1), expr
            assert abs(fleet - mean_of_ratios) > 0.1, (fleet, mean_of_ratios)  # replica c (ratio 0) weighs 65 tokens

        # ---- every dashboard query on engine series: one series per replica, legends naming it
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "llm-exporter-dashboard.json").read_text())
        checked = 0
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if "$instance" not in target["expr"]:
                    continue  # GPU panels (filtered by node and gpu)
                assert "{{instance}}" in target["legendFormat"], panel["title"]
                results = prom_query(prom_port, dashboard_expr(target["expr"]))
                if not results:
                    continue  # a signal this vLLM payload does not carry (LoRA, load durations)
                assert {r["metric"].get("instance") for r in results} == set(instance.values()), panel["title"]
                checked += 1
        assert checked >= 15

        # ---- an alert for exactly the replica that is down
        kill_tree(replays.pop("c"))

        def pending():
            return prom_query(prom_port, 'ALERTS{alertname="LLMTargetDown"}')

        wait_until(pending, 20, what="LLMTargetDown pending")
        (alert,) = pending()
        assert alert["metric"]["instance"] == instance["c"] and alert["metric"]["target"] == "vllm"
        assert alert["metric"]["namespace"] == "serving"
    finally:
        for proc in (prometheus, *replays.values()):
            if proc is not None:
                kill_tree(proc)
        for exporter in exporters.values():
            exporter.stop()
