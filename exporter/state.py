"""Per-target state, split by concern, and the rules that apply one poll's observation to it.

- `PollHealth`: did the polls work (up, errors by reason, durations, readiness);
- `EngineLife`: the engine process and its models' lifecycles (restarts, process start, load timers);
- `EngineReport`: what the engine reported (per-model values and windows, info, target series).

Pollers write here (one writer per target); the renderers only read. The maths lives in
exporter/derive; this module decides *when* to apply it (restarts reseed windows, vanished models
are dropped, the series cap holds). Each concern owns the rules that change it (`PollHealth.succeeded`,
`EngineLife.apply`, `EngineReport.apply`); `TargetState.record_success`/`record_failure` only orchestrate
them and return what changed (`PollEvents`), whose `describe()` is the one wording of the poller's log lines
and the debug view's events. The observation a source returned is never changed here.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

from .catalogue import BY_KEY
from .config import TargetConfig
from .derive.lifecycle import KIND_LOAD, KIND_START, LoadRecord, ModelLifecycle
from .derive.maths import histogram_is_valid
from .derive.queue_estimate import QueueWaitEstimator
from .derive.window import SlidingWindow
from .derive.windowed import Snapshot, snapshot, windowed_values
from .observation import (
    InfoSample,
    LabelPairs,
    ModelSample,
    ModelState,
    Observation,
    PollError,
    Readiness,
    Reason,
    SeriesSample,
)
from .passthrough import RawFamily


@dataclass
class PollEvents:
    """What one poll changed; `describe()` words it once, for the log and for the debug view."""

    readiness: str = ""  # the readiness the poll found (a successful poll)
    error: str = ""  # "<reason>: <message>" of a failed poll
    came_up: bool = False  # the previous poll had failed (or there was none)
    went_down: bool = False  # a failure that is news: first one, or a new reason
    readiness_changed: bool = False
    restarted: bool = False
    notices: list[str] = field(default_factory=list)  # engine conditions seen for the first time
    loads: list[tuple[str, LoadRecord]] = field(default_factory=list)  # (model, load) completed this poll
    failed: list[str] = field(default_factory=list)  # models whose load failed this poll

    def describe(self) -> list[tuple[int, str, bool]]:
        """(log level, text, whether it is an up/down/readiness change) for each thing worth saying."""
        out: list[tuple[int, str, bool]] = []
        if self.error:
            if self.went_down:
                out.append((logging.WARNING, f"down: {self.error}", True))
        elif self.came_up:
            out.append((logging.INFO, f"up ({self.readiness})", True))
        elif self.readiness_changed:
            out.append((logging.INFO, f"readiness: {self.readiness}", True))
        out.extend((logging.WARNING, f"notice: {notice}", False) for notice in self.notices)
        out.extend((logging.WARNING, f"model {model or '?'} failed to load", False) for model in self.failed)
        for model, load in self.loads:
            took = f" after {load.seconds:.3f}s (basis {load.basis})" if load.seconds is not None else ""
            out.append((logging.INFO, f"model {model or '?'} ready ({load.kind}){took}", False))
        return out


@dataclass
class PollHealth:
    up: bool = False
    readiness: Readiness | None = None
    polls: int = 0
    last_poll_duration: float | None = None
    last_success: float | None = None
    last_error: tuple[Reason, str] | None = None
    errors: dict[Reason, int] = field(default_factory=lambda: {reason: 0 for reason in Reason})

    @property
    def absent(self) -> bool:
        """Nothing was ever there: no poll succeeded since the exporter started, and the last one found
        nothing to talk to (connection refused; for nvml, no driver or no GPU)."""
        return (
            self.last_success is None
            and self.last_error is not None
            and self.last_error[0] in (Reason.CONNECT, Reason.OTHER)
        )

    def succeeded(self, now: float, duration: float, readiness: Readiness) -> tuple[bool, bool]:
        """A poll that worked; returns (came up, readiness changed)."""
        came_up, changed = not self.up, self.readiness is not readiness
        self.polls += 1
        self.up = True
        self.last_poll_duration = duration
        self.last_success = now
        self.readiness = readiness
        if came_up:
            self.last_error = None
        return came_up, changed

    def failed(self, error: PollError, duration: float) -> bool:
        """A poll that failed; returns whether that is news (the first failure, or a new reason)."""
        news = self.up or self.last_error is None or self.last_error[0] != error.reason
        self.polls += 1
        self.up = False
        self.last_poll_duration = duration
        self.last_error = (error.reason, str(error))
        self.errors[error.reason] += 1
        if error.reason is Reason.CONNECT:
            self.readiness = Readiness.DOWN  # nothing listening: the engine is down or not started yet
        return news


@dataclass
class EngineLife:
    restarts: int = 0
    instance_id: str | None = None  # identifies one engine process life
    process_start: tuple[float, str] | None = None  # (Unix time, basis)
    process_pid: int | None = None
    endpoints: dict[str, bool] = field(default_factory=dict)
    notices_seen: set[str] = field(default_factory=set)
    # Model lifecycles by slot ("" for a single-model engine's model, else the router's model id).
    lifecycles: dict[str, ModelLifecycle] = field(default_factory=dict)
    # Models a single-model engine served before (restarted with another model): their counts continue
    # when they come back, and stay exposed meanwhile (at most HISTORY_KEPT, oldest dropped first).
    history: dict[str, ModelLifecycle] = field(default_factory=dict)
    model_states: tuple[ModelState, ...] = ()  # the states the engine can report
    last_refused: float | None = None  # the last poll that found nothing listening
    detected_engine: str | None = None  # `engine: auto`: what the target was identified as

    def model_pids(self, models: dict[str, ModelValues]) -> dict[int, str]:
        """Engine processes the exporter found: pid → the model it serves."""
        pids = {life.pid: life.model for life in self.lifecycles.values() if life.pid is not None}
        if self.process_pid is not None and self.process_pid not in pids:
            pids[self.process_pid] = next(iter(models), "")
        return pids

    def apply(self, obs: Observation, now: float, counters_went_back: bool, events: PollEvents) -> None:
        """One answer from the engine: its process, restarts (a new process identity, or counters that went
        back), and each model's lifecycle; what changed goes into `events`."""
        events.notices = [n for n in obs.notices if n not in self.notices_seen]
        self.notices_seen.update(events.notices)
        self.endpoints = dict(obs.endpoints)
        if obs.process_start_time is not None:
            self.process_start = (obs.process_start_time, obs.process_start_basis or "unknown")
        self.process_pid = obs.process_pid
        if obs.detected_engine is not None:
            self.detected_engine = obs.detected_engine
        new_process = obs.instance_id is not None and self.instance_id not in (None, obs.instance_id)
        if new_process or counters_went_back:
            events.restarted = True
            self.restarts += 1
            for lifecycle in self.lifecycles.values():
                lifecycle.restarted()
        if obs.instance_id is not None:
            self.instance_id = obs.instance_id
        events.loads, events.failed = self._apply_lifecycles(obs, now)

    def refused(self, now: float) -> list[str]:
        """Nothing listened: every model that was loading failed; returns those models."""
        self.last_refused = now
        failed = []
        for lifecycle in self.lifecycles.values():
            before = lifecycle.failures
            lifecycle.gone(now)
            if lifecycle.failures > before:
                failed.append(lifecycle.model)
        return failed

    def _apply_lifecycles(self, obs: Observation, now: float) -> tuple[list[tuple[str, LoadRecord]], list[str]]:
        """Feed each model's status to its lifecycle; returns the loads completed and the loads failed."""
        loads: list[tuple[str, LoadRecord]] = []
        failed: list[str] = []
        if not obs.lifecycle:
            return loads, failed
        self.model_states = obs.model_states
        kept: dict[str, ModelLifecycle] = {}
        for slot, status in obs.lifecycle.items():
            lifecycle = self.lifecycles.get(slot)
            if (
                slot == ""
                and lifecycle is not None
                and status.model
                and lifecycle.model
                and status.model != lifecycle.model
            ):
                # The engine now serves another model: each model keeps its own history.
                successor = self.history.pop(status.model, None) or ModelLifecycle(KIND_START)
                successor.take_over(lifecycle)
                lifecycle.retire()
                self.history[lifecycle.model] = lifecycle
                while len(self.history) > HISTORY_KEPT:
                    self.history.pop(next(iter(self.history)))
                lifecycle = successor
            if lifecycle is None:
                lifecycle = ModelLifecycle(KIND_START if slot == "" else KIND_LOAD)
                if slot == "" and self.last_refused is not None:
                    lifecycle.gone(self.last_refused)  # seen not running: what comes next is a start
                elif status.appeared:
                    lifecycle.gone(now)  # absent from the engine's last answer: this is a load seen happening
            before = lifecycle.failures
            loads.extend((lifecycle.model, load) for load in lifecycle.observe(now, status))
            if lifecycle.failures > before:
                failed.append(lifecycle.model)
            kept[slot] = lifecycle
        self.lifecycles = kept  # models no longer listed by the engine are forgotten
        return loads, failed


@dataclass
class ModelValues:
    window: SlidingWindow[Snapshot]
    latest: ModelSample = field(default_factory=ModelSample)
    derived: dict[tuple[str, LabelPairs], float] = field(default_factory=dict)


@dataclass
class EngineReport:
    models: dict[str, ModelValues] = field(default_factory=dict)
    info: list[InfoSample] = field(default_factory=list)
    series: list[SeriesSample] = field(default_factory=list)
    passthrough: list[RawFamily] = field(default_factory=list)
    mapping_misses: dict[str, int] = field(default_factory=dict)
    series_dropped: int = 0
    estimators: dict[str, QueueWaitEstimator] = field(default_factory=dict)
    # Last sample per model, kept across loading/down gaps to spot counters that went back.
    previous: dict[str, ModelSample] = field(default_factory=dict)

    def hide(self) -> None:
        """A failed poll: no target series or pass-through now; models keep their windows (a transient
        failure must not restart them), and nothing of theirs is exposed while the target is down."""
        self.series = []
        self.passthrough = []

    def clear_exposed(self) -> None:
        """A loading or dead engine: nothing to show, and windows must not bridge the gap (history, the
        previous samples and the mapping misses are kept)."""
        self.hide()
        self.models.clear()

    def went_backwards(self, obs: Observation) -> bool:
        """A counter or histogram count of some model decreased since its previous sample."""
        return any(
            went_backwards(previous, obs.models[name]) for name, previous in self.previous.items() if name in obs.models
        )

    def reseed(self) -> None:
        """The engine restarted: windows and queue estimators start again from the next sample."""
        for model in self.models.values():
            model.window.reseed()
        for estimator in self.estimators.values():
            estimator.reseed()

    def apply(self, obs: Observation, now: float, target: TargetConfig) -> None:
        """A ready engine's answer: info, pass-through, mapping misses, target series and per-model values
        (sanitised copies: the observation stays as the source returned it), within the target's cap."""
        self.info = obs.info
        self.passthrough = list(obs.passthrough)
        self.series_dropped += obs.passthrough_dropped
        for metric in obs.mapping_misses:
            self.mapping_misses[metric] = self.mapping_misses.get(metric, 0) + 1
        self.series = obs.series[: target.max_series]
        self.series_dropped += len(obs.series) - len(self.series)
        budget = target.max_series
        kept: dict[str, ModelValues] = {}
        for name in sorted(obs.models):
            sample = ModelSample(dict(obs.models[name].values), dict(obs.models[name].histograms))
            drop_implausible(sample)
            probe = obs.queue_probes.get(name)
            if probe is not None and "token_queue_latency" not in sample.histograms:
                estimator = self.estimators.setdefault(name, QueueWaitEstimator())
                estimator.observe(now, probe)
                sample.histograms["token_queue_latency"] = estimator.histogram()
            for key, hist in list(sample.histograms.items()):
                if not histogram_is_valid(hist):
                    del sample.histograms[key]  # hostile or broken: expose nothing rather than nonsense
            cost = len(sample.values) + sum(len(h.buckets) + 2 for h in sample.histograms.values()) + 8
            if cost > budget:
                self.series_dropped += cost
                continue
            budget -= cost
            model = self.models.get(name) or ModelValues(SlidingWindow(target.window))
            model.latest = sample
            self.previous[name] = sample
            model.window.add(now, snapshot(sample))
            model.derived = windowed_values(model.window)
            kept[name] = model
        self.models = kept  # models that vanished from the payload vanish from /metrics
        self.estimators = {name: est for name, est in self.estimators.items() if name in kept}
        self.previous = {name: sample for name, sample in self.previous.items() if name in kept}
        self.series_dropped += obs.dropped_series


def drop_implausible(sample: ModelSample) -> None:
    """Drop values no engine should send: non-finite numbers, negative counters, ratios and counts, and
    ratios above 1 (a `kv_cache_usage_perc 5.0` is a lie, not a full cache)."""
    for key in [
        k
        for k, v in sample.values.items()
        if not math.isfinite(v) or (v < 0 and BY_KEY[k[0]].non_negative) or (v > 1.0 + 1e-9 and k[0].endswith("_ratio"))
    ]:
        del sample.values[key]


def went_backwards(previous: ModelSample, current: ModelSample) -> bool:
    """A counter or histogram count that decreased means the engine restarted."""
    for key, value in current.values.items():
        if BY_KEY[key[0]].type == "counter":
            before = previous.values.get(key)
            if before is not None and value < before:
                return True
    for hist_key, hist in current.histograms.items():
        before_hist = previous.histograms.get(hist_key)
        if before_hist is not None and hist.count < before_hist.count:
            return True
    return False


EVENTS_KEPT = 50
HISTORY_KEPT = 64  # models a single-model target served before, kept with their counts


class TargetState:
    def __init__(self, target: TargetConfig):
        self.target = target
        self.version = 0  # changes whenever anything exposed may have changed (renderers cache on it)
        self.health = PollHealth()
        self.life = EngineLife()
        self.report = EngineReport()
        # For the debug view (/debug/targets/<name>): the last observation as the source returned it, and
        # the last events (errors, state changes, loads, notices) with their Unix times.
        self.last_observation: tuple[float, Observation] | None = None
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENTS_KEPT)

    def retarget(self, target: TargetConfig) -> None:
        """Config reload with the same name and engine: keep history, take new settings (new labels show in
        both formats at once: the renderers' caches key on the version)."""
        self.target = target
        self.version += 1
        for model in self.report.models.values():
            model.window.seconds = target.window

    def model_pids(self) -> dict[int, str]:
        return self.life.model_pids(self.report.models)

    @property
    def engine(self) -> str:
        """The `engine` label: the configured engine, or for `engine: auto` the one it was identified as
        (`auto` until then)."""
        return self.life.detected_engine or self.target.engine

    # ------------------------------------------------------------------ writes (one poll each)

    def record_failure(self, error: PollError, now: float, duration: float) -> PollEvents:
        events = PollEvents(error=f"{error.reason.value}: {error}")
        events.went_down = self.health.failed(error, duration)
        self.version += 1
        self.report.hide()
        if error.reason is Reason.CONNECT:
            events.failed = self.life.refused(now)
        self.events.extend((now, text) for _, text, _ in events.describe())
        return events

    def record_success(self, obs: Observation, now: float, duration: float) -> PollEvents:
        """Apply one observation (left as it is); returns what changed."""
        self.last_observation = (now, obs)
        events = PollEvents(readiness=obs.readiness.value)
        events.came_up, events.readiness_changed = self.health.succeeded(now, duration, obs.readiness)
        self.version += 1
        self.life.apply(obs, now, self.report.went_backwards(obs), events)
        if events.restarted:
            self.report.reseed()
            events.notices.append("engine restart detected: windows reseeded")
        if obs.readiness is Readiness.READY:
            self.report.apply(obs, now, self.target)
        else:
            self.report.clear_exposed()  # loading or dead: no model values, and windows must not bridge the gap
        self.events.extend((now, text) for _, text, _ in events.describe())
        return events
