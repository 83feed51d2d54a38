"""Per-target state: the latest observation plus everything derived from the history of them.

Pollers write here (one writer per target); the collector only reads. All the
maths lives in exporter/derive; this module decides *when* to apply it
(restarts reseed windows, vanished models are dropped, the series cap holds).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from .catalogue import BY_KEY
from .config import TargetConfig
from .derive.lifecycle import KIND_LOAD, KIND_START, LoadRecord, ModelLifecycle
from .derive.maths import counter_delta, histogram_is_valid, rate, ratio_of_deltas
from .derive.queue_estimate import QueueWaitEstimator
from .derive.window import SlidingWindow
from .observation import (
    Histogram,
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

log = logging.getLogger("llm_exporter.state")

RATIO_PAIRS = (("kv_cache_hit_tokens", "kv_cache_query_tokens", "tokens"),
               ("kv_cache_hit_blocks", "kv_cache_query_blocks", "blocks"))
RATE_KEYS = (("prompt_tokens", "prompt_tokens_rate"), ("generation_tokens", "generation_tokens_rate"))


# What the windowed derivations read from a sample; windows keep only this (a few floats per poll),
# not whole samples with their histograms.
WINDOW_COUNTERS = ("kv_cache_hit_tokens", "kv_cache_query_tokens", "kv_cache_hit_blocks", "kv_cache_query_blocks",
                   "prompt_tokens", "generation_tokens")
Snapshot = dict[str, float]


def snapshot(sample: ModelSample) -> Snapshot:
    snap = {key: value for key in WINDOW_COUNTERS if (value := sample.get(key)) is not None}
    queue = sample.histograms.get("token_queue_latency")
    if queue is not None:
        snap["queue_sum"], snap["queue_count"] = queue.sum, queue.count
    return snap


@dataclass
class ModelValues:
    window: SlidingWindow[Snapshot]
    latest: ModelSample = field(default_factory=ModelSample)
    derived: dict[tuple[str, LabelPairs], float] = field(default_factory=dict)


def sanitise(sample: ModelSample) -> None:
    """Drop values no engine should send: non-finite numbers, negative counters or ratios."""
    for key in [k for k, v in sample.values.items() if not _plausible(BY_KEY[k[0]].type, k[0], v)]:
        del sample.values[key]


def _plausible(kind: str, key: str, value: float) -> bool:
    if not math.isfinite(value):
        return False
    if kind == "counter" or key.endswith("_ratio") or key in ("requests_running", "requests_waiting"):
        return value >= 0
    return True


def went_backwards(previous: ModelSample, current: ModelSample) -> bool:
    """A counter or histogram count that decreased means the engine restarted."""
    for key, value in current.values.items():
        if BY_KEY[key[0]].type == "counter":
            before = previous.values.get(key)
            if before is not None and value < before:
                return True
    for key, hist in current.histograms.items():
        before_hist = previous.histograms.get(key)
        if before_hist is not None and hist.count < before_hist.count:
            return True
    return False


def derive(window: SlidingWindow[Snapshot]) -> dict[tuple[str, LabelPairs], float]:
    """Windowed values from the first and last snapshot of a model's window."""
    first, last = window.first(), window.last()
    if first is None or last is None or first is last:
        return {}
    (t0, s0), (t1, s1) = first, last
    out: dict[tuple[str, LabelPairs], float] = {}
    for hits, queries, unit in RATIO_PAIRS:
        ratio = ratio_of_deltas(counter_delta(s0.get(hits), s1.get(hits)),
                                counter_delta(s0.get(queries), s1.get(queries)))
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


class TargetState:
    def __init__(self, target: TargetConfig):
        self.target = target
        self.up = False
        self.readiness: Readiness | None = None
        self.last_poll_duration: float | None = None
        self.last_success: float | None = None
        self.last_error: tuple[Reason, str] | None = None
        self.poll_errors: dict[Reason, int] = {reason: 0 for reason in Reason}
        self.restarts = 0
        self.polls = 0
        self.version = 0  # changes whenever anything exposed may have changed (renderers cache on it)
        self.series_dropped = 0
        self.mapping_misses: dict[str, int] = {}
        self.models: dict[str, ModelValues] = {}
        self.info: list[InfoSample] = []
        self.series: list[SeriesSample] = []
        self.passthrough: list = []
        self.process_pid: int | None = None
        self.endpoints: dict[str, bool] = {}
        # Model lifecycles by slot ("" for a single-model engine's model, else the router's model id).
        self.lifecycles: dict[str, ModelLifecycle] = {}
        self.model_states: tuple[ModelState, ...] = ()  # the states the engine can report
        self.last_refused: float | None = None  # the last poll that found nothing listening
        self.instance_id: str | None = None
        self.process_start: tuple[float, str] | None = None
        self.notices_seen: set[str] = set()
        self.estimators: dict[str, QueueWaitEstimator] = {}
        # Last sample per model, kept across loading/down gaps to spot counters that went back.
        self.previous: dict[str, ModelSample] = {}

    def retarget(self, target: TargetConfig) -> None:
        """Config reload with the same name and engine: keep history, take new settings."""
        self.target = target
        for model in self.models.values():
            model.window.seconds = target.window

    def model_pids(self) -> dict[int, str]:
        """Engine processes the exporter found: pid → the model it serves."""
        pids = {lifecycle.pid: lifecycle.model for lifecycle in self.lifecycles.values()
                if lifecycle.pid is not None}
        if self.process_pid is not None and self.process_pid not in pids:
            pids[self.process_pid] = next(iter(self.models), "")
        return pids

    # ------------------------------------------------------------------ writes

    def record_failure(self, error: PollError, now: float, duration: float) -> bool:
        """Returns True when this failure is news (worth one log line)."""
        news = self.up or self.last_error is None or self.last_error[0] != error.reason
        self.polls += 1
        self.version += 1
        self.up = False
        self.series = []
        self.passthrough = []
        self.last_poll_duration = duration
        self.last_error = (error.reason, str(error))
        self.poll_errors[error.reason] += 1
        if error.reason is Reason.CONNECT:
            # Nothing listening: the engine is down or not started yet (vLLM while loading).
            self.readiness = Readiness.DOWN
            self.last_refused = now
            for lifecycle in self.lifecycles.values():
                lifecycle.gone(now)
        return news

    def record_success(self, obs: Observation, now: float, duration: float) -> tuple[list[str], list[tuple[str, LoadRecord]]]:
        """Apply one observation. Returns new notices worth one log line each, and the model loads it
        completed (each with the model it loaded in `model`)."""
        recovered = not self.up
        self.polls += 1
        self.version += 1
        self.up = True
        self.last_poll_duration = duration
        self.last_success = now
        if recovered:
            self.last_error = None
        new_notices = [n for n in obs.notices if n not in self.notices_seen]
        self.notices_seen.update(new_notices)
        self.endpoints = dict(obs.endpoints)
        if obs.process_start_time is not None:
            self.process_start = (obs.process_start_time, obs.process_start_basis or "unknown")
        self.process_pid = obs.process_pid

        restarted = self._detect_restart(obs)
        if restarted:
            self.restarts += 1
            for lifecycle in self.lifecycles.values():
                lifecycle.restarted()
            for model in self.models.values():
                model.window.reseed()
            for estimator in self.estimators.values():
                estimator.reseed()
            new_notices.append("engine restart detected: windows reseeded")
        if obs.instance_id is not None:
            self.instance_id = obs.instance_id

        self.readiness = obs.readiness
        loads = self._apply_lifecycle(obs, now)
        if obs.readiness is not Readiness.READY:
            # Loading or dead: there are no model values to show, and windows must not
            # bridge across the gap.
            self.models.clear()
            self.series = []
            self.passthrough = []
            return new_notices, loads

        self.info = obs.info
        self.passthrough = obs.passthrough
        for metric in obs.mapping_misses:
            self.mapping_misses[metric] = self.mapping_misses.get(metric, 0) + 1
        self.series = obs.series[: self.target.max_series]
        self.series_dropped += len(obs.series) - len(self.series)
        self._apply_models(obs, now)
        return new_notices, loads

    def _apply_lifecycle(self, obs: Observation, now: float) -> list[tuple[str, LoadRecord]]:
        loads: list[tuple[str, LoadRecord]] = []
        if not obs.lifecycle:
            return loads
        self.model_states = obs.model_states
        kept: dict[str, ModelLifecycle] = {}
        for slot, status in obs.lifecycle.items():
            lifecycle = self.lifecycles.get(slot)
            if lifecycle is None:
                lifecycle = ModelLifecycle(KIND_START if slot == "" else KIND_LOAD)
                if slot == "" and self.last_refused is not None:
                    lifecycle.gone(self.last_refused)  # seen not running: what comes next is a start
            loads.extend((lifecycle.model, load) for load in lifecycle.observe(now, status))
            kept[slot] = lifecycle
        self.lifecycles = kept  # models no longer listed by the engine are forgotten
        return loads

    def _detect_restart(self, obs: Observation) -> bool:
        if obs.instance_id is not None and self.instance_id is not None and obs.instance_id != self.instance_id:
            return True
        for name, sample in obs.models.items():
            previous = self.previous.get(name)
            if previous is not None and went_backwards(previous, sample):
                return True
        return False

    def _apply_models(self, obs: Observation, now: float) -> None:
        budget = self.target.max_series
        kept: dict[str, ModelValues] = {}
        for name in sorted(obs.models):
            sample = obs.models[name]
            sanitise(sample)
            for key, hist in list(sample.histograms.items()):
                if not histogram_is_valid(hist):
                    del sample.histograms[key]  # hostile or broken: expose nothing rather than nonsense
            probe = obs.queue_probes.get(name)
            if probe is not None and "token_queue_latency" not in sample.histograms:
                estimator = self.estimators.setdefault(name, QueueWaitEstimator())
                estimator.observe(now, probe)
                sample.histograms["token_queue_latency"] = estimator.histogram()
            cost = len(sample.values) + sum(len(h.buckets) + 2 for h in sample.histograms.values()) + 8
            if cost > budget:
                self.series_dropped += cost
                continue
            budget -= cost
            model = self.models.get(name) or ModelValues(SlidingWindow(self.target.window))
            model.latest = sample
            self.previous[name] = sample
            model.window.add(now, snapshot(sample))
            model.derived = derive(model.window)
            kept[name] = model
        self.models = kept  # models that vanished from the payload vanish from /metrics
        self.estimators = {name: est for name, est in self.estimators.items() if name in kept}
        self.previous = {name: sample for name, sample in self.previous.items() if name in kept}
        self.series_dropped += obs.dropped_series

    def histogram(self, model: str, key: str) -> Histogram | None:
        state = self.models.get(model)
        return state.latest.histograms.get(key) if state else None
