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

import functools
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from . import __version__
from .catalogue import ALL_METRICS, BY_KEY
from .clock import to_wall
from .derive.lifecycle import ModelLifecycle
from .derive.maths import CumulativeHistogram
from .join import Owners, owner_of, process_owners, target_links
from .observation import ModelState, Readiness
from .passthrough import RawFamily
from .procinfo import own_process
from .state import TargetState

if TYPE_CHECKING:  # prometheus_client is imported only when an OpenMetrics scrape comes (resident memory)
    from prometheus_client.metrics_core import Metric

Sample = tuple[str, str, dict[str, str], float]  # (family key, sample suffix, labels, value)
PASSTHROUGH = "passthrough:"  # family keys of an engine's own families re-exposed (passthrough: true)
ORDER = {spec.key: index for index, spec in enumerate(ALL_METRICS)}
INFO_KEYS = frozenset(spec.key for spec in ALL_METRICS if spec.type == "info")


LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ExporterStatus:
    """Process-wide facts the renderers show (config reload outcome, host CPU, tasks, how late the event
    loop and the polls run)."""

    def __init__(self) -> None:
        self.loop_lag = CumulativeHistogram(LAG_BUCKETS)  # event-loop wake-ups later than asked
        self.poll_delay = CumulativeHistogram(LAG_BUCKETS)  # polls started later than their schedule
        self.config_reload_ok = False
        self.config_reload_time: float | None = None
        self.host_cpu: tuple[tuple[str, str], ...] | None = None
        self.tasks: Callable[[], int] | None = None
        self.render_seconds: float | None = None
        self.scrapes: dict[str, int] = {"text": 0, "openmetrics": 0}
        self.connections_dropped: dict[str, int] = {"evicted": 0, "write_timeout": 0}


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
    out.extend(("scrapes", "_total", {"format": fmt}, float(n)) for fmt, n in status.scrapes.items())
    out.extend(
        ("connections_dropped", "_total", {"reason": reason}, float(n))
        for reason, n in status.connections_dropped.items()
    )
    for key, hist in (("event_loop_lag", status.loop_lag), ("poll_delay", status.poll_delay)):
        for bound, cumulative in hist.buckets():
            out.append((key, "_bucket", {"le": _go_float(bound)}, cumulative))
        out.append((key, "_count", {}, hist.count))
        out.append((key, "_sum", {}, hist.sum))
    if status.host_cpu is not None:
        out.append(("host_cpu_info", "", dict(status.host_cpu), 1.0))
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
            for bound, cumulative in hist.buckets:
                out.append((key, "_bucket", {**labels, "le": _go_float(bound)}, cumulative))
            out.append((key, "_count", labels, hist.count))
            out.append((key, "_sum", labels, hist.sum))
        for (key, extra), value in model.derived.items():
            put(key, {**labels, **dict(extra)}, value)
    for family in report.passthrough:
        key = PASSTHROUGH + family.name
        out.extend(
            (key, name[len(family.name) :], {**dict(pairs), **base}, value) for name, pairs, value in family.samples
        )
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


def lifecycle_samples(
    lifecycle: ModelLifecycle, labels: dict[str, str], states: tuple[ModelState, ...], up: bool
) -> list[Sample]:
    """One model's lifecycle: its state (only while the target answers), loads, durations, failures."""
    out: list[Sample] = []
    if up and lifecycle.state is not None:
        for state in states or (lifecycle.state,):
            out.append(("model_state", "", {**labels, "state": state.value}, 1.0 if state is lifecycle.state else 0.0))
    for kind in sorted({lifecycle.fresh_kind, *lifecycle.loads}):  # the kind it starts with is always shown
        out.append(("model_loads", "_total", {**labels, "kind": kind}, float(lifecycle.loads.get(kind, 0))))
    for kind, hist in sorted(lifecycle.durations.items()):
        with_kind = {**labels, "kind": kind}
        for bound, cumulative in hist.buckets():
            out.append(("model_load_duration", "_bucket", {**with_kind, "le": _go_float(bound)}, cumulative))
        out.append(("model_load_duration", "_count", with_kind, hist.count))
        out.append(("model_load_duration", "_sum", with_kind, hist.sum))
    last = lifecycle.last
    if last is not None and last.seconds is not None:
        out.append(("model_load", "", {**labels, "kind": last.kind, "basis": last.basis}, last.seconds))
    out.append(("model_load_failures", "_total", labels, float(lifecycle.failures)))
    for reason, count in sorted(lifecycle.unloads.items()):
        out.append(("model_unloads", "_total", {**labels, "reason": reason}, float(count)))
    if up and lifecycle.state is ModelState.LOADED and lifecycle.loaded_at is not None:
        out.append(("model_loaded_time", "", labels, to_wall(lifecycle.loaded_at)))
    return out


@functools.lru_cache(maxsize=8)
def _own_families(namespace: str) -> frozenset[str]:
    return frozenset(f"{namespace}_{spec.name}" for spec in ALL_METRICS)


class ExporterCollector:
    """The prometheus_client Collector (OpenMetrics, and the reference for TextRenderer)."""

    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; avoid a collect() at registration time

    def collect(self) -> Iterator[Metric]:
        states = list(self.states())
        owners = process_owners(states)
        raw = passthrough_families(states)
        families: dict[str, tuple[Metric, str] | None] = {}
        samples = exporter_samples(self.status)
        for state in states:
            samples.extend(target_samples(state, owners))
        for key, suffix, labels, value in samples:
            if key not in families:
                header = family_header(self.namespace, key, raw)
                families[key] = _metric(*header) if header else None
            entry = families[key]
            if entry is not None:
                entry[0].add_sample(entry[1] + suffix, labels, value)
        for key in sorted(families, key=_order):
            entry = families[key]
            if entry is not None:
                yield entry[0]


def _metric(name: str, kind: str, help_text: str) -> tuple[Metric, str]:
    """A family for prometheus_client, and the prefix of its sample names. An engine's counter family may
    be declared with its _total (text format 0.0.4 allows both); OpenMetrics names the family without it."""
    from prometheus_client.metrics_core import Metric

    family = name[:-6] if kind == "counter" and name.endswith("_total") else name
    return Metric(family, help_text, kind), name


def _order(key: str) -> tuple[int, str]:
    return ORDER.get(key, len(ORDER)), key


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _prefix(name: str, labels: dict[str, str]) -> str:
    """`name{labels} ` as the text format writes it (labels sorted, values escaped)."""
    if labels:
        block = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{block}}} "
    return name + " "


@functools.lru_cache(maxsize=8192)
def _go_float(value: float) -> str:
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


def _line(name: str, labels: dict[str, str], value: float) -> str:
    return _prefix(name, labels) + _go_float(value) + "\n"


class ScrapeClock:
    """When the next text-format scrape is expected, from the gaps between the last few (the shortest gap:
    with several Prometheus replicas the scrapes interleave)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=8)

    def scraped(self, t: float) -> None:
        self.times.append(t)

    def due_by(self, t: float) -> bool:
        """True when a scrape is expected at or before time `t` (so a render made now would be read)."""
        if not self.times:
            return False  # nobody scrapes yet: render at the first scrape
        if len(self.times) == 1:
            return True  # the scrape interval is not known yet
        gap = min(b - a for a, b in itertools.pairwise(self.times))
        return self.times[-1] + gap <= t


class TextRenderer:
    """Text format 0.0.4 from the same sample stream, with each target's lines cached (as bytes, per
    family) until its state changes (or, for joinable series, the owners they were joined with)."""

    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status
        # target → (version, namespace, owners used or None, lines per family key)
        self._cache: dict[str, tuple[int, str, Owners | None, dict[str, bytes]]] = {}
        self.clock = ScrapeClock()

    def refresh(self, state: TargetState) -> None:
        """Called right after a target's poll: render its lines now when a scrape is due before its next
        poll, so that scrape only joins bytes; else leave it (a later poll renders, or the scrape does).
        Polls more frequent than scrapes (a sidecar at 20 Hz, a fleet at 5 s scraped every 15 s) thus
        render only what a scrape reads."""
        if self.clock.due_by(time.monotonic() + state.target.interval * 1.1):
            self._target_lines(state, lambda: process_owners(self.states()))

    def _target_lines(self, state: TargetState, owners_of: Callable[[], Owners]) -> dict[str, bytes]:
        joins = any(series.join_pids for series in state.report.series)
        owners = owners_of() if joins else {}
        cached = self._cache.get(state.target.name)
        if (
            cached is not None
            and cached[0] == state.version
            and cached[1] == self.namespace
            and (not joins or cached[2] == owners)
        ):
            return cached[3]
        raw = {PASSTHROUGH + f.name: f for f in state.report.passthrough}
        lines: dict[str, list[str]] = {}
        names: dict[str, str | None] = {}
        for key, suffix, labels, value in target_samples(state, owners):
            if key not in names:
                header = family_header(self.namespace, key, raw)
                names[key] = header[0] if header is not None else None
            name = names[key]
            if name is None:
                continue
            lines.setdefault(key, []).append(_prefix(name + suffix, labels) + _go_float(value) + "\n")
        joined = {key: "".join(parts).encode("utf-8") for key, parts in lines.items()}
        self._cache[state.target.name] = (state.version, self.namespace, owners if joins else None, joined)
        return joined

    def render(self, openmetrics: bool = False) -> bytes:
        """The exporter's and the targets' families in text format 0.0.4 or OpenMetrics 1.0 (without process_*
        and OpenMetrics' `# EOF`, which the server adds): both join the same cached per-target sample lines (a
        sample line is written alike in both); only the family headers differ."""
        started = time.perf_counter()
        self.clock.scraped(time.monotonic())
        body = self._render(openmetrics)
        self.status.render_seconds = time.perf_counter() - started
        return body

    def _render(self, openmetrics: bool) -> bytes:
        states = list(self.states())
        owners: list[Owners] = []  # the join's input, computed once, and only if a target needs it

        def owners_once() -> Owners:
            if not owners:
                owners.append(process_owners(states))
            return owners[0]

        raw = passthrough_families(states)
        own: dict[str, list[str]] = {}
        for key, suffix, labels, value in exporter_samples(self.status):
            own.setdefault(key, []).append(_line(f"{self.namespace}_{BY_KEY[key].name}" + suffix, labels, value))
        exporter_lines = {key: "".join(parts).encode("utf-8") for key, parts in own.items()}
        per_target = [exporter_lines] + [self._target_lines(state, owners_once) for state in states]
        live = {state.target.name for state in states}
        for name in [n for n in self._cache if n not in live]:
            del self._cache[name]  # targets removed by a reload
        keys: set[str] = set()
        keys.update(*per_target)
        out: list[bytes] = []
        for key in sorted(keys, key=_order):
            header = family_header(self.namespace, key, raw)
            if header is None:
                continue
            out.append(_family_header(key, *header, openmetrics))
            out.extend([chunk for chunk in [lines.get(key) for lines in per_target] if chunk is not None])
        return b"".join(out)


def _family_header(key: str, name: str, kind: str, help_text: str, openmetrics: bool) -> bytes:
    """`# HELP` and `# TYPE` lines of a family. Text 0.0.4 names a counter family with its `_total` and
    escapes `\\` and newlines in HELP; OpenMetrics names it without `_total`, says `unknown` for untyped
    and escapes double quotes too (what prometheus_client writes for each format)."""
    own = key in BY_KEY
    if own:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
    # a pass-through family keeps the engine's HELP, still escaped as on the text-format wire
    if openmetrics:
        help_text = help_text.replace('"', r"\"")
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]
        kind = "unknown" if kind == "untyped" else kind
    elif own:
        name += BY_KEY[key].suffix
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()


# The exporter's own process_* families, as prometheus_client's ProcessCollector writes them (names,
# HELP, types), for the text format without importing prometheus_client at all.
PROCESS_FAMILIES = (
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
)


def process_exposition(openmetrics: bool = False) -> bytes:
    """process_* from /proc/self (nothing where /proc is not there), in either format."""
    facts = own_process()
    if facts is None:
        return b""
    out = []
    for (name, kind, help_text), value in zip(PROCESS_FAMILIES, facts, strict=True):
        family = name[:-6] if openmetrics and kind == "counter" else name
        out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n{name} {_go_float(value)}\n")
    return "".join(out).encode("utf-8")
