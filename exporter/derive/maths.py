"""Counter and histogram arithmetic. Pure functions; every input may be hostile."""

from __future__ import annotations

import math

from ..observation import Histogram


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def counter_delta(first: float | None, last: float | None) -> float | None:
    """Increase between two counter readings; None when unknown or the counter went down (reset)."""
    if not (is_finite(first) and is_finite(last)):
        return None
    delta = last - first  # type: ignore[operator]
    return delta if delta >= 0 else None


def ratio_of_deltas(numerator: float | None, denominator: float | None) -> float | None:
    """numerator/denominator of two deltas; None (absent, never 0 or NaN) when the denominator did not move."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    ratio = numerator / denominator
    if not math.isfinite(ratio) or ratio < 0:
        return None
    return min(ratio, 1.0) if ratio <= 1.0 + 1e-9 else ratio


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


def histogram_delta(first: Histogram | None, last: Histogram | None) -> Histogram | None:
    """Bucket-wise increase; None when bounds changed or any series went down (reset)."""
    if first is None or last is None:
        return None
    if first.bounds() != last.bounds():
        return None
    buckets = []
    for (bound, c0), (_, c1) in zip(first.buckets, last.buckets):
        if c1 < c0:
            return None
        buckets.append((bound, c1 - c0))
    count = last.count - first.count
    total = last.sum - first.sum
    if count < 0 or not math.isfinite(total):
        return None
    return Histogram(tuple(buckets), total, count)


def histogram_mean(delta: Histogram | None) -> float | None:
    if delta is None or not delta.count > 0:
        return None
    mean = delta.sum / delta.count
    return mean if math.isfinite(mean) and mean >= 0 else None


def histogram_quantile(q: float, delta: Histogram | None) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q·count."""
    if delta is None or not 0 <= q <= 1 or not delta.buckets or not delta.buckets[-1][1] > 0:
        return None
    total = delta.buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for index, (bound, count) in enumerate(delta.buckets):
        if count >= rank:
            if bound == math.inf:
                # Prometheus returns the highest finite bound for ranks in the +Inf bucket.
                return delta.buckets[index - 1][0] if index > 0 else None
            if index == 0 and bound <= 0:
                return bound
            in_bucket = count - lower_count
            if in_bucket <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = bound, count
    return None
