"""Per-target state, split by concern, and the rules that apply one poll's observation to it.

- `PollHealth`: did the polls work (up, errors by reason, durations, readiness);
- `EngineLife`: the engine process and its models' lifecycles (restarts, process start, load timers);
- `EngineReport`: what the engine reported (per-model values and windows, info, target series).

Pollers write here (one writer per target); the renderers only read. The maths lives in
exporter/derive; this module decides *when* to apply it (restarts reseed windows, vanished models
are dropped, the series cap holds). `record_success`/`record_failure` return what changed
(`PollEvents`), which the poller logs.
"""

from __future__ import annotations

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
from .passthrough import RawFamily, families


@dataclass
class PollEvents:
    """What one poll changed, for the poller's log lines."""

    came_up: bool = False  # the previous poll had failed (or there was none)
    went_down: bool = False  # a failure that is news: first one, or a new reason
    readiness_changed: bool = False
    restarted: bool = False
    notices: list[str] = field(default_factory=list)  # engine conditions seen for the first time
    loads: list[tuple[str, LoadRecord]] = field(default_factory=list)  # (model, load) completed this poll
    failed: list[str] = field(default_factory=list)  # models whose load failed this poll


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

    def clear_exposed(self) -> None:
        """Nothing to show now (a failed poll, a loading engine); windows and history are kept."""
        self.models.clear()
        self.series = []
        self.passthrough = []


def sanitise(sample: ModelSample) -> None:
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

    # ------------------------------------------------------------------ writes

    def record_failure(self, error: PollError, now: float, duration: float) -> PollEvents:
        health = self.health
        events = PollEvents(went_down=health.up or health.last_error is None or health.last_error[0] != error.reason)
        health.polls += 1
        self.version += 1
        health.up = False
        self.report.series = []
        self.report.passthrough = []
        health.last_poll_duration = duration
        health.last_error = (error.reason, str(error))
        health.errors[error.reason] += 1
        if events.went_down:
            self.events.append((now, f"poll failed: {error.reason.value}: {error}"))
        if error.reason is Reason.CONNECT:
            # Nothing listening: the engine is down or not started yet (vLLM while loading).
            events.readiness_changed = health.readiness is not Readiness.DOWN
            health.readiness = Readiness.DOWN
            self.life.last_refused = now
            for lifecycle in self.life.lifecycles.values():
                before = lifecycle.failures
                lifecycle.gone(now)
                if lifecycle.failures > before:
                    events.failed.append(lifecycle.model)
        self._record_failed_loads(now, events)
        return events

    def _record_failed_loads(self, now: float, events: PollEvents) -> None:
        self.events.extend((now, f"model {model or '?'} failed to load") for model in events.failed)

    def record_success(self, obs: Observation, now: float, duration: float) -> PollEvents:
        """Apply one observation; returns what changed."""
        self.last_observation = (now, obs)
        events = self._record_success(obs, now, duration)
        if events.came_up:
            self.events.append((now, f"up ({obs.readiness.value})"))
        elif events.readiness_changed:
            self.events.append((now, f"readiness: {obs.readiness.value}"))
        self.events.extend((now, f"notice: {notice}") for notice in events.notices)
        self._record_failed_loads(now, events)
        self.events.extend(
            (
                now,
                f"model {model or '?'} ready ({load.kind})"
                + (f" after {load.seconds:.3f}s (basis {load.basis})" if load.seconds is not None else ""),
            )
            for model, load in events.loads
        )
        return events

    def _record_success(self, obs: Observation, now: float, duration: float) -> PollEvents:
        health, life, report = self.health, self.life, self.report
        events = PollEvents(came_up=not health.up, readiness_changed=health.readiness is not obs.readiness)
        health.polls += 1
        self.version += 1
        health.up = True
        health.last_poll_duration = duration
        health.last_success = now
        if events.came_up:
            health.last_error = None
        events.notices = [n for n in obs.notices if n not in life.notices_seen]
        life.notices_seen.update(events.notices)
        life.endpoints = dict(obs.endpoints)
        if obs.process_start_time is not None:
            life.process_start = (obs.process_start_time, obs.process_start_basis or "unknown")
        life.process_pid = obs.process_pid
        if obs.detected_engine is not None:
            life.detected_engine = obs.detected_engine

        if self._detect_restart(obs):
            events.restarted = True
            life.restarts += 1
            for lifecycle in life.lifecycles.values():
                lifecycle.restarted()
            for model in report.models.values():
                model.window.reseed()
            for estimator in report.estimators.values():
                estimator.reseed()
            events.notices.append("engine restart detected: windows reseeded")
        if obs.instance_id is not None:
            life.instance_id = obs.instance_id

        health.readiness = obs.readiness
        events.loads, events.failed = self._apply_lifecycle(obs, now)
        if obs.readiness is not Readiness.READY:
            # Loading or dead: there are no model values to show, and windows must not bridge the gap.
            report.clear_exposed()
            return events

        report.info = obs.info
        report.passthrough = self._passthrough(obs)
        for metric in obs.mapping_misses:
            report.mapping_misses[metric] = report.mapping_misses.get(metric, 0) + 1
        report.series = obs.series[: self.target.max_series]
        report.series_dropped += len(obs.series) - len(report.series)
        self._apply_models(obs, now)
        return events

    def _passthrough(self, obs: Observation) -> list[RawFamily]:
        if obs.passthrough_text is None:
            return []
        reserved = frozenset({"target", "engine", "model", *dict(self.target.labels)})
        kept, dropped = families(obs.passthrough_text, obs.passthrough_prefix, reserved, self.target.max_series)
        obs.passthrough_text = None  # the payload's text is not kept (the debug view keeps this observation)
        self.report.series_dropped += dropped
        return kept

    def _apply_lifecycle(self, obs: Observation, now: float) -> tuple[list[tuple[str, LoadRecord]], list[str]]:
        """Feed each model's status to its lifecycle; returns the loads completed and the loads failed."""
        life = self.life
        loads: list[tuple[str, LoadRecord]] = []
        failed: list[str] = []
        if not obs.lifecycle:
            return loads, failed
        life.model_states = obs.model_states
        kept: dict[str, ModelLifecycle] = {}
        for slot, status in obs.lifecycle.items():
            lifecycle = life.lifecycles.get(slot)
            if (
                slot == ""
                and lifecycle is not None
                and status.model
                and lifecycle.model
                and status.model != lifecycle.model
            ):
                # The engine now serves another model: each model keeps its own history.
                successor = life.history.pop(status.model, None) or ModelLifecycle(KIND_START)
                successor.take_over(lifecycle)
                lifecycle.retire()
                life.history[lifecycle.model] = lifecycle
                while len(life.history) > HISTORY_KEPT:
                    life.history.pop(next(iter(life.history)))
                lifecycle = successor
            if lifecycle is None:
                lifecycle = ModelLifecycle(KIND_START if slot == "" else KIND_LOAD)
                if slot == "" and life.last_refused is not None:
                    lifecycle.gone(life.last_refused)  # seen not running: what comes next is a start
                elif status.appeared:
                    lifecycle.gone(now)  # absent from the engine's last answer: this is a load seen happening
            before = lifecycle.failures
            loads.extend((lifecycle.model, load) for load in lifecycle.observe(now, status))
            if lifecycle.failures > before:
                failed.append(lifecycle.model)
            kept[slot] = lifecycle
        life.lifecycles = kept  # models no longer listed by the engine are forgotten
        return loads, failed

    def _detect_restart(self, obs: Observation) -> bool:
        life = self.life
        if obs.instance_id is not None and life.instance_id is not None and obs.instance_id != life.instance_id:
            return True
        for name, sample in obs.models.items():
            previous = self.report.previous.get(name)
            if previous is not None and went_backwards(previous, sample):
                return True
        return False

    def _apply_models(self, obs: Observation, now: float) -> None:
        report = self.report
        budget = self.target.max_series
        kept: dict[str, ModelValues] = {}
        for name in sorted(obs.models):
            sample = obs.models[name]
            sanitise(sample)
            probe = obs.queue_probes.get(name)
            if probe is not None and "token_queue_latency" not in sample.histograms:
                estimator = report.estimators.setdefault(name, QueueWaitEstimator())
                estimator.observe(now, probe)
                sample.histograms["token_queue_latency"] = estimator.histogram()
            for key, hist in list(sample.histograms.items()):
                if not histogram_is_valid(hist):
                    del sample.histograms[key]  # hostile or broken: expose nothing rather than nonsense
            cost = len(sample.values) + sum(len(h.buckets) + 2 for h in sample.histograms.values()) + 8
            if cost > budget:
                report.series_dropped += cost
                continue
            budget -= cost
            model = report.models.get(name) or ModelValues(SlidingWindow(self.target.window))
            model.latest = sample
            report.previous[name] = sample
            model.window.add(now, snapshot(sample))
            model.derived = windowed_values(model.window)
            kept[name] = model
        report.models = kept  # models that vanished from the payload vanish from /metrics
        report.estimators = {name: est for name, est in report.estimators.items() if name in kept}
        report.previous = {name: sample for name, sample in report.previous.items() if name in kept}
        report.series_dropped += obs.dropped_series
