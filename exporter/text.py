"""The wire format: text 0.0.4 (and OpenMetrics' headers) written from the sample stream (samples.py), with
each target's lines cached until the target's state changes (its next poll), so a scrape of 1,000 targets
joins cached bytes instead of formatting 150,000 samples (bench/RESULTS.md). Also the exporter's own
process_* families, written without prometheus_client."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable

from .catalogue import BY_KEY
from .join import Owners, process_owners
from .procinfo import own_process
from .samples import PASSTHROUGH, exporter_samples, family_header, go_float, order, passthrough_families, target_samples
from .state import TargetState
from .status import ExporterStatus


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


def _line(name: str, labels: dict[str, str], value: float) -> str:
    return _prefix(name, labels) + go_float(value) + "\n"


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
            lines.setdefault(key, []).append(_prefix(name + suffix, labels) + go_float(value) + "\n")
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
        for key in sorted(keys, key=order):
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
        out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n{name} {go_float(value)}\n")
    return "".join(out).encode("utf-8")
