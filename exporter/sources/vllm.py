"""vLLM (V0 engine 0.4 → 0.10, V1 engine 0.7 → 0.33): /health and /metrics.

Families are chosen by presence in the payload, never by a version string; the
table below lists, for each unified metric, the vLLM names in order of
preference. Series are grouped per `model_name` and summed over `engine`
(one series per data-parallel engine since 0.8.3); the KV-usage gauge is
averaged instead. Readiness: vLLM binds its port only when ready (connection
refused while loading); /health 200 = ready, 500/503 = engine dead.
"""

from __future__ import annotations

import contextlib
import math
import os

from .. import clock
from ..catalogue import BY_KEY
from ..observation import (
    InfoSample,
    ModelSample,
    ModelState,
    ModelStatus,
    Observation,
    PollError,
    Readiness,
    Reason,
    SeriesSample,
)
from ..promparse import Payload
from .base import PrometheusTextSource, expect_status
from .mapping import MAX_LABEL_VALUE, Feed, Upstream, model_of, prefixes

U = Upstream
MODEL_LABEL = "model_name"

# The mapping: unified metric ← vLLM families, most preferred first, chosen by presence.
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("vllm:num_requests_running", "0.4-0.33"),)),
    Feed("requests_waiting", "gauge", (U("vllm:num_requests_waiting", "0.4-0.33"),)),
    Feed(
        "requests_waiting_by_reason",
        "gauge",
        (U("vllm:num_requests_waiting_by_reason", "0.20-0.33"),),
        required=False,
        label="reason",
    ),
    Feed(
        "kv_cache_usage_ratio",
        "gauge",
        (
            U("vllm:kv_cache_usage_perc", "0.9.2-0.33", combine="mean"),
            U("vllm:gpu_cache_usage_perc", "0.4-0.11", combine="mean"),
        ),
    ),
    Feed(
        "kv_cache_hit_{unit}",
        "counter",
        (
            U("vllm:prefix_cache_hits_total", "0.9.2-0.33", unit="tokens"),
            U("vllm:gpu_prefix_cache_hits_total", "0.7.3-0.11", unit="help"),
        ),
    ),
    Feed(
        "kv_cache_query_{unit}",
        "counter",
        (
            U("vllm:prefix_cache_queries_total", "0.9.2-0.33", unit="tokens"),
            U("vllm:gpu_prefix_cache_queries_total", "0.7.3-0.11", unit="help"),
        ),
    ),
    Feed(
        "kv_cache_hit_tokens_by_tier",
        "counter",
        (U("vllm:prompt_tokens_cached_by_source_total", "0.32+"),),
        required=False,
        label="source",
        label_as="tier",
    ),
    Feed(
        "kv_cache_lifetime_hit_ratio",
        "gauge",
        (U("vllm:gpu_prefix_cache_hit_rate", "V0 0.5-0.10", combine="mean", minimum=0.0),),
        required=False,
    ),
    Feed("prompt_tokens", "counter", (U("vllm:prompt_tokens_total", "0.4-0.33"),)),
    Feed("generation_tokens", "counter", (U("vllm:generation_tokens_total", "0.4-0.33"),)),
    Feed("preemptions", "counter", (U("vllm:num_preemptions_total", "0.4-0.33"),), required=False),
    Feed(
        "requests_finished",
        "counter",
        (U("vllm:request_success_total", "0.4-0.33"),),
        label="finished_reason",
        label_as="reason",
    ),
    Feed(
        "token_queue_latency",
        "histogram",
        (U("vllm:request_queue_time_seconds", "0.6.4-0.33"), U("vllm:time_in_queue_requests", "V0 before 0.6.4")),
    ),
    Feed("time_to_first_token", "histogram", (U("vllm:time_to_first_token_seconds", "0.4-0.33"),)),
    Feed(
        "inter_token_latency",
        "histogram",
        (U("vllm:inter_token_latency_seconds", "0.11-0.33"), U("vllm:time_per_output_token_seconds", "0.4-0.10")),
    ),
    Feed("request_latency", "histogram", (U("vllm:e2e_request_latency_seconds", "0.4-0.33"),)),
    Feed(
        "time_per_output_token",
        "histogram",
        (U("vllm:request_time_per_output_token_seconds", "0.11-0.33"),),
        required=False,
    ),
    Feed("request_prefill", "histogram", (U("vllm:request_prefill_time_seconds", "0.7-0.33"),), required=False),
    Feed("request_decode", "histogram", (U("vllm:request_decode_time_seconds", "0.7-0.33"),), required=False),
    Feed("request_inference", "histogram", (U("vllm:request_inference_time_seconds", "0.7-0.33"),), required=False),
    Feed("request_prompt_length", "histogram", (U("vllm:request_prompt_tokens", "0.4-0.33"),), required=False),
    Feed("request_generation_length", "histogram", (U("vllm:request_generation_tokens", "0.4-0.33"),), required=False),
)
CACHE_INFO = "vllm:cache_config_info"
SLEEP_STATE = "vllm:engine_sleep_state"  # {sleep_state="awake"|"weights_offloaded"|"discard_all"} 0/1, V1 0.11+
LORA_INFO = "vllm:lora_requests_info"  # set-to-current-time gauge; adapter names in comma lists, V1 with LoRA
MODEL_STATES = (ModelState.LOADED, ModelState.SLEEPING)
DOCS = """\
vLLM 0.4 → 0.33 (V0 and V1 engines), families chosen by presence in the payload. Counters appear
with `_total` on the wire in every version; V1 adds `*_created` (not in multiprocess mode). From
0.8.3 series carry `engine` (one per data-parallel engine); the exporter sums over it per
`model_name` (the KV-usage gauge is averaged). The queue histogram is observed when a request
finishes, so the windowed mean lags waiting requests: watch `llm_requests_waiting` for the
present. Bucket bounds are read from the payload (0.32+ lets operators change them). Sleep state
comes from `vllm:engine_sleep_state`; LoRA adapters from the newest `vllm:lora_requests_info`
series (adapter names only: vLLM exposes no per-adapter request counts)."""
CACHE_CONFIG_KEYS = BY_KEY["kv_cache_config_info"].labels  # the cache_config_info labels kept, as catalogued
ENGINE_HEALTHY = "vllm:engine_healthy"  # {engine="<rank>"} 1/0 with --enable-fault-tolerance (0.33)
# Only these families are parsed: the parser skips every other family's block unread.
EXTRA_FAMILIES = (CACHE_INFO, SLEEP_STATE, LORA_INFO, ENGINE_HEALTHY, "process_start_time_seconds")
METRICS_PREFIXES = prefixes(MAPPING, *EXTRA_FAMILIES)


class VllmSource(PrometheusTextSource):
    engine = "vllm"
    title = "vLLM"
    mapping = MAPPING
    model_label = MODEL_LABEL
    metrics_prefix = "vllm:"
    detect_probe = ("/version", "version")
    detect_priority = 1000  # a generic /version answer: tried after every more specific probe
    docs = DOCS
    default_port = 8000
    process_programs = ("vllm",)
    hint = "not a vLLM server?"
    extra_families = EXTRA_FAMILIES
    model_states = MODEL_STATES

    def is_engine_process(self, argv: tuple[str, ...]) -> bool:
        return is_vllm(argv)

    async def not_ready(self) -> Observation | None:
        """Loading while its process runs but its port refuses; down while /health says the engine died."""
        try:
            health = await self.http.get("/health")
        except PollError as error:
            # vLLM binds its port only once the model is loaded: refused while its process runs is loading.
            if error.reason is not Reason.CONNECT:
                raise
            observation = Observation(Readiness.LOADING, model_states=MODEL_STATES + (ModelState.LOADING,))
            self.locate_process(observation)
            if observation.process_pid is None and self.same_host:
                info = self.process_by_port()
                if info is not None:
                    observation.process_pid, observation.process_start_time = info.pid, info.start_time
                    observation.process_start_basis = "proc"
            if observation.process_pid is None:
                raise  # nothing running: down, as before
            observation.lifecycle[""] = ModelStatus(
                ModelState.LOADING,
                model=self.served_model,
                process_start=observation.process_start_time,
                pid=observation.process_pid,
            )
            return observation
        if health.status in (500, 503):
            return Observation(Readiness.DOWN, notices=(f"/health answered {health.status}: engine is dead",))
        expect_status(health, "/health")
        return None

    def extend(self, observation: Observation, payload: Payload) -> None:
        observation.info = self.cache_config_info(payload)
        self._timing(payload, observation)
        lora_adapters(payload, observation.models)
        observation.series.extend(engine_health(payload))

    def model_status(self, observation: Observation, payload: Payload) -> ModelStatus:
        model = self.model_name(observation.models)
        return ModelStatus(
            ModelState.SLEEPING if model in sleeping_models(payload) else ModelState.LOADED,
            model=model,
            process_start=observation.process_start_time,
            ready_time=observation.engine_ready_time,
            pid=observation.process_pid,
        )

    @staticmethod
    def cache_config_info(payload: Payload) -> list[InfoSample]:
        for labels, _ in payload.get(CACHE_INFO)[:1]:
            pairs = tuple((key, str(labels[key])[:100]) for key in CACHE_CONFIG_KEYS if key in labels)
            return [InfoSample("kv_cache_config_info", pairs)]
        return []

    def _timing(self, payload: Payload, observation: Observation) -> None:
        start = payload.get("process_start_time_seconds")
        started = start[0][1] if start and math.isfinite(start[0][1]) and start[0][1] > 0 else None
        if started is not None:
            observation.process_start_time = clock.from_wall(started)
            observation.process_start_basis = "payload"
        self.locate_process(observation)
        created = [
            value
            for name, samples in payload.samples.items()
            if name.endswith("_created")
            for _, value in samples
            if math.isfinite(value) and value > 0
        ]
        if created:
            # Stat loggers are created right after the engine is ready (0.10+, single API server);
            # the families read here are created within about a millisecond of each other.
            observation.engine_ready_time = clock.from_wall(min(created))
        # The engine's own stamps as it wrote them identify its life (a clock step must not look like a restart).
        identity = started
        if identity is None and created:
            identity = min(created)
        if identity is not None:
            observation.instance_id = repr(identity)


def sleeping_models(payload: Payload) -> set[str]:
    """Models with an engine that is not awake (vllm:engine_sleep_state{sleep_state="awake"} 0)."""
    return {
        model_of(labels, MODEL_LABEL)
        for labels, value in payload.get(SLEEP_STATE)
        if labels.get("sleep_state") == "awake" and value == 0
    }


def lora_adapters(payload: Payload, models: dict[str, ModelSample]) -> None:
    """LoRA adapters from vllm:lora_requests_info: the newest series (its value is the time it was
    set) lists the adapters with running and waiting requests, comma-separated, and max_lora. vLLM
    exposes adapter names only, not request counts: 1 per adapter listed. The family has no model
    label: it applies to every model of the server (one, in practice)."""
    newest = max(payload.get(LORA_INFO), key=lambda pair: pair[1], default=None)
    if newest is None or not models:
        return
    labels = newest[0]
    for sample in models.values():
        for label, key in (
            ("running_lora_adapters", "lora_adapter_running"),
            ("waiting_lora_adapters", "lora_adapter_waiting"),
        ):
            names = [n.strip()[:MAX_LABEL_VALUE] for n in labels.get(label, "").split(",") if n.strip()]
            for name in names[:64]:
                sample.set(key, 1.0, adapter=name)
            if key == "lora_adapter_running":
                sample.set("lora_adapters_running", float(len(names)))
        with contextlib.suppress(ValueError):
            sample.set("lora_adapters_max", float(labels.get("max_lora", "")))


def engine_health(payload: Payload) -> list[SeriesSample]:
    """`vllm:engine_healthy{engine=rank}` (0.33, fault tolerance on): one series per data-parallel rank, 1 when
    the API server's cached state says healthy; no model label upstream, so a target-level series."""
    out = []
    for labels, value in payload.get(ENGINE_HEALTHY)[:256]:
        if value in (0.0, 1.0):
            out.append(SeriesSample("engine_healthy", (("rank", str(labels.get("engine", ""))[:20]),), value))
    return out


def is_vllm(argv: tuple[str, ...]) -> bool:
    """`vllm serve ...` or `python -m vllm.entrypoints.openai.api_server ...`."""
    return os.path.basename(argv[0]) == "vllm" or any(a.startswith("vllm.entrypoints") for a in argv[1:4])
