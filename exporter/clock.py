"""The exporter's one clock: a wall clock that never steps.

`now()` is Unix time at the exporter's start plus the monotonic time elapsed since, so an NTP step (or
an operator's `date -s`) can neither make a load look an hour long nor bend a rate: every duration and
window is a difference of two `now()` values. Time stamps read from elsewhere (an engine's own
`process_start_time_seconds`, /proc start times) enter through `from_wall()`, and exported timestamps leave
through `to_wall()`, so a scrape shows true Unix time even after the system clock stepped.
"""

from __future__ import annotations

import time

_wall = time.time  # the system clock (tests step it by replacing this)
_MONO0 = time.monotonic()
_WALL0 = _wall()


def now() -> float:
    """Unix seconds on the stepless clock."""
    return _WALL0 + (time.monotonic() - _MONO0)


STEP = 1.0  # seconds: a smaller difference between the clocks is reading jitter (or slewing), not a step


def offset() -> float:
    """How far the system clock is from the stepless one now: 0 until the system clock steps by STEP or more
    (so an exported timestamp is the same number at every scrape, and renders cache)."""
    raw = _wall() - now()
    return raw if abs(raw) >= STEP else 0.0


def from_wall(unix_seconds: float) -> float:
    """A Unix time stamp read from the system clock's domain, on the stepless clock."""
    return unix_seconds - offset()


def to_wall(stepless_seconds: float) -> float:
    """A stepless time as the Unix time a scrape should show."""
    return stepless_seconds + offset()
