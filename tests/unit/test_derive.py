import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.derive.lifecycle import (
    BASIS_ENGINE_TIMESTAMPS,
    BASIS_FIRST_SEEN_LOADING,
    BASIS_POLL_BRACKET,
    BASIS_PROCESS_START,
    KIND_LOAD,
    KIND_START,
    KIND_WAKE,
    ModelLifecycle,
)
from exporter.derive.maths import (
    counter_delta,
    histogram_is_valid,
    rate,
    ratio_of_deltas,
)
from exporter.derive.queue_estimate import QueueWaitEstimator
from exporter.derive.window import SlidingWindow
from exporter.observation import Histogram, ModelState, ModelStatus, QueueProbe
from exporter.promparse import parse
from tests.conftest import FIXTURES

INF = math.inf


# ---------------------------------------------------------------- counters and ratios


def test_counter_delta_and_reset():
    assert counter_delta(10, 15) == 5
    assert counter_delta(15, 3) is None  # reset: unknown, never negative
    assert counter_delta(None, 3) is None
    assert counter_delta(1, INF) is None


def test_ratio_absent_when_denominator_did_not_move():
    assert ratio_of_deltas(0, 0) is None
    assert ratio_of_deltas(3, 4) == 0.75
    assert ratio_of_deltas(None, 4) is None
    assert rate(10, 2) == 5 and rate(10, 0) is None


@st.composite
def counter_series_with_resets(draw):
    """A counter observed over time that may reset to a small value (engine restart)."""
    values, value = [], draw(st.floats(0, 1e6))
    for _ in range(draw(st.integers(2, 30))):
        if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
            value = draw(st.floats(0, 10))  # reset
        else:
            value += draw(st.floats(0, 1e4))
        values.append(value)
    return values


@given(counter_series_with_resets())
def test_window_deltas_never_negative_and_reseed_on_reset(values):
    window: SlidingWindow[float] = SlidingWindow(1e9)
    for t, value in enumerate(values):
        last = window.last()
        if last is not None and value < last[1]:
            window.reseed()
        window.add(float(t), value)
        first = window.first()
        delta = counter_delta(first[1], value)
        assert delta is not None and delta >= 0
        # after a reseed the window starts at the reset value: the delta is exactly the increase since
        assert delta == pytest.approx(value - first[1])


@given(st.lists(st.floats(0, 100), min_size=1, max_size=50), st.floats(1, 20))
def test_window_keeps_one_anchor_at_or_before_horizon(gaps, seconds):
    window: SlidingWindow[int] = SlidingWindow(seconds)
    t, times = 0.0, []
    for i, gap in enumerate(gaps):
        t += gap
        times.append(t)
        window.add(t, i)
        # the anchor is the newest poll at or before the window's start (so first→last spans the whole
        # window), or the oldest poll while history is shorter than the window
        before = [x for x in times if x <= t - seconds]
        assert window.first()[0] == (max(before) if before else times[0])
        assert len(window) == 1 or window._items[1][0] > t - seconds


def test_window_clock_going_back_starts_over():
    window: SlidingWindow[int] = SlidingWindow(60)
    window.add(10, 1)
    window.add(5, 2)
    assert len(window) == 1 and window.first() == (5, 2)


# ---------------------------------------------------------------- histograms


def hist(buckets, total):
    return Histogram(tuple(buckets), total, buckets[-1][1])


def test_histogram_validity():
    assert histogram_is_valid(hist([(0.1, 1), (INF, 2)], 1))
    assert not histogram_is_valid(hist([(0.1, 3), (INF, 2)], 1))  # not monotonic
    assert not histogram_is_valid(Histogram(((0.1, 1),), 1, 1))  # no +Inf
    assert not histogram_is_valid(hist([(1, 1), (0.5, 1), (INF, 2)], 1))  # bounds out of order
    assert not histogram_is_valid(Histogram(((INF, 1),), math.nan, 1))


# ---------------------------------------------------------------- model lifecycle and load time

LOADED, LOADING, SLEEPING = ModelState.LOADED, ModelState.LOADING, ModelState.SLEEPING


def status(state, **kw):
    return ModelStatus(state, **kw)


def test_load_from_process_start_to_exact_ready_between_polls():
    life = ModelLifecycle()
    life.gone(100)  # refused: nothing running
    assert life.observe(101, status(LOADING, process_start=100.5)) == []
    [load] = life.observe(103, status(LOADED, process_start=100.5, ready_time=102.25, ready_exact=True))
    assert (load.kind, load.basis) == (KIND_START, BASIS_PROCESS_START)
    assert load.seconds == pytest.approx(1.75)
    assert life.loads == {KIND_START: 1} and life.durations[KIND_START].count == 1
    assert life.loaded_at == pytest.approx(102.25)


def test_refused_connections_never_start_the_clock():
    """Sidecar first: the exporter saw the engine down for a long time, then loading, then ready."""
    life = ModelLifecycle()
    for t in range(0, 600, 5):
        life.gone(float(t))
    life.observe(600.2, status(LOADING))
    [load] = life.observe(604.0, status(LOADED))
    assert load.basis == BASIS_FIRST_SEEN_LOADING and load.seconds == pytest.approx(3.8)


def test_ready_stamp_outside_the_poll_bracket_is_not_trusted():
    life = ModelLifecycle()
    life.observe(100, status(LOADING, process_start=95))
    [load] = life.observe(101, status(LOADED, process_start=95, ready_time=90.0, ready_exact=True))
    assert load.seconds == pytest.approx(6.0)  # ready = the first poll that saw it, not a stale stamp
    # an approximate stamp (vLLM _created) never dates an observed transition
    life = ModelLifecycle()
    life.gone(100)
    [load] = life.observe(101, status(LOADED, process_start=95, ready_time=100.4))
    assert (load.seconds, load.basis) == (6, BASIS_PROCESS_START)


def test_met_loaded_is_not_a_load_and_needs_engine_timestamps():
    life = ModelLifecycle()
    [load] = life.observe(100, status(LOADED))
    assert load.seconds is None and life.last is None and life.loads == {}
    life = ModelLifecycle()
    [load] = life.observe(100, status(LOADED, process_start=50, ready_time=90))
    assert (load.seconds, load.basis) == (40, BASIS_ENGINE_TIMESTAMPS)
    assert life.loads == {} and life.durations == {}  # a load the exporter did not see is not counted


def test_wake_needs_a_loading_state_to_be_dated():
    life = ModelLifecycle(KIND_LOAD)
    life.observe(0, status(LOADED))
    life.observe(1, status(SLEEPING))
    [wake] = life.observe(2.5, status(LOADED))  # a single llama-server shows no loading while waking
    assert wake.kind == KIND_WAKE and wake.seconds is None and life.loads == {KIND_WAKE: 1}
    life.observe(3, status(SLEEPING, reports_loading=True))
    [wake] = life.observe(3.5, status(LOADED, reports_loading=True))  # a router's child does
    assert (wake.kind, wake.basis, wake.seconds) == (KIND_WAKE, BASIS_POLL_BRACKET, 0.5)
    life.observe(4, status(SLEEPING, reports_loading=True))
    life.observe(4.5, status(LOADING, reports_loading=True, process_start=-100))  # old process: not a start
    [wake] = life.observe(5.5, status(LOADED, reports_loading=True))
    assert (wake.kind, wake.basis, wake.seconds) == (KIND_WAKE, BASIS_FIRST_SEEN_LOADING, 1.0)
    assert life.loads == {KIND_WAKE: 3} and life.durations[KIND_WAKE].count == 2


def test_router_load_from_child_process_start_and_failures():
    life = ModelLifecycle(KIND_LOAD)
    life.observe(0, status(ModelState.UNLOADED))
    [load] = life.observe(1, status(LOADED, process_start=0.4, reports_loading=True))
    assert (load.kind, load.basis, load.seconds) == (KIND_LOAD, BASIS_PROCESS_START, pytest.approx(0.6))
    life.observe(2, status(ModelState.UNLOADED))
    life.observe(3, status(LOADING))
    life.observe(4, status(ModelState.FAILED))
    life.observe(5, status(ModelState.FAILED))
    assert life.failures == 1
    life = ModelLifecycle(KIND_LOAD)
    life.observe(0, status(ModelState.FAILED))  # an old failure the exporter did not see: not counted
    assert life.failures == 0


def test_process_gone_while_loading_is_a_failure_and_same_process_is_no_new_load():
    life = ModelLifecycle()
    life.observe(0, status(LOADING))
    life.gone(1)
    assert life.failures == 1
    life.observe(2, status(LOADING, process_start=1.5))
    life.observe(3, status(LOADED, process_start=1.5))
    life.gone(4)  # one refused poll (a blip)
    assert life.observe(5, status(LOADED, process_start=1.5)) == []
    assert life.loads == {KIND_START: 1}


def test_restart_between_polls_dated_by_engine_timestamps():
    life = ModelLifecycle()
    life.observe(0, status(LOADING, process_start=0))
    life.observe(5, status(LOADED, process_start=0))
    life.restarted()
    [load] = life.observe(70, status(LOADED, process_start=60, ready_time=66, ready_exact=True))
    assert (load.kind, load.basis, load.seconds) == (KIND_START, BASIS_PROCESS_START, 6)  # exact ready 66 - start 60


# ---------------------------------------------------------------- queue estimate


def test_queue_estimator_counts_task_changes_and_integrates_waiting():
    est = QueueWaitEstimator()
    est.observe(0, QueueProbe(2, ((0, None), (1, 5))))
    est.observe(1, QueueProbe(2, ((0, 7), (1, 5))))  # slot 0 started a task
    est.observe(2, QueueProbe(0, ((0, 7), (1, 30))))  # slot 1 started one (jump size irrelevant)
    assert est.started == 2
    assert est.wait_seconds == pytest.approx(2 * 1 + 1 * 1)
    assert est.histogram().buckets == ((INF, 2.0),)


def test_queue_estimator_ignores_hostile_waiting_values():
    est = QueueWaitEstimator()
    est.observe(0, QueueProbe(math.nan, ()))
    est.observe(1, QueueProbe(-5, ()))
    assert est.wait_seconds == 0


@pytest.mark.parametrize("phase", ["phase1", "phase3"])
def test_queue_estimate_matches_client_waits_on_recorded_series(phase):
    """The b11434 series: the estimate must be within 20 % of client-measured waits."""
    rows = [json.loads(line) for line in (FIXTURES / "llamacpp" / "b11434-load-series.jsonl").open()]
    requests = json.loads((FIXTURES / "llamacpp" / "b11434-load-requests.json").read_text())[phase]
    est = QueueWaitEstimator()
    for row in rows:
        if row["phase"] != phase:
            continue
        waiting = parse(row["metrics"]).get("llamacpp:requests_deferred")[0][1]
        est.observe(row["t_rel_s"], QueueProbe(waiting, tuple((s["id"], s.get("id_task")) for s in row["slots"])))
    estimate = est.wait_seconds / est.started
    client = sum(r["client_wait_s"] for r in requests) / len(requests)
    assert est.started == len(requests)
    assert abs(estimate - client) / client < 0.20, (estimate, client)
