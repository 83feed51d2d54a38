"""Writes llm-exporter-dashboard.json (edit this, then run it: `python deploy/grafana/generate.py`).

A fleet dashboard: variables job, namespace, instance, pod, target and model filter every engine panel,
node and gpu every GPU panel; every legend names the replica (instance and pod). Panels compute from the
raw series, so the dashboard works without the recording rules, except the two joules-per-token panels
(their description says so). llama.cpp has no queue buckets: its quantile lines would be NaN, so
quantile queries keep only numbers (`>= 0`) and the mean estimate is drawn beside them.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

OUT = pathlib.Path(__file__).with_name("llm-exporter-dashboard.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
# Engine series of the selected replicas; T: the same without model (target-level series).
T = 'job=~"$job",namespace=~"$namespace",instance=~"$instance",pod=~"$pod",target=~"$target"'
S = T + ',model=~"$model"'
G = 'instance=~"$node",gpu=~"$gpu"'
REPLICA = "{{instance}} {{pod}} · {{target}}"
MODEL = REPLICA + " · {{model}}"
GPU = "{{instance}} GPU {{gpu}}"
RULES_NEEDED = "Needs the recording rules (deploy/prometheus/llm-exporter.rules.yml)."


def variable(name: str, label: str, query: str, all_value: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
    }


VARIABLES = [
    {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
    variable("job", "Job", "label_values(llm_up, job)", ".*"),
    variable("namespace", "Namespace", 'label_values(llm_up{job=~"$job"}, namespace)', ".*"),
    variable("instance", "Instance", 'label_values(llm_up{job=~"$job",namespace=~"$namespace"}, instance)', ".*"),
    variable("pod", "Pod", 'label_values(llm_up{job=~"$job",namespace=~"$namespace"}, pod)', ".*"),
    variable("target", "Target", 'label_values(llm_up{job=~"$job",namespace=~"$namespace"}, target)', ".+"),
    variable("model", "Model", 'label_values(llm_model_state{target=~"$target"}, model)', ".*"),
    variable("node", "GPU node", "label_values(llm_gpu_memory_total_bytes, instance)", ".*"),
    variable("gpu", "GPU", 'label_values(llm_gpu_memory_total_bytes{instance=~"$node"}, gpu)', ".*"),
]


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def panel(
        self,
        title: str,
        description: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 8,
        height: int = 8,
    ) -> None:
        if self.x + width > 24:
            self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DS}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        self.x += width
        self.row_height = max(self.row_height, height)


def quantile(q: str, metric: str, selector: str = S) -> str:
    return f"histogram_quantile({q}, rate({metric}_bucket{{{selector}}}[$__rate_interval])) >= 0"


def build() -> dict[str, Any]:
    d = Layout()
    d.row("Headline signals")
    d.panel(
        "Model load time",
        "The last load of each model: process start, on-demand load or wake to ready to serve.",
        [(f"llm_model_last_load_duration_seconds{{{T}}}", MODEL + " {{kind}} ({{basis}})")],
        "s",
        "stat",
    )
    d.panel(
        "Token queue latency",
        "Time requests waited for a batch slot. p50/p95 from the engine's buckets; the mean for engines "
        "without buckets (llama.cpp's estimate).",
        [
            (quantile("0.5", "llm_token_queue_latency_seconds"), "p50 " + MODEL),
            (quantile("0.95", "llm_token_queue_latency_seconds"), "p95 " + MODEL),
            (f"llm_token_queue_latency_mean_seconds{{{S}}}", "mean " + MODEL),
        ],
        "s",
    )
    d.panel(
        "KV-cache hit ratio",
        "Prompt tokens served from the prefix cache / prompt tokens looked up: the exporter's window and "
        "Prometheus' 5 m rate ratio.",
        [
            (f"llm_kv_cache_hit_ratio{{{S}}}", "window " + MODEL),
            (
                f"rate(llm_kv_cache_hit_tokens_total{{{S}}}[5m]) / rate(llm_kv_cache_query_tokens_total{{{S}}}[5m])",
                "5m " + MODEL,
            ),
        ],
        "percentunit",
    )
    d.panel(
        "KV-cache usage",
        "Fraction of the KV cache in use.",
        [(f"llm_kv_cache_usage_ratio{{{S}}}", MODEL)],
        "percentunit",
    )
    d.panel("Ready", "1 when the engine serves.", [(f"llm_ready{{{T}}}", REPLICA)], "short", "stat")
    d.panel(
        "Engine restarts (1h)",
        "Engine process restarts seen by the exporter.",
        [(f"increase(llm_engine_restarts_total{{{T}}}[1h])", REPLICA)],
        "short",
        "stat",
    )

    d.row("Latency per request")
    for title, description, metric in (
        (
            "Time to first token",
            "From the engines' TTFT histograms (vLLM, SGLang, TGI, TensorRT-LLM).",
            "llm_time_to_first_token_seconds",
        ),
        ("Inter-token latency", "Time between two output tokens of one request.", "llm_inter_token_latency_seconds"),
        ("End-to-end request latency", "Arrival to last token, per finished request.", "llm_request_latency_seconds"),
    ):
        d.panel(
            f"{title} p50 / p95",
            description,
            [(quantile(q, metric), f"p{name} " + MODEL) for q, name in (("0.5", "50"), ("0.95", "95"))],
            "s",
        )

    d.row("Throughput")
    d.panel(
        "Generated tokens/s",
        "Output tokens per second.",
        [(f"rate(llm_generation_tokens_total{{{S}}}[$__rate_interval])", MODEL)],
    )
    d.panel(
        "Prompt tokens/s",
        "Prompt tokens per second.",
        [(f"rate(llm_prompt_tokens_total{{{S}}}[$__rate_interval])", MODEL)],
    )
    d.panel(
        "Finished requests/s by reason",
        "stop, length, abort, ... as the engine reports them.",
        [(f"rate(llm_requests_finished_total{{{S}}}[$__rate_interval])", MODEL + " {{reason}}")],
    )
    d.panel(
        "Preemptions/s",
        "Requests the scheduler preempted (KV cache full).",
        [(f"rate(llm_preemptions_total{{{S}}}[$__rate_interval])", MODEL)],
    )

    d.row("Queue and running")
    d.panel("Requests running", "In a batch slot now.", [(f"llm_requests_running{{{S}}}", MODEL)])
    d.panel("Requests waiting", "Waiting for a batch slot now.", [(f"llm_requests_waiting{{{S}}}", MODEL)])
    d.panel(
        "LoRA adapters",
        "Adapters with requests running, and the most one batch can hold (vLLM).",
        [
            (f"llm_lora_adapters_running{{{S}}}", "running " + MODEL),
            (f"llm_lora_adapters_max{{{S}}}", "max " + MODEL),
        ],
    )

    d.row("Model lifecycle")
    d.panel(
        "Model states",
        "Each model's state per replica over time.",
        [(f"llm_model_state{{{S}}} == 1", MODEL + " {{state}}")],
        "short",
        "state-timeline",
        width=12,
    )
    d.panel(
        "Load duration p50 / p95",
        "Over every load since the exporter started, by kind (the rules keep the last hour's quantiles).",
        [
            (
                f"histogram_quantile(0.5, llm_model_load_duration_seconds_bucket{{{S}}}) >= 0",
                "p50 " + MODEL + " {{kind}}",
            ),
            (
                f"histogram_quantile(0.95, llm_model_load_duration_seconds_bucket{{{S}}}) >= 0",
                "p95 " + MODEL + " {{kind}}",
            ),
        ],
        "s",
        width=6,
    )
    d.panel(
        "Loads per hour",
        "Loads by kind (start, load, wake) in the last hour.",
        [(f"increase(llm_model_loads_total{{{S}}}[1h])", MODEL + " {{kind}}")],
        width=6,
    )

    d.row("GPUs")
    d.panel(
        "GPU utilisation", "Time any kernel ran (NVML).", [(f"llm_gpu_utilization_ratio{{{G}}}", GPU)], "percentunit"
    )
    d.panel(
        "GPU memory used",
        "Used / total device memory.",
        [(f"llm_gpu_memory_used_bytes{{{G}}} / llm_gpu_memory_total_bytes{{{G}}}", GPU)],
        "percentunit",
    )
    d.panel("GPU power", "Power draw.", [(f"llm_gpu_power_watts{{{G}}}", GPU)], "watt")
    d.panel(
        "GPU memory per model (GPU ↔ model join)",
        "Device memory of each engine target's processes, joined by the exporter.",
        [
            (
                f'sum by (instance, target, model, gpu) (llm_gpu_process_memory_used_bytes{{model!="",{G},target=~"$target"}})',
                GPU + " · {{target}} · {{model}}",
            )
        ],
        "bytes",
    )
    d.panel("GPU temperature", "Core temperature.", [(f"llm_gpu_temperature_celsius{{{G}}}", GPU)], "celsius")
    d.panel(
        "GPU faults (1h)",
        "XID errors by code, NVLink errors and remapped rows in the last hour (0 where none).",
        [
            (
                f"sum by (instance, gpu, xid) (increase(llm_gpu_xid_errors_total{{{G}}}[1h]))"
                f" or (0 * max by (instance, gpu) (llm_gpu_memory_total_bytes{{{G}}}))",
                GPU + " XID {{xid}}",
            ),
        ],
    )

    d.row("GPU efficiency")
    d.panel(
        "SM active / occupancy",
        "Share of SMs busy and of warps resident over each poll (NVML GPM; Hopper and newer). A tiny kernel "
        "keeps 'utilisation' high and SM active near 0.",
        [
            (f"llm_gpu_sm_active_ratio{{{G}}}", "SM active " + GPU),
            (f"llm_gpu_sm_occupancy_ratio{{{G}}}", "occupancy " + GPU),
        ],
        "percentunit",
    )
    d.panel(
        "Tensor and DRAM activity",
        "Tensor pipes (prefill, matmul-bound) against DRAM bandwidth (decode, memory-bound).",
        [
            (f"llm_gpu_tensor_active_ratio{{{G}}}", "tensor " + GPU),
            (f"llm_gpu_dram_bandwidth_utilization_ratio{{{G}}}", "DRAM " + GPU),
        ],
        "percentunit",
    )
    d.panel(
        "GPU SM utilisation per model",
        "SM utilisation of each engine target's own processes (per-process NVML), summed per model.",
        [
            (
                f'sum without (pid) (llm_gpu_process_sm_utilization_ratio{{model!="",{G},target=~"$target"}})',
                GPU + " · {{target}} · {{model}}",
            )
        ],
        "percentunit",
    )
    d.panel(
        "Joules per generated token",
        "GPU energy / output tokens over 5 m, for GPUs owned by one target. " + RULES_NEEDED,
        [
            (
                'replica:llm_gpu_energy_joules_per_generation_token:ratio_5m{instance=~"$node",target=~"$target",model=~"$model"}',
                "{{instance}} · {{target}} · {{model}}",
            )
        ],
        "J",
        width=12,
    )
    d.panel(
        "Joules per prompt token",
        "GPU energy / prompt tokens over 5 m, for GPUs owned by one target. " + RULES_NEEDED,
        [
            (
                'replica:llm_gpu_energy_joules_per_prompt_token:ratio_5m{instance=~"$node",target=~"$target",model=~"$model"}',
                "{{instance}} · {{target}} · {{model}}",
            )
        ],
        "J",
        width=12,
    )

    d.row("GPUs per pod (dcgm-exporter)")
    dcgm = 'namespace=~"$namespace",target=~"$target",model=~"$model"'
    dcgm_note = (
        " Joins NVIDIA dcgm-exporter's per-GPU series (its Kubernetes pod labels) to the sidecars' models by"
        " namespace and pod; empty where dcgm-exporter does not run. " + RULES_NEEDED
    )
    d.panel(
        "GPU utilisation per pod",
        "dcgm-exporter's GPU utilisation of each GPU a model's pod holds." + dcgm_note,
        [
            (
                f'namespace_pod_gpu:dcgm_gpu_utilization:ratio{{{dcgm},pod=~"$pod"}}',
                "{{namespace}}/{{pod}} GPU {{gpu}} · {{target}} · {{model}}",
            )
        ],
        "percentunit",
    )
    d.panel(
        "GPU utilisation per model",
        "Mean over the GPUs of every pod serving the model (Σ utilisation / GPUs)." + dcgm_note,
        [(f"namespace_target_model:dcgm_gpu_utilization:ratio{{{dcgm}}}", "{{namespace}} · {{target}} · {{model}}")],
        "percentunit",
    )
    d.panel(
        "GPU memory per model",
        "Framebuffer used on the GPUs of every pod serving the model, summed." + dcgm_note,
        [(f"namespace_target_model:dcgm_fb_used_bytes:sum{{{dcgm}}}", "{{namespace}} · {{target}} · {{model}}")],
        "bytes",
    )

    d.row("Exporter health")
    d.panel("Targets up", "1 when the exporter's last poll of the target succeeded.", [(f"llm_up{{{T}}}", REPLICA)])
    d.panel("Poll duration", "How long each poll took.", [(f"llm_exporter_poll_duration_seconds{{{T}}}", REPLICA)], "s")
    d.panel(
        "Failed polls",
        "Share of polls that failed over 10 m (all reasons).",
        [
            (
                f"sum without (reason) (rate(llm_exporter_poll_errors_total{{{T}}}[10m]))"
                f" / rate(llm_exporter_polls_total{{{T}}}[10m])",
                REPLICA,
            )
        ],
        "percentunit",
    )
    return {
        "title": "LLM inference (llm-exporter)",
        "uid": "llm-exporter",
        "schemaVersion": 39,
        "version": 3,
        "editable": True,
        "tags": ["llm", "vllm", "llama.cpp", "gpu"],
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": VARIABLES},
        "panels": d.panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
