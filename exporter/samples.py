"""The one sample stream: what the exporter and each target expose now, as (family key, suffix, labels,
value) tuples built from state at scrape time.

`target_samples()` is the one place that decides what a target exposes: a pure function of its state. Both
renderers read this stream: text.py (text format 0.0.4 and OpenMetrics, cached per target) and
openmetrics.py (prometheus_client's Collector, the reference in the tests). A scrape never polls; series of
targets or models that disappeared are simply not produced any more.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from . import __version__
from .catalogue import ALL_METRICS, BY_KEY
from .clock import to_wall
from .derive.lifecycle import ModelLifecycle
from .join import Owners, owner_of, target_links
from .observation import ModelState, Readiness
from .passthrough import RawFamily
from .state import TargetState
from .status import ExporterStatus

Sample = tuple[str, str, dict[str, str], float]  # (family key, sample suffix, labels, value)
PASSTHROUGH = "passthrough:"  # family keys of an engine's own families re-exposed (passthrough: true)
ORDER = {spec.key: index for index, spec in enumerate(ALL_METRICS)}
INFO_KEYS = frozenset(spec.key for spec in ALL_METRICS if spec.type == "info")


def exporter_samples(status: ExporterStatus) -> list[Sample]:
    out: list[Sample] = [
        ("build_info", "", {"version": __version__}, 1.0),
        ("config_reload_ok", "", {}, 1.0 if status.config_reload_ok else 0.0),
    ]
    if status.config_reload_time is not None:
        out.append(("config_reload_time", "", {}, status.config_reload_time))
    if status.tasks is not None:
        out.append(("tasks", "", {}, float(status.tasks())))
    if status.render_seconds is not None:
        out.append(("render_duration", "", {}, status.render_seconds))
    out.extend(("scrapes", BY_KEY["scrapes"].suffix, {"format": f}, float(n)) for f, n in status.scrapes.items())
    out.extend(
        ("connections_dropped", BY_KEY["connections_dropped"].suffix, {"reason": reason}, float(n))
        for reason, n in status.connections_dropped.items()
    )
    for key, hist in (("event_loop_lag", status.loop_lag), ("poll_delay", status.poll_delay)):
        out.extend(histogram_samples(key, {}, hist.buckets(), hist.count, hist.sum))
    if status.host_cpu is not None:
        out.append(("host_cpu_info", "", dict(status.host_cpu), 1.0))
    return out


def histogram_samples(
    key: str, labels: dict[str, str], buckets: Iterable[tuple[float, float]], count: float, total: float
) -> list[Sample]:
    """A histogram's samples: cumulative buckets (`le` as Go writes it), then _count and _sum."""
    out: list[Sample] = [(key, "_bucket", {**labels, "le": go_float(bound)}, n) for bound, n in buckets]
    out.append((key, "_count", labels, count))
    out.append((key, "_sum", labels, total))
    return out


def target_samples(state: TargetState, owners: Owners) -> list[Sample]:
    """Everything one target exposes now, pass-through included. Pure: reads the state, changes nothing.
    `owners` (join.py) labels joinable series (GPU processes) with the engine target and model owning them."""
    target, health, life, report = state.target, state.health, state.life, state.report
    base = {"target": target.name, "engine": state.engine, **dict(target.labels)}
    out: list[Sample] = []

    def put(key: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None and not math.isnan(value) and key in BY_KEY:
            out.append((key, BY_KEY[key].suffix, labels, value))

    put("up", base, 1.0 if health.up else 0.0)
    if target.optional:
        put("target_absent", base, 1.0 if health.absent else 0.0)
    put("ready", base, 1.0 if health.readiness is Readiness.READY else 0.0)
    put("poll_duration", base, health.last_poll_duration)
    put("last_success", base, None if health.last_success is None else to_wall(health.last_success))
    for reason, count in health.errors.items():
        put("poll_errors", {**base, "reason": reason.value}, float(count))
    put("polls", base, float(health.polls))
    put("engine_restarts", base, float(life.restarts))
    put("series_dropped", base, float(report.series_dropped))
    for metric, count in sorted(report.mapping_misses.items()):
        put("mapping_misses", {**base, "metric": metric}, float(count))
    for lifecycle in life.lifecycles.values():
        out.extend(lifecycle_samples(lifecycle, {**base, "model": lifecycle.model}, life.model_states, health.up))
    for name, lifecycle in life.history.items():  # served before: counts only, no state
        if all(name != current.model for current in life.lifecycles.values()):
            out.extend(lifecycle_samples(lifecycle, {**base, "model": name}, life.model_states, False))
    if life.process_start is not None:
        put("engine_process_start_time", {**base, "basis": life.process_start[1]}, to_wall(life.process_start[0]))
    if not health.up:
        # The last poll failed: show no stale engine values (windows are kept for when it is back).
        return out
    for endpoint, enabled in sorted(life.endpoints.items()):
        put("endpoint_enabled", {**base, "endpoint": endpoint}, 1.0 if enabled else 0.0)
    for info in report.info:
        if info.name in INFO_KEYS:  # a fact the engine does not give is left out, never an empty label
            put(info.name, {**base, **{k: v for k, v in info.labels if v}}, 1.0)
    for series in report.series:
        put(series.key, {**base, **dict(series.labels), **dict(owner_of(series, owners))}, series.value)
    if owners:
        for link in target_links(report.series, owners):
            put("gpu_target_info", {**base, **dict(link)}, 1.0)
    for model_name, model in report.models.items():
        labels = {**base, "model": model_name}
        sample = model.latest
        for (key, extra), value in sample.values.items():
            put(key, {**labels, **dict(extra)}, value)
        for key, hist in sample.histograms.items():
            out.extend(histogram_samples(key, labels, hist.buckets, hist.count, hist.sum))
        for (key, extra), value in model.derived.items():
            put(key, {**labels, **dict(extra)}, value)
    for family in report.passthrough:
        key = PASSTHROUGH + family.name
        out.extend(
            (key, name[len(family.name) :], {**dict(pairs), **base}, value) for name, pairs, value in family.samples
        )
    return out


def lifecycle_samples(
    lifecycle: ModelLifecycle, labels: dict[str, str], states: tuple[ModelState, ...], up: bool
) -> list[Sample]:
    """One model's lifecycle: its state (only while the target answers), loads, durations, failures."""
    out: list[Sample] = []
    if up and lifecycle.state is not None:
        for state in states or (lifecycle.state,):
            out.append(("model_state", "", {**labels, "state": state.value}, 1.0 if state is lifecycle.state else 0.0))
    loads = BY_KEY["model_loads"].suffix
    for kind in sorted({lifecycle.fresh_kind, *lifecycle.loads}):  # the kind it starts with is always shown
        out.append(("model_loads", loads, {**labels, "kind": kind}, float(lifecycle.loads.get(kind, 0))))
    for kind, hist in sorted(lifecycle.durations.items()):
        out.extend(
            histogram_samples("model_load_duration", {**labels, "kind": kind}, hist.buckets(), hist.count, hist.sum)
        )
    last = lifecycle.last
    if last is not None and last.seconds is not None:
        out.append(("model_load", "", {**labels, "kind": last.kind, "basis": last.basis}, last.seconds))
    out.append(("model_load_failures", BY_KEY["model_load_failures"].suffix, labels, float(lifecycle.failures)))
    unloads = BY_KEY["model_unloads"].suffix
    for reason, count in sorted(lifecycle.unloads.items()):
        out.append(("model_unloads", unloads, {**labels, "reason": reason}, float(count)))
    if up and lifecycle.state is ModelState.LOADED and lifecycle.loaded_at is not None:
        out.append(("model_loaded_time", "", labels, to_wall(lifecycle.loaded_at)))
    return out


def passthrough_families(states: Iterable[TargetState]) -> dict[str, RawFamily]:
    """Pass-through family key → its family (type and help for the headers)."""
    return {PASSTHROUGH + family.name: family for state in states for family in state.report.passthrough}


def family_header(namespace: str, key: str, raw: dict[str, RawFamily]) -> tuple[str, str, str] | None:
    """(family name, type, help) of a sample key; None for a pass-through family that would shadow one of
    the exporter's own families."""
    spec = BY_KEY.get(key)
    if spec is not None:
        return f"{namespace}_{spec.name}", "gauge" if spec.type == "info" else spec.type, spec.help
    family = raw[key]
    name = f"{namespace}_{family.name}"
    if name in _own_families(namespace):
        return None
    return name, family.kind, family.help


def order(key: str) -> tuple[int, str]:
    """Families in catalogue order, pass-through families after them by name."""
    return ORDER.get(key, len(ORDER)), key


@functools.lru_cache(maxsize=8)
def _own_families(namespace: str) -> frozenset[str]:
    return frozenset(f"{namespace}_{spec.name}" for spec in ALL_METRICS)


@functools.lru_cache(maxsize=8192)
def go_float(value: float) -> str:
    """A number as prometheus_client's floatToGoString writes it (Go's format: +Inf, NaN, 1e+06), memoised:
    counters and bucket counts repeat poll after poll. The differential test pins the two together."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text
