"""Counter and histogram arithmetic. Pure functions; every input may be hostile."""

from __future__ import annotations

import math

from ..observation import Histogram


def counter_delta(first: float | None, last: float | None) -> float | None:
    """Increase between two counter readings; None when unknown or the counter went down (reset)."""
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return None
    delta = last - first
    return delta if delta >= 0 else None


def ratio_of_deltas(numerator: float | None, denominator: float | None) -> float | None:
    """numerator/denominator of two deltas, a part of a whole; None (absent, never 0 or NaN) when the
    denominator did not move, and when the result is not in [0, 1]: an upstream whose hits grow faster than
    its queries lies, and a ratio above 1 would mislead every dashboard."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    ratio = numerator / denominator
    if not math.isfinite(ratio) or ratio < 0 or ratio > 1.0 + 1e-9:
        return None
    return min(ratio, 1.0)


def rate(delta: float | None, seconds: float) -> float | None:
    if delta is None or not seconds > 0:
        return None
    return delta / seconds


def histogram_is_valid(hist: Histogram) -> bool:
    """Cumulative counts must be non-decreasing with increasing bounds, ending at +Inf == count."""
    if not hist.buckets or hist.buckets[-1][0] != math.inf:
        return False
    previous_bound, previous_count = -math.inf, 0.0
    for bound, count in hist.buckets:
        if not (bound > previous_bound) or not math.isfinite(count) or count < previous_count:
            return False
        previous_bound, previous_count = bound, count
    return math.isfinite(hist.sum) and math.isfinite(hist.count) and hist.count >= 0


class CumulativeHistogram:
    """Observations counted into fixed buckets (cumulative, ending at +Inf), with their sum and count:
    what the exporter measures itself (load durations, event-loop lag, poll delays)."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        self.counts = [0.0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0.0

    def add(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> tuple[tuple[float, float], ...]:
        return tuple(zip(self.bounds, self.counts, strict=True))
