"""The state's rules, concern by concern (PollHealth, EngineLife, EngineReport), what TargetState does
with them, that the observation a source returned is never changed, and the one wording of events."""

from __future__ import annotations

import logging
import math

from exporter.observation import (
    Histogram,
    ModelSample,
    ModelState,
    ModelStatus,
    Observation,
    PollError,
    QueueProbe,
    Readiness,
    Reason,
    SeriesSample,
)
from exporter.state import EngineLife, EngineReport, PollEvents, PollHealth, TargetState
from tests.support.pipeline import target_config

TARGET = target_config("vllm", "http://127.0.0.1:1", window="1m", max_series="40")


def sample(**values: float) -> ModelSample:
    out = ModelSample()
    for key, value in values.items():
        out.set(key, value)
    return out


def ready(models: dict[str, ModelSample] | None = None, **fields: object) -> Observation:
    return Observation(Readiness.READY, models=models or {}, **fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- PollHealth


def test_health_news_is_the_first_failure_or_a_new_reason_only():
    health = PollHealth()
    assert health.succeeded(10.0, 0.1, Readiness.READY) == (True, True)  # first success: came up, readiness known
    assert health.succeeded(11.0, 0.1, Readiness.READY) == (False, False)
    assert health.failed(PollError(Reason.TIMEOUT, "slow"), 0.5) is True
    assert health.failed(PollError(Reason.TIMEOUT, "slow"), 0.5) is False  # same reason: not news
    assert health.failed(PollError(Reason.CONNECT, "refused"), 0.0) is True  # a new reason is
    assert health.readiness is Readiness.DOWN  # nothing listening
    assert (health.errors[Reason.TIMEOUT], health.errors[Reason.CONNECT], health.polls) == (2, 1, 5)
    assert health.last_success == 11.0 and health.last_poll_duration == 0.0
    assert health.succeeded(12.0, 0.2, Readiness.LOADING) == (True, True)
    assert health.last_error is None


def test_health_absent_only_while_nothing_ever_answered():
    health = PollHealth()
    health.failed(PollError(Reason.CONNECT, "refused"), 0.0)
    assert health.absent
    health.succeeded(1.0, 0.1, Readiness.READY)
    health.failed(PollError(Reason.CONNECT, "refused"), 0.0)
    assert not health.absent  # it answered once: a missing engine now is down, not absent


# ---------------------------------------------------------------- EngineLife


def test_life_counts_a_restart_on_a_new_process_identity_or_counters_going_back():
    life = EngineLife()
    for instance, went_back, restarts in (("a", False, 0), ("a", False, 0), ("b", False, 1), ("b", True, 2)):
        events = PollEvents()
        life.apply(ready(instance_id=instance), 1.0, went_back, events)
        assert (life.restarts, events.restarted) == (restarts, restarts > 0 and (instance == "b"))
    events = PollEvents()
    life.apply(ready(), 2.0, False, events)  # no identity given: not a restart, the last one is kept
    assert life.restarts == 2 and life.instance_id == "b" and not events.restarted


def test_life_says_each_notice_once_and_records_the_process():
    life = EngineLife()
    first, second = PollEvents(), PollEvents()
    obs = ready(notices=("/slots disabled",), process_start_time=5.0, process_start_basis="proc", process_pid=42)
    life.apply(obs, 6.0, False, first)
    life.apply(obs, 7.0, False, second)
    assert (first.notices, second.notices) == (["/slots disabled"], [])
    assert life.process_start == (5.0, "proc") and life.process_pid == 42


def test_life_refused_fails_a_loading_model_and_the_next_answer_is_a_start():
    life = EngineLife()
    loading = ready(lifecycle={"": ModelStatus(ModelState.LOADING, model="m")}, model_states=(ModelState.LOADING,))
    life.apply(loading, 1.0, False, PollEvents())
    assert life.refused(2.0) == ["m"]  # the process went away while loading: one failure of m
    assert life.refused(3.0) == []  # and only one
    events = PollEvents()
    life.apply(ready(lifecycle={"": ModelStatus(ModelState.LOADED, model="m")}), 4.0, False, events)
    [(model, load)] = events.loads
    assert model == "m" and load.kind == "start"


# ---------------------------------------------------------------- EngineReport


def test_report_keeps_the_observation_as_the_source_returned_it():
    broken = Histogram(((1.0, 5.0), (math.inf, 3.0)), 1.0, 3.0)  # cumulative counts going down: invalid
    raw = sample(requests_running=-1.0, requests_waiting=2.0, kv_cache_usage_ratio=5.0)
    raw.set("prompt_tokens", math.inf)
    raw.histograms["request_latency"] = broken
    before = (dict(raw.values), dict(raw.histograms))
    obs = ready({"m": raw}, queue_probes={"m": QueueProbe(0.0, None)})
    report = EngineReport()
    report.apply(obs, 1.0, TARGET)
    kept = report.models["m"].latest
    assert dict(kept.values) == {("requests_waiting", ()): 2.0}  # the implausible values dropped...
    assert "request_latency" not in kept.histograms and "token_queue_latency" in kept.histograms
    assert (dict(raw.values), dict(raw.histograms)) == before  # ...from a copy: the observation is unchanged


def test_report_cap_vanishing_models_and_counters_going_back():
    report = EngineReport()
    series = [SeriesSample("gpu_utilization", (("gpu", str(i)),), 0.5) for i in range(50)]
    report.apply(ready({"a": sample(prompt_tokens=10.0), "b": sample(prompt_tokens=1.0)}, series=series), 1.0, TARGET)
    assert len(report.series) == 40 and report.series_dropped == 10  # the target's max_series
    assert set(report.models) == {"a", "b"}
    assert report.went_backwards(ready({"a": sample(prompt_tokens=9.0)}))
    assert not report.went_backwards(ready({"a": sample(prompt_tokens=11.0), "c": sample(prompt_tokens=0.0)}))
    report.apply(ready({"a": sample(prompt_tokens=11.0)}), 2.0, TARGET)
    assert set(report.models) == {"a"} and set(report.previous) == {"a"}  # b vanished from the payload


# ---------------------------------------------------------------- TargetState


def test_a_failed_poll_keeps_windows_a_loading_engine_does_not():
    state = TargetState(TARGET)
    state.record_success(ready({"m": sample(prompt_tokens=1.0)}), 1.0, 0.1)
    window = state.report.models["m"].window
    state.record_failure(PollError(Reason.TIMEOUT, "slow"), 2.0, 0.5)
    assert state.report.models["m"].window is window and not state.report.series  # kept for when it is back
    state.record_success(ready({"m": sample(prompt_tokens=2.0)}), 3.0, 0.1)
    assert state.report.models["m"].window is window
    state.record_success(Observation(Readiness.LOADING), 4.0, 0.1)
    assert state.report.models == {}  # loading: nothing shown, no window bridges the gap


def test_a_restart_reseeds_windows_and_says_so_once_in_log_and_events():
    state = TargetState(TARGET)
    state.record_success(ready({"m": sample(prompt_tokens=100.0)}, instance_id="1"), 1.0, 0.1)
    state.record_success(ready({"m": sample(prompt_tokens=150.0)}, instance_id="1"), 2.0, 0.1)
    events = state.record_success(ready({"m": sample(prompt_tokens=5.0)}, instance_id="2"), 3.0, 0.1)
    assert events.restarted and state.life.restarts == 1
    assert len(state.report.models["m"].window) == 1  # only the sample after the restart
    texts = [text for _, text in state.events]
    assert texts == ["up (ready)", "notice: engine restart detected: windows reseeded"]
    assert [text for _, text, _ in events.describe()] == texts[1:]  # the same words the poller logs


def test_events_are_worded_once():
    failed = PollEvents(error="timeout: slow", went_down=True, failed=["m"])
    assert failed.describe() == [
        (logging.WARNING, "down: timeout: slow", True),
        (logging.WARNING, "model m failed to load", False),
    ]
    assert PollEvents(error="timeout: slow").describe() == []  # the same failure again: nothing to say
    assert PollEvents(readiness="loading", readiness_changed=True).describe() == [
        (logging.INFO, "readiness: loading", True)
    ]
