"""Declarative engine mappings: which upstream family feeds which unified metric, in which version
range, with which unit. One table per engine (in that engine's source module); a rename upstream is
a one-line change there. docs/metrics.md's per-engine tables are generated from the same tables.

`apply()` maps a parsed payload with a table: per model (the table's model label), combining the
other labels (data-parallel engines, TP ranks) by sum or mean, and reports the unified metrics for
which none of the known upstream names was present: the mapping misses that make a silent
upstream removal visible (`llm_exporter_mapping_misses_total`).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..observation import Histogram, ModelSample
from ..promparse import Labels, Payload

MAX_LABEL_VALUE = 200  # model names longer than this are cut (a hostile target cannot bloat /metrics)


@dataclass(frozen=True)
class Upstream:
    """One upstream family that can feed a unified metric."""

    # Sample name for gauges and counters, family name for histograms. Counter samples always end
    # in `_total` after parsing (also where the engine's TYPE line omits it, like TGI's).
    name: str
    versions: str  # the engine versions that have it, as documentation
    unit: str = ""  # "tokens", "blocks", or "help" to read tokens/blocks from the family's HELP
    combine: str = "sum"  # how series of one model combine over other labels: sum | mean
    minimum: float | None = None  # values below mean "not available" (vLLM's -1 hit rate): dropped


@dataclass(frozen=True)
class Feed:
    """A unified metric and its upstream families, most preferred first (chosen by presence)."""

    key: str  # unified key (catalogue); "{unit}" is replaced by the upstream's unit
    kind: str  # gauge | counter | histogram
    upstream: tuple[Upstream, ...]
    required: bool = True  # a target that answers without any of these counts a mapping miss
    label: str = ""  # keep this upstream label as an extra label of the unified metric
    label_as: str = ""  # ... under this name
    const_labels: tuple[tuple[str, str], ...] = ()  # extra labels with fixed values


def model_of(labels: Labels, model_label: str) -> str:
    return labels.get(model_label, "")[:MAX_LABEL_VALUE]


def unique(samples: Iterable[tuple[Labels, float]]) -> Iterable[tuple[Labels, float]]:
    """Drop duplicate series (the same label set twice in one payload): the last one wins. The parser
    hands out one shared object per distinct label block, so identity is enough here."""
    seen: dict[int, tuple[Labels, float]] = {}
    for labels, value in samples:
        seen[id(labels)] = (labels, value)
    return seen.values()


def combine(
    samples: Iterable[tuple[Labels, float]], model_label: str, how: str, extra: str = ""
) -> dict[tuple[str, str], float]:
    """(model, extra label value) → value, summed or averaged over all other labels."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for labels, value in unique(samples):
        groups[(model_of(labels, model_label), labels.get(extra, "")[:64] if extra else "")].append(value)
    if how == "mean":
        return {key: sum(values) / len(values) for key, values in groups.items()}
    return {key: sum(values) for key, values in groups.items()}


def histograms(payload: Payload, family: str, model_label: str) -> dict[str, Histogram]:
    """One histogram family summed over non-model labels, per model. Models whose series disagree on
    bucket bounds, or lack +Inf or a count, are left out."""
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    series_per_bound: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for labels, value in unique(payload.get(family + "_bucket")):
        bound = _bound(labels.get("le"))
        if bound is None:
            continue
        model = model_of(labels, model_label)
        buckets[model][bound] += value
        series_per_bound[model][bound] += 1
    series: dict[str, int] = defaultdict(int)  # a model's series: one _count each
    counts: dict[str, float] = defaultdict(float)
    for labels, value in unique(payload.get(family + "_count")):
        model = model_of(labels, model_label)
        series[model] += 1
        counts[model] += value
    sums = {m: v for (m, _), v in combine(payload.get(family + "_sum"), model_label, "sum").items()}
    out = {}
    for model, per_bound in buckets.items():
        # Every series of the model has every bound exactly when each bound was seen once per series.
        same_bounds = all(n == series[model] for n in series_per_bound[model].values())
        if same_bounds and math.inf in per_bound and model in counts:
            out[model] = Histogram(tuple(sorted(per_bound.items())), sums.get(model, 0.0), counts[model])
    return out


@functools.lru_cache(maxsize=1024)
def _bound(le: str | None) -> float | None:
    """A bucket's `le` as a number (a payload repeats the same few bounds)."""
    try:
        return float(le) if le is not None else None
    except ValueError:
        return None


HELP_UNITS = ("blocks", "tokens")  # what unit_from_help can answer


def mapped_keys(table: tuple[Feed, ...]) -> set[str]:
    """Every unified key a table can feed ("{unit}" expanded with each unit its upstreams can have)."""
    keys = set()
    for feed in table:
        if "{unit}" not in feed.key:
            keys.add(feed.key)
            continue
        for upstream in feed.upstream:
            for unit in HELP_UNITS if upstream.unit == "help" else (upstream.unit,):
                if unit:
                    keys.add(feed.key.replace("{unit}", unit))
    return keys


def unit_from_help(payload: Payload, name: str) -> str | None:
    family = name[: -len("_total")] if name.endswith("_total") else name
    text = (payload.helps.get(name) or payload.helps.get(family) or "").lower()
    if "block" in text:
        return "blocks"
    if "token" in text:
        return "tokens"
    return None  # cannot tell: expose nothing rather than mix units


def present(payload: Payload, upstream: Upstream, kind: str) -> bool:
    return payload.has(upstream.name + "_count" if kind == "histogram" else upstream.name)


def apply(
    payload: Payload,
    table: tuple[Feed, ...],
    model_label: str,
    models: dict[str, ModelSample] | None = None,
    chosen_by_key: dict[str, str] | None = None,
) -> tuple[dict[str, ModelSample], list[str]]:
    """Map a payload with a table. Returns per-model samples and the unified keys that missed; fills
    `chosen_by_key` (unified key → the upstream family that fed it) when given (the debug view)."""
    models = models if models is not None else defaultdict(ModelSample)
    misses = []
    for feed in table:
        chosen = next((u for u in feed.upstream if present(payload, u, feed.kind)), None)
        if chosen is None:
            if feed.required:
                misses.append(feed.key.replace("_{unit}", ""))
            continue
        unit = unit_from_help(payload, chosen.name) if chosen.unit == "help" else chosen.unit
        if "{unit}" in feed.key and not unit:
            continue
        key = feed.key.replace("{unit}", unit or "")
        if chosen_by_key is not None:
            chosen_by_key[key] = chosen.name
        if feed.kind == "histogram":
            for model, hist in histograms(payload, chosen.name, model_label).items():
                models[model].histograms[key] = hist
            continue
        samples = payload.get(chosen.name)
        if chosen.minimum is not None:
            samples = [(labels, value) for labels, value in samples if value >= chosen.minimum]
        for (model, extra), value in combine(samples, model_label, chosen.combine, feed.label).items():
            labels = dict(feed.const_labels)
            if feed.label:
                labels[feed.label_as or feed.label] = extra
            models[model].set(key, value, **labels)
    return dict(models), misses


def prefixes(table: tuple[Feed, ...], *extra: str) -> tuple[str, ...]:
    """Parser prefixes for a table: a counter's `_total` and `_created`, everything of other families."""
    out = set(extra)
    for feed in table:
        for upstream in feed.upstream:
            name = upstream.name
            out.add(name)
            if name.endswith(("_sum", "_count")):  # a histogram's sample: its family's block holds it
                out.add(name.rsplit("_", 1)[0] + " ")
            if name.endswith("_total"):
                base = name[: -len("_total")]
                # `_created`, and the family itself where its TYPE line has no `_total` (TGI)
                out.update((base + "_created", base + " ", base + "{"))
    return tuple(sorted(out))
