"""vLLM (V0 engine 0.4 → 0.10, V1 engine 0.7 → 0.33): /health and /metrics.

Families are chosen by presence in the payload, never by a version string; the
table below lists, for each unified metric, the vLLM names in order of
preference. Series are grouped per `model_name` and summed over `engine`
(one series per data-parallel engine since 0.8.3); the KV-usage gauge is
averaged instead. Readiness: vLLM binds its port only when ready (connection
refused while loading); /health 200 = ready, 500/503 = engine dead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

from ..config import TargetConfig
from ..observation import Histogram, InfoSample, ModelSample, Observation, PollError, Readiness, Reason
from ..procinfo import ProcessFinder
from ..promparse import Labels, LabelCache, Payload, PromParseError, parse
from .base import HttpFetcher, SharedContext, Source, expect_status


# unified key → vLLM families, most preferred first (sample names as on the wire).
GAUGES: dict[str, tuple[str, ...]] = {
    "requests_running": ("vllm:num_requests_running",),
    "requests_waiting": ("vllm:num_requests_waiting",),
}
MEAN_GAUGES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage_ratio": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "preemptions": ("vllm:num_preemptions_total",),
}
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "token_queue_latency": ("vllm:request_queue_time_seconds", "vllm:time_in_queue_requests"),
    "time_to_first_token": ("vllm:time_to_first_token_seconds",),
    "inter_token_latency": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "request_latency": ("vllm:e2e_request_latency_seconds",),
}
# Prefix cache: (hits, queries, unit or None to read the unit from HELP).
PREFIX_CACHE: tuple[tuple[str, str, str | None], ...] = (
    ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "tokens"),
    ("vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total", None),
)
LIFETIME_HIT_RATE = "vllm:gpu_prefix_cache_hit_rate"
FINISHED = "vllm:request_success_total"
CACHE_INFO = "vllm:cache_config_info"


def _family_prefixes(family: str) -> tuple[str, ...]:
    """What to keep of one family: a counter's `_total` and `_created` series, everything of a
    gauge or histogram family (`_bucket`, `_sum`, `_count`, `_created`)."""
    if family.endswith("_total"):
        return (family, family[: -len("_total")] + "_created")
    return (family,)


# Only these families are parsed: the parser skips every other family's block unread.
METRICS_PREFIXES: tuple[str, ...] = tuple(sorted({
    prefix
    for family in [f for table in (GAUGES, MEAN_GAUGES, COUNTERS, HISTOGRAMS) for fs in table.values() for f in fs]
    + [f for pair in PREFIX_CACHE for f in pair[:2]] + [LIFETIME_HIT_RATE, FINISHED, CACHE_INFO,
                                                       "process_start_time_seconds"]
    for prefix in _family_prefixes(family)
}))
CACHE_CONFIG_KEYS = ("block_size", "num_gpu_blocks", "num_cpu_blocks", "enable_prefix_caching",
                     "cache_dtype", "gpu_memory_utilization", "kv_cache_size_tokens")


MAX_LABEL_VALUE = 200  # model names longer than this are cut (a hostile target cannot bloat /metrics)


def _model(labels: Labels) -> str:
    return labels.get("model_name", "")[:MAX_LABEL_VALUE]


def _unique(samples: Iterable[tuple[Labels, float]]) -> Iterable[tuple[Labels, float]]:
    """Drop duplicate series (same label set twice in one payload): the last one wins. The parser
    hands out one shared object per distinct label block, so identity is enough here."""
    seen: dict[int, tuple[Labels, float]] = {}
    for labels, value in samples:
        seen[id(labels)] = (labels, value)
    return seen.values()


def _sum_by_model(samples: Iterable[tuple[Labels, float]]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in _unique(samples):
        totals[_model(labels)] += value
    return totals


def _mean_by_model(samples: Iterable[tuple[Labels, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = defaultdict(list)
    for labels, value in _unique(samples):
        sums[_model(labels)].append(value)
    return {model: sum(values) / len(values) for model, values in sums.items()}


def _histograms_by_model(payload: Payload, family: str) -> dict[str, Histogram]:
    """Sum one histogram family over engines, per model. Models whose engines disagree on
    bucket bounds, or whose buckets are malformed, are left out."""
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    bounds_per_series: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)
    for labels, value in _unique(payload.get(family + "_bucket")):
        le = labels.get("le")
        if le is None:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        model = _model(labels)
        buckets[model][bound] += value
        key = (model, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
        bounds_per_series[key].append(bound)
    shapes: dict[str, set[tuple[float, ...]]] = defaultdict(set)
    for (model, _), bounds in bounds_per_series.items():
        shapes[model].add(tuple(sorted(bounds)))
    sums = _sum_by_model(payload.get(family + "_sum"))
    counts = _sum_by_model(payload.get(family + "_count"))
    out: dict[str, Histogram] = {}
    for model, per_bound in buckets.items():
        if len(shapes[model]) != 1 or math.inf not in per_bound or model not in counts:
            continue
        hist = Histogram(tuple(sorted(per_bound.items())), sums.get(model, 0.0), counts[model])
        out[model] = hist
    return out


def _prefix_unit(payload: Payload, hits: str, queries: str, unit: str | None) -> str | None:
    if unit is not None:
        return unit
    help_text = (payload.helps.get(queries) or payload.helps.get(queries[: -len("_total")]) or "").lower()
    if "block" in help_text:
        return "blocks"
    if "token" in help_text:
        return "tokens"
    return None  # cannot tell: expose nothing rather than mix units


class VllmSource(Source):
    engine = "vllm"

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.labels = self.shared.label_cache(self.engine)
        self.finder = ProcessFinder(target.process) if target.process else None

    async def collect(self, http: HttpFetcher | None, now: float) -> Observation:
        assert http is not None
        health = await http.get("/health")
        if health.status in (500, 503):
            return Observation(Readiness.DOWN, notices=(f"/health answered {health.status}: engine is dead",))
        expect_status(health, "/health")
        response = await http.get("/metrics")
        expect_status(response, "/metrics")
        try:
            payload = parse(response.text(), METRICS_PREFIXES, self.labels)
        except PromParseError as exc:
            raise PollError(Reason.PARSE, f"/metrics: {exc}") from None
        if not any(name.startswith("vllm:") for name in payload.samples):
            raise PollError(Reason.PARSE, "/metrics has no vllm: series (not a vLLM server?)")
        observation = Observation(Readiness.READY, models=self.map_payload(payload))
        observation.info = self.cache_config_info(payload)
        self._timing(payload, observation)
        return observation

    @staticmethod
    def map_payload(payload: Payload) -> dict[str, ModelSample]:
        models: dict[str, ModelSample] = defaultdict(ModelSample)

        def put(key: str, per_model: Mapping[str, float], **labels: str) -> None:
            for model, value in per_model.items():
                models[model].set(key, value, **labels)

        for table, combine in ((GAUGES, _sum_by_model), (COUNTERS, _sum_by_model), (MEAN_GAUGES, _mean_by_model)):
            for key, families in table.items():
                family = next((f for f in families if payload.has(f)), None)
                if family is not None:
                    put(key, combine(payload.get(family)))
        for hits, queries, unit in PREFIX_CACHE:
            if payload.has(hits) and payload.has(queries):
                resolved = _prefix_unit(payload, hits, queries, unit)
                if resolved is not None:
                    put(f"kv_cache_hit_{resolved}", _sum_by_model(payload.get(hits)))
                    put(f"kv_cache_query_{resolved}", _sum_by_model(payload.get(queries)))
                break
        else:
            lifetime = {m: v for m, v in _mean_by_model(payload.get(LIFETIME_HIT_RATE)).items() if 0 <= v <= 1}
            put("kv_cache_lifetime_hit_ratio", lifetime)  # -1 = caching disabled: nothing
        by_reason: dict[tuple[str, str], float] = defaultdict(float)
        for labels, value in _unique(payload.get(FINISHED)):
            by_reason[(_model(labels), labels.get("finished_reason", "")[:64])] += value
        for (model, reason), value in by_reason.items():
            models[model].set("requests_finished", value, reason=reason[:64])
        for key, families in HISTOGRAMS.items():
            family = next((f for f in families if payload.has(f + "_count")), None)
            if family is not None:
                for model, hist in _histograms_by_model(payload, family).items():
                    models[model].histograms[key] = hist
        return dict(models)

    @staticmethod
    def cache_config_info(payload: Payload) -> list[InfoSample]:
        for labels, _ in payload.get(CACHE_INFO)[:1]:
            pairs = tuple((key, str(labels[key])[:100]) for key in CACHE_CONFIG_KEYS if key in labels)
            return [InfoSample("kv_cache_config_info", pairs)]
        return []

    def _timing(self, payload: Payload, observation: Observation) -> None:
        info = self.finder.find() if self.finder is not None else None
        if info is not None:
            observation.process_pid = info.pid
        start = payload.get("process_start_time_seconds")
        if start and math.isfinite(start[0][1]) and start[0][1] > 0:
            observation.process_start_time = start[0][1]
            observation.process_start_basis = "payload"
        elif info is not None:
            observation.process_start_time = info.start_time
            observation.process_start_basis = "proc"
        created = [value for name, samples in payload.samples.items() if name.endswith("_created")
                   for _, value in samples if math.isfinite(value) and value > 0]
        if created:
            # Stat loggers are created right after the engine is ready (0.10+, single API server);
            # the families read here are created within about a millisecond of each other.
            observation.engine_ready_time = min(created)
        identity = observation.process_start_time if observation.process_start_basis == "payload" else None
        if identity is None and created:
            identity = min(created)
        if identity is not None:
            observation.instance_id = repr(identity)
