"""The one prometheus_client Collector: builds fresh metric families from state on each scrape.

A scrape never polls; it only reads the targets' state. Series of targets or
models that disappeared are simply not produced any more.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from . import __version__
from .catalogue import BY_KEY, DERIVED_METRICS, ENGINE_METRICS, INFO_METRICS, MetricSpec
from .observation import Readiness
from .state import TargetState


class ExporterStatus:
    """Process-wide facts the collector shows (config reload outcome, host CPU)."""

    def __init__(self) -> None:
        self.config_reload_ok = False
        self.config_reload_time: float | None = None
        self.host_cpu: tuple[tuple[str, str], ...] | None = None


def _family(namespace: str, spec: MetricSpec) -> Metric:
    kind = "gauge" if spec.type == "info" else spec.type
    return Metric(f"{namespace}_{spec.name}", spec.help, kind)


def _add(metric: Metric, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
    name = metric.name + ("_total" if spec.type == "counter" else "")
    metric.add_sample(name, labels, value)


def _add_histogram(metric: Metric, labels: dict[str, str], buckets: Iterable[tuple[float, float]],
                   total: float, count: float) -> None:
    for bound, cumulative in buckets:
        metric.add_sample(metric.name + "_bucket", {**labels, "le": floatToGoString(bound)}, cumulative)
    metric.add_sample(metric.name + "_count", labels, count)
    metric.add_sample(metric.name + "_sum", labels, total)


class ExporterCollector:
    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; avoid a collect() at registration time

    def collect(self) -> Iterator[Metric]:
        ns = self.namespace
        states = list(self.states())
        families: dict[str, Metric] = {}

        def family(key: str) -> Metric:
            metric = families.get(key)
            if metric is None:
                metric = families[key] = _family(ns, BY_KEY[key])
            return metric

        def put(key: str, labels: dict[str, str], value: float | None) -> None:
            if value is not None and not math.isnan(value) and key in BY_KEY:
                _add(family(key), BY_KEY[key], labels, value)

        put("build_info", {"version": __version__}, 1.0)
        put("config_reload_ok", {}, 1.0 if self.status.config_reload_ok else 0.0)
        put("config_reload_time", {}, self.status.config_reload_time)
        if self.status.host_cpu is not None:
            put("host_cpu_info", dict(self.status.host_cpu), 1.0)

        for state in states:
            target = state.target
            base = {"target": target.name, "engine": target.engine, **dict(target.labels)}
            put("up", base, 1.0 if state.up else 0.0)
            put("ready", base, 1.0 if state.readiness is Readiness.READY else 0.0)
            put("poll_duration", base, state.last_poll_duration)
            put("last_success", base, state.last_success)
            for reason, count in state.poll_errors.items():
                put("poll_errors", {**base, "reason": reason.value}, float(count))
            put("engine_restarts", base, float(state.restarts))
            put("series_dropped", base, float(state.series_dropped))
            load = state.load_time
            if load is not None:
                put("model_load", {**base, "basis": load.basis}, load.seconds)
            if state.process_start is not None:
                put("engine_process_start_time", {**base, "basis": state.process_start[1]}, state.process_start[0])
            if not state.up:
                # The last poll failed: show no stale engine values (windows are kept for when it is back).
                continue
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
                    _add_histogram(family(key), labels, hist.buckets, hist.sum, hist.count)
                for (key, extra), value in model.derived.items():
                    put(key, {**labels, **dict(extra)}, value)

        order = {spec.key: i for i, spec in enumerate(ENGINE_METRICS + DERIVED_METRICS + INFO_METRICS)}
        for key in sorted(families, key=lambda k: (order.get(k, -1), k)):
            yield families[key]


INFO_KEYS = frozenset(spec.key for spec in INFO_METRICS)
