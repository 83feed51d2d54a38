import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.derive.load_time import (BASIS_ENGINE_TIMESTAMPS, BASIS_FIRST_SEEN_DOWN, BASIS_PROCESS_START,
                                       LoadTimer)
from exporter.derive.maths import (counter_delta, histogram_delta, histogram_is_valid, histogram_mean,
                                   histogram_quantile, rate, ratio_of_deltas)
from exporter.derive.queue_estimate import QueueWaitEstimator
from exporter.derive.window import SlidingWindow
from exporter.observation import Histogram, QueueProbe, Readiness
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
    t = 0.0
    for i, gap in enumerate(gaps):
        t += gap
        window.add(t, i)
        first_t = window.first()[0]
        # history is trimmed to the window, but the anchor may sit before the horizon
        assert len(window) == 1 or window._items[1][0] > t - seconds
        assert first_t <= t


def test_window_clock_going_back_starts_over():
    window: SlidingWindow[int] = SlidingWindow(60)
    window.add(10, 1)
    window.add(5, 2)
    assert len(window) == 1 and window.first() == (5, 2)


# ---------------------------------------------------------------- histograms

def hist(buckets, total):
    return Histogram(tuple(buckets), total, buckets[-1][1])


def test_histogram_delta_mean_and_quantile():
    h0 = hist([(0.1, 1), (1, 2), (INF, 2)], 0.6)
    h1 = hist([(0.1, 1), (1, 6), (INF, 8)], 9.6)
    delta = histogram_delta(h0, h1)
    assert delta.buckets == ((0.1, 0), (1, 4), (INF, 6))
    assert histogram_mean(delta) == pytest.approx(9.0 / 6)
    # rank 3 of 6 falls in (0.1, 1]: 0.1 + 0.9 * 3/4
    assert histogram_quantile(0.5, delta) == pytest.approx(0.775)
    # ranks in +Inf return the highest finite bound, like Prometheus
    assert histogram_quantile(0.99, delta) == 1


def test_histogram_delta_rejects_changed_bounds_and_resets():
    h0 = hist([(0.1, 1), (INF, 2)], 1)
    assert histogram_delta(h0, hist([(0.2, 1), (INF, 2)], 1)) is None
    assert histogram_delta(hist([(0.1, 5), (INF, 9)], 9), h0) is None
    assert histogram_mean(histogram_delta(h0, h0)) is None  # nothing observed: absent


def test_histogram_validity():
    assert histogram_is_valid(hist([(0.1, 1), (INF, 2)], 1))
    assert not histogram_is_valid(hist([(0.1, 3), (INF, 2)], 1))       # not monotonic
    assert not histogram_is_valid(Histogram(((0.1, 1),), 1, 1))         # no +Inf
    assert not histogram_is_valid(hist([(1, 1), (0.5, 1), (INF, 2)], 1))  # bounds out of order
    assert not histogram_is_valid(Histogram(((INF, 1),), math.nan, 1))


@st.composite
def histogram_pair(draw):
    bounds = sorted(set(draw(st.lists(st.floats(0.001, 100), min_size=1, max_size=8))))
    bounds.append(INF)
    first = [draw(st.integers(0, 100)) for _ in bounds]
    more = [draw(st.integers(0, 100)) for _ in bounds]
    c0 = list(_cumulative(first))
    c1 = [a + b for a, b in zip(c0, _cumulative(more))]
    s0 = draw(st.floats(0, 1e3))
    s1 = s0 + draw(st.floats(0, 1e3))
    return Histogram(tuple(zip(bounds, c0)), s0, c0[-1]), Histogram(tuple(zip(bounds, c1)), s1, c1[-1])


def _cumulative(counts):
    total = 0
    for c in counts:
        total += c
        yield total


@given(histogram_pair(), st.floats(0, 1))
def test_histogram_window_properties(pair, q):
    h0, h1 = pair
    delta = histogram_delta(h0, h1)
    assert delta is not None and histogram_is_valid(delta)
    assert delta.count == h1.count - h0.count
    quantile = histogram_quantile(q, delta)
    if delta.count > 0:
        mean = histogram_mean(delta)
        assert mean is not None and mean >= 0
        finite = [b for b, _ in delta.buckets if b != INF]
        assert quantile is None or 0 <= quantile <= max(finite)
    else:
        assert histogram_mean(delta) is None
    # a reset in the other direction is never a valid window
    if h1.count > h0.count:
        assert histogram_delta(h1, h0) is None


@given(histogram_pair(), st.floats(0, 1), st.floats(0, 1))
def test_quantile_is_monotonic_in_q(pair, a, b):
    delta = histogram_delta(*pair)
    lo, hi = sorted((a, b))
    qa, qb = histogram_quantile(lo, delta), histogram_quantile(hi, delta)
    if qa is not None and qb is not None:
        assert qa <= qb + 1e-9


# ---------------------------------------------------------------- load time

def test_load_time_observed_transition_with_process_start():
    timer = LoadTimer()
    timer.observe(100, Readiness.DOWN)
    timer.observe(101, Readiness.LOADING)
    load = timer.observe(105, Readiness.READY, process_start=99.5)
    assert load.seconds == pytest.approx(5.5) and load.basis == BASIS_PROCESS_START


def test_load_time_uses_exact_engine_ready_between_polls():
    timer = LoadTimer()
    timer.observe(100, Readiness.LOADING)
    load = timer.observe(101, Readiness.READY, process_start=95, engine_ready=100.4, engine_ready_exact=True)
    assert load.seconds == pytest.approx(5.4)
    # an approximate engine timestamp (vLLM _created) does not date an observed transition
    timer2 = LoadTimer()
    timer2.observe(100, Readiness.DOWN)
    assert timer2.observe(101, Readiness.READY, process_start=95, engine_ready=100.4).seconds == 6


def test_load_time_lower_bound_without_process_start():
    timer = LoadTimer()
    timer.observe(100, Readiness.DOWN)
    timer.observe(102, Readiness.DOWN)
    load = timer.observe(110, Readiness.READY)
    assert load.seconds == 10 and load.basis == BASIS_FIRST_SEEN_DOWN


def test_load_time_when_met_ready_needs_engine_timestamps():
    timer = LoadTimer()
    assert timer.observe(100, Readiness.READY) is None  # unknown: expose nothing, never zero
    timer = LoadTimer()
    load = timer.observe(100, Readiness.READY, process_start=50, engine_ready=90)
    assert load.seconds == 40 and load.basis == BASIS_ENGINE_TIMESTAMPS


def test_load_time_new_measurement_after_restart():
    timer = LoadTimer()
    timer.observe(0, Readiness.LOADING)
    timer.observe(5, Readiness.READY, process_start=0)
    timer.observe(6, Readiness.READY, process_start=0)
    timer.observe(50, Readiness.DOWN)
    timer.observe(51, Readiness.LOADING)
    load = timer.observe(58, Readiness.READY, process_start=50.5)
    assert load.seconds == pytest.approx(7.5)
    # a restart between polls (never seen down) without engine timestamps: unknown
    timer.restart()
    assert timer.observe(70, Readiness.READY) is None


# ---------------------------------------------------------------- queue estimate

def test_queue_estimator_counts_task_changes_and_integrates_waiting():
    est = QueueWaitEstimator()
    est.observe(0, QueueProbe(2, ((0, None), (1, 5))))
    est.observe(1, QueueProbe(2, ((0, 7), (1, 5))))       # slot 0 started a task
    est.observe(2, QueueProbe(0, ((0, 7), (1, 30))))      # slot 1 started one (jump size irrelevant)
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
