"""Windowed values of one model: hit ratio, queue-latency mean and token rates over the target's window.

Pure. A window keeps a `Snapshot` per poll — only the few counters these derivations read, not whole
samples with their histograms — and `windowed_values()` compares its first and last snapshot.
"""

from __future__ import annotations

from ..observation import LabelPairs, ModelSample
from .maths import counter_delta, rate, ratio_of_deltas
from .window import SlidingWindow

RATIO_PAIRS = (
    ("kv_cache_hit_tokens", "kv_cache_query_tokens", "tokens"),
    ("kv_cache_hit_blocks", "kv_cache_query_blocks", "blocks"),
)
RATE_KEYS = (("prompt_tokens", "prompt_tokens_rate"), ("generation_tokens", "generation_tokens_rate"))
WINDOW_COUNTERS = (
    "kv_cache_hit_tokens",
    "kv_cache_query_tokens",
    "kv_cache_hit_blocks",
    "kv_cache_query_blocks",
    "prompt_tokens",
    "generation_tokens",
)
Snapshot = dict[str, float]


def snapshot(sample: ModelSample) -> Snapshot:
    snap = {key: value for key in WINDOW_COUNTERS if (value := sample.get(key)) is not None}
    queue = sample.histograms.get("token_queue_latency")
    if queue is not None:
        snap["queue_sum"], snap["queue_count"] = queue.sum, queue.count
    return snap


def windowed_values(window: SlidingWindow[Snapshot]) -> dict[tuple[str, LabelPairs], float]:
    """Windowed values from the first and last snapshot of a model's window (none from one snapshot)."""
    first, last = window.first(), window.last()
    if first is None or last is None or first is last:
        return {}
    (t0, s0), (t1, s1) = first, last
    out: dict[tuple[str, LabelPairs], float] = {}
    for hits, queries, unit in RATIO_PAIRS:
        ratio = ratio_of_deltas(
            counter_delta(s0.get(hits), s1.get(hits)), counter_delta(s0.get(queries), s1.get(queries))
        )
        if ratio is not None:
            out[("kv_cache_hit_ratio", (("unit", unit),))] = ratio
    queue_count = counter_delta(s0.get("queue_count"), s1.get("queue_count"))
    queue_sum = counter_delta(s0.get("queue_sum"), s1.get("queue_sum"))
    if queue_count and queue_sum is not None:
        out[("token_queue_latency_mean", ())] = queue_sum / queue_count
    for counter, rate_key in RATE_KEYS:
        value = rate(counter_delta(s0.get(counter), s1.get(counter)), t1 - t0)
        if value is not None:
            out[(rate_key, ())] = value
    return out
