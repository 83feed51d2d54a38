"""From state to exposition, built at scrape time.

`target_samples()` is the one place that decides what a target exposes: a pure function
of its state. Two renderers use it:

- `ExporterCollector`, a prometheus_client custom Collector, builds fresh metric families
  at each scrape (used for OpenMetrics, and as the reference in the tests);
- `TextRenderer` writes text format 0.0.4 and caches each target's rendered lines until
  the target's state changes (its next poll), so a scrape of 1,000 targets joins cached
  strings instead of formatting 150,000 samples (bench/RESULTS.md).

A scrape never polls; series of targets or models that disappeared are simply not
produced any more.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from . import __version__
from .catalogue import ALL_METRICS, BY_KEY, MetricSpec
from .derive.lifecycle import KIND_LOAD, KIND_START, ModelLifecycle
from .observation import ModelState, Readiness
from .state import TargetState

Sample = tuple[str, str, dict[str, str], float]  # (metric key, sample suffix, labels, value)
ORDER = {spec.key: index for index, spec in enumerate(ALL_METRICS)}
INFO_KEYS = frozenset(spec.key for spec in ALL_METRICS if spec.type == "info")


class ExporterStatus:
    """Process-wide facts the renderers show (config reload outcome, host CPU, tasks)."""

    def __init__(self) -> None:
        self.config_reload_ok = False
        self.config_reload_time: float | None = None
        self.host_cpu: tuple[tuple[str, str], ...] | None = None
        self.tasks: Callable[[], int] | None = None
        self.render_seconds: float | None = None


def _suffix(spec: MetricSpec) -> str:
    return "_total" if spec.type == "counter" else ""


def exporter_samples(status: ExporterStatus) -> list[Sample]:
    out: list[Sample] = [("build_info", "", {"version": __version__}, 1.0),
                         ("config_reload_ok", "", {}, 1.0 if status.config_reload_ok else 0.0)]
    if status.config_reload_time is not None:
        out.append(("config_reload_time", "", {}, status.config_reload_time))
    if status.tasks is not None:
        out.append(("tasks", "", {}, float(status.tasks())))
    if status.render_seconds is not None:
        out.append(("render_duration", "", {}, status.render_seconds))
    if status.host_cpu is not None:
        out.append(("host_cpu_info", "", dict(status.host_cpu), 1.0))
    return out


def target_samples(state: TargetState) -> list[Sample]:
    """Everything one target exposes now. Pure: reads the state, changes nothing."""
    target = state.target
    base = {"target": target.name, "engine": target.engine, **dict(target.labels)}
    out: list[Sample] = []

    def put(key: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None and not math.isnan(value) and key in BY_KEY:
            out.append((key, _suffix(BY_KEY[key]), labels, value))

    put("up", base, 1.0 if state.up else 0.0)
    put("ready", base, 1.0 if state.readiness is Readiness.READY else 0.0)
    put("poll_duration", base, state.last_poll_duration)
    put("last_success", base, state.last_success)
    for reason, count in state.poll_errors.items():
        put("poll_errors", {**base, "reason": reason.value}, float(count))
    put("polls", base, float(state.polls))
    put("engine_restarts", base, float(state.restarts))
    put("series_dropped", base, float(state.series_dropped))
    for metric, count in sorted(state.mapping_misses.items()):
        put("mapping_misses", {**base, "metric": metric}, float(count))
    for lifecycle in state.lifecycles.values():
        out.extend(lifecycle_samples(lifecycle, {**base, "model": lifecycle.model}, state.model_states, state.up))
    if state.process_start is not None:
        put("engine_process_start_time", {**base, "basis": state.process_start[1]}, state.process_start[0])
    if not state.up:
        # The last poll failed: show no stale engine values (windows are kept for when it is back).
        return out
    for endpoint, enabled in sorted(state.endpoints.items()):
        put("endpoint_enabled", {**base, "endpoint": endpoint}, 1.0 if enabled else 0.0)
    for info in state.info:
        if info.name in INFO_KEYS:
            put(info.name, {**base, **dict(info.labels)}, 1.0)
    for series in state.series:
        put(series.key, {**base, **dict(series.labels)}, series.value)
    for model_name, model in state.models.items():
        labels = {**base, "model": model_name}
        sample = model.latest
        for (key, extra), value in sample.values.items():
            put(key, {**labels, **dict(extra)}, value)
        for key, hist in sample.histograms.items():
            for bound, cumulative in hist.buckets:
                out.append((key, "_bucket", {**labels, "le": floatToGoString(bound)}, cumulative))
            out.append((key, "_count", labels, hist.count))
            out.append((key, "_sum", labels, hist.sum))
        for (key, extra), value in model.derived.items():
            put(key, {**labels, **dict(extra)}, value)
    return out


def lifecycle_samples(lifecycle: ModelLifecycle, labels: dict[str, str], states: tuple[ModelState, ...],
                      up: bool) -> list[Sample]:
    """One model's lifecycle: its state (only while the target answers), loads, durations, failures."""
    out: list[Sample] = []
    if up and lifecycle.state is not None:
        for state in states or (lifecycle.state,):
            out.append(("model_state", "", {**labels, "state": state.value}, 1.0 if state is lifecycle.state else 0.0))
    for kind in sorted({KIND_START if lifecycle.fresh_kind == KIND_START else KIND_LOAD, *lifecycle.loads}):
        out.append(("model_loads", "_total", {**labels, "kind": kind}, float(lifecycle.loads.get(kind, 0))))
    for kind, hist in sorted(lifecycle.durations.items()):
        with_kind = {**labels, "kind": kind}
        for bound, cumulative in hist.buckets():
            out.append(("model_load_duration", "_bucket", {**with_kind, "le": floatToGoString(bound)}, cumulative))
        out.append(("model_load_duration", "_count", with_kind, hist.count))
        out.append(("model_load_duration", "_sum", with_kind, hist.sum))
    last = lifecycle.last
    if last is not None and last.seconds is not None:
        out.append(("model_load", "", {**labels, "kind": last.kind, "basis": last.basis}, last.seconds))
    out.append(("model_load_failures", "_total", labels, float(lifecycle.failures)))
    if up and lifecycle.state is ModelState.LOADED and lifecycle.loaded_at is not None:
        out.append(("model_loaded_time", "", labels, lifecycle.loaded_at))
    return out


def family_name(namespace: str, key: str) -> str:
    return f"{namespace}_{BY_KEY[key].name}"


class ExporterCollector:
    """The prometheus_client Collector (OpenMetrics, and the reference for TextRenderer)."""

    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; avoid a collect() at registration time

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        samples = exporter_samples(self.status)
        for state in list(self.states()):
            samples.extend(target_samples(state))
        for key, suffix, labels, value in samples:
            metric = families.get(key)
            if metric is None:
                spec = BY_KEY[key]
                metric = families[key] = Metric(family_name(self.namespace, key), spec.help,
                                                "gauge" if spec.type == "info" else spec.type)
            metric.add_sample(metric.name + suffix, labels, value)
        for key in sorted(families, key=ORDER.__getitem__):
            yield families[key]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        block = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{block}}} {floatToGoString(value)}\n"
    return f"{name} {floatToGoString(value)}\n"


class TextRenderer:
    """Text format 0.0.4, with each target's lines cached (as bytes, per family) until its state changes."""

    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status
        self._cache: dict[str, tuple[int, str, dict[str, bytes]]] = {}  # target → (version, namespace, lines)
        self._raw_headers: dict[str, tuple[str, str]] = {}  # pass-through family → (type, help)

    def refresh(self, state: TargetState) -> None:
        """Render a target's lines now (called right after its poll), so scrapes only join bytes."""
        self._target_lines(state)

    def _target_lines(self, state: TargetState) -> dict[str, bytes]:
        cached = self._cache.get(state.target.name)
        if cached is not None and cached[0] == state.version and cached[1] == self.namespace:
            return cached[2]
        lines: dict[str, list[str]] = {}
        for key, suffix, labels, value in target_samples(state):
            lines.setdefault(key, []).append(_line(family_name(self.namespace, key) + suffix, labels, value))
        for family in state.passthrough if state.up else ():
            key = "passthrough:" + family.name
            self._raw_headers[key] = (family.kind, family.help)
            base = {"target": state.target.name, "engine": state.target.engine, **dict(state.target.labels)}
            lines.setdefault(key, []).extend(
                _line(f"{self.namespace}_{name}", {**dict(labels), **base}, value)
                for name, labels, value in family.samples)
        joined = {key: "".join(parts).encode("utf-8") for key, parts in lines.items()}
        self._cache[state.target.name] = (state.version, self.namespace, joined)
        return joined

    def render(self) -> bytes:
        started = time.perf_counter()
        body = self._render()
        self.status.render_seconds = time.perf_counter() - started
        return body

    def _header(self, key: str) -> bytes | None:
        if key in BY_KEY:
            spec = BY_KEY[key]
            name = family_name(self.namespace, key) + ("_total" if spec.type == "counter" else "")
            kind = "gauge" if spec.type == "info" else spec.type
            help_text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
        else:  # an engine family passed through as it is
            kind, help_text = self._raw_headers.get(key, ("untyped", ""))
            name = f"{self.namespace}_{key.split(':', 1)[1]}"
            if any(name == f"{self.namespace}_{spec.name}" for spec in ALL_METRICS):
                return None  # never shadow one of the exporter's own families
            # HELP text is passed on as it came (still escaped as on the wire; one line)
        return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode("utf-8")

    def _render(self) -> bytes:
        own: dict[str, list[str]] = {}
        for key, suffix, labels, value in exporter_samples(self.status):
            own.setdefault(key, []).append(_line(family_name(self.namespace, key) + suffix, labels, value))
        exporter_lines = {key: "".join(parts).encode("utf-8") for key, parts in own.items()}
        states = list(self.states())
        per_target = [exporter_lines] + [self._target_lines(state) for state in states]
        live = {state.target.name for state in states}
        for name in [n for n in self._cache if n not in live]:
            del self._cache[name]  # targets removed by a reload
        keys: set[str] = set()
        keys.update(*per_target)
        out: list[bytes] = []
        for key in sorted(keys, key=lambda k: (ORDER.get(k, len(ORDER)), k)):
            header = self._header(key)
            if header is None:
                continue
            out.append(header)
            out.extend([chunk for chunk in [lines.get(key) for lines in per_target] if chunk is not None])
        return b"".join(out)
