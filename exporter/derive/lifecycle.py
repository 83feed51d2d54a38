"""Model lifecycle: which state a model is in, and every load it went through, with its duration.

Pure: `ModelLifecycle.observe()` takes one poll's `ModelStatus` (or None when the model or its
engine is gone) and returns the loads and failures that poll completed. The rules that keep a
load time from ever being wrong:

- A refused connection never starts the clock: nothing is running, so nothing is loading.
- The clock starts at the process start when the engine or /proc tells it (basis
  `process_start`); else at the first poll that saw the model loading, a lower bound (basis
  `first_seen_loading`); else, where the engine reports a loading state during the transition,
  at the last poll that saw the model before it (an upper bound: basis `poll_bracket`); else
  the load is counted but no duration is exported.
- Ready is the engine's own exact ready timestamp when it falls between the two polls, else the
  first poll that saw the model loaded. Every duration is therefore within one poll interval of
  the engine's own timeline.
- A model met already loaded (the exporter started after it) is not counted as a load; its
  duration comes from the engine's own timestamps when it has both (basis `engine_timestamps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..observation import ModelState, ModelStatus
from .maths import CumulativeHistogram

KIND_START = "start"  # process start to ready
KIND_LOAD = "load"  # a router or on-demand load of a model into a new child process
KIND_WAKE = "wake"  # sleeping to ready

BASIS_PROCESS_START = "process_start"
BASIS_FIRST_SEEN_LOADING = "first_seen_loading"
BASIS_POLL_BRACKET = "poll_bracket"
BASIS_ENGINE_TIMESTAMPS = "engine_timestamps"
BASIS_ENGINE_REPORTED = "engine_reported"
BASIS_ENGINE_EVENTS = "engine_events"  # the engine's own event stream dated the load's start (llama.cpp router)

# Load-duration histogram buckets: 0.1 s to 1 h.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, math.inf)
MAX_LOAD_SECONDS = 7 * 86400.0  # anything longer is a clock problem, not a load
READY_SLACK = 0.05  # an exact ready stamp may precede the previous poll by scheduling noise


@dataclass(frozen=True)
class LoadRecord:
    kind: str
    seconds: float | None  # None: counted, but its duration cannot be known
    basis: str
    finished_at: float


@dataclass(frozen=True)
class _Pending:
    kind: str
    start: float
    basis: str


class ModelLifecycle:
    """The lifecycle of one model slot of a target (the single model of an engine process, or one
    model of a router)."""

    def __init__(self, fresh_kind: str = KIND_START) -> None:
        self.fresh_kind = fresh_kind
        self.state: ModelState | None = None
        self.model = ""  # the model name to show (a single-model engine learns it once ready)
        self.loads: dict[str, int] = {}
        self.durations: dict[str, CumulativeHistogram] = {}
        self.failures = 0
        self.unloads: dict[str, int] = {}  # by reason, where the engine tells it
        self.last: LoadRecord | None = None
        self.loaded_at: float | None = None
        self.pid: int | None = None
        self._pending: _Pending | None = None
        self._seen_t: float | None = None  # the previous observation
        self._ever_seen = False  # False until the first observation: a model met loaded was not seen loading
        self._loaded_process_start: float | None = None  # the process start of the last load seen

    # ------------------------------------------------------------------ inputs

    def gone(self, t: float) -> list[LoadRecord]:
        """The model (or its whole engine) is not there any more: connection refused, unlisted."""
        if self._pending is not None or self.state is ModelState.LOADING:
            self.failures += 1  # it was loading and its process went away
        self._pending = None
        self.state = None
        self.loaded_at = None
        self.pid = None
        self._seen_t = t
        self._ever_seen = True
        return []

    def take_over(self, other: ModelLifecycle) -> None:
        """This model now runs in `other`'s slot (a single-model engine restarted with another model): the
        transition in flight there (a load under way, what the last poll saw) is this model's."""
        self.state, self._pending = other.state, other._pending
        self._seen_t, self._ever_seen = other._seen_t, other._ever_seen
        self.pid = other.pid

    def retire(self) -> None:
        """No longer served (another model took its slot): its counts stay, nothing is in flight."""
        self.state, self._pending, self.loaded_at, self.pid = None, None, None, None

    def restarted(self) -> None:
        """A new engine process life was detected while it looked loaded all along."""
        if self.state is ModelState.LOADED:
            self.state = None
            self.loaded_at = None

    def observe(self, t: float, status: ModelStatus) -> list[LoadRecord]:
        previous, seen_t, ever_seen = self.state, self._seen_t, self._ever_seen
        self.state, self._seen_t, self._ever_seen = status.state, t, True
        if status.model:
            self.model = status.model
        if status.pid is not None:
            self.pid = status.pid
        elif status.state in (ModelState.UNLOADED, ModelState.FAILED, ModelState.DOWNLOADING):
            self.pid = None  # no process serves it now
        state = status.state
        if state is ModelState.LOADING:
            if self._pending is None:
                self._pending = self._start(previous, t, status)
            return []
        if state is ModelState.FAILED:
            if previous is not ModelState.FAILED and (previous is not None or self._pending is not None):
                self.failures += 1
            self._pending = None
            self.loaded_at = None
            return []
        if state is ModelState.UNLOADED and previous is ModelState.LOADED and status.unload_reason:
            self.unloads[status.unload_reason] = self.unloads.get(status.unload_reason, 0) + 1
        if state is not ModelState.LOADED:  # sleeping, unloaded, downloading
            self._pending = None
            self.loaded_at = None
            return []
        if previous is ModelState.LOADED:
            return []
        if (
            previous is None
            and self._pending is None
            and status.process_start is not None
            and status.process_start == self._loaded_process_start
        ):
            # Back after a gap (a refused poll) with the same process: nothing was loaded again.
            self.loaded_at = self.last.finished_at if self.last is not None else t
            return []
        return [self._finish(previous, seen_t, t, status, met_loaded=not ever_seen)]

    # ------------------------------------------------------------------ maths

    def _kind(self, previous: ModelState | None) -> str:
        return KIND_WAKE if previous is ModelState.SLEEPING else self.fresh_kind

    def _start(self, previous: ModelState | None, t: float, status: ModelStatus) -> _Pending:
        kind = self._kind(previous)
        start = status.process_start
        if kind != KIND_WAKE and start is not None and start <= t:
            return _Pending(kind, start, BASIS_PROCESS_START)  # the spawn itself: a little before the event
        if status.load_started is not None and status.load_started <= t:
            return _Pending(kind, status.load_started, BASIS_ENGINE_EVENTS)
        return _Pending(kind, t, BASIS_FIRST_SEEN_LOADING)

    def _finish(
        self, previous: ModelState | None, seen_t: float | None, t: float, status: ModelStatus, met_loaded: bool
    ) -> LoadRecord:
        ready = t
        if (
            status.ready_time is not None
            and status.ready_exact
            and (seen_t is None or seen_t - READY_SLACK <= status.ready_time)
            and status.ready_time <= t
        ):
            ready = status.ready_time
        pending, self._pending = self._pending, None
        kind = pending.kind if pending is not None else self._kind(previous)
        seconds: float | None = None
        basis = ""
        if status.engine_load_seconds is not None and kind == KIND_START:
            seconds, basis = status.engine_load_seconds, BASIS_ENGINE_REPORTED
        elif pending is not None:
            seconds, basis = ready - pending.start, pending.basis
        elif met_loaded:
            if status.ready_time is not None and status.process_start is not None:
                seconds, basis = status.ready_time - status.process_start, BASIS_ENGINE_TIMESTAMPS
        elif (
            kind != KIND_WAKE
            and status.process_start is not None
            and seen_t is not None
            and status.process_start <= ready
        ):
            seconds, basis = ready - status.process_start, BASIS_PROCESS_START
        elif (
            status.load_started is not None
            and kind != KIND_WAKE
            and seen_t is not None
            and seen_t - READY_SLACK <= status.load_started <= ready
        ):
            seconds, basis = ready - status.load_started, BASIS_ENGINE_EVENTS  # began after the previous poll
        elif status.reports_loading and seen_t is not None:
            seconds, basis = ready - seen_t, BASIS_POLL_BRACKET
        if seconds is not None and not 0 <= seconds < MAX_LOAD_SECONDS:
            seconds, basis = None, ""
        record = LoadRecord(kind, seconds, basis, ready)
        self.loaded_at = ready
        self._loaded_process_start = status.process_start
        if not met_loaded:
            self.loads[kind] = self.loads.get(kind, 0) + 1
            if seconds is not None:
                self.durations.setdefault(kind, CumulativeHistogram(LOAD_BUCKETS)).add(seconds)
        if seconds is not None or not met_loaded:
            self.last = record
        return record
