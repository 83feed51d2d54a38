"""Queue-wait estimate for engines that report no wait times (llama.cpp).

Little's law on sampled queue state: integrating the number of waiting requests
over time gives request-seconds spent waiting; counting tasks that start in a
slot gives requests leaving the queue. Over a window, mean wait ≈
Δ(waiting-seconds) / Δ(started). Requests that never waited count as starts
with zero wait, so this is the mean over all requests, as an engine histogram
would give. It cannot see time spent before the engine counts a request as
waiting, and misses a task that starts and ends between two polls: poll
sub-second for it to work. Slots are read only while work is in flight (an idle llama-server
must not be kept awake): between reads, the waiting count alone is integrated, and task ids are
compared at the next read.
"""

from __future__ import annotations

import math

from ..observation import Histogram, QueueProbe

MAX_WAITING = 1e6  # requests waiting; more is not a count any engine reports


class QueueWaitEstimator:
    def __init__(self) -> None:
        self.wait_seconds = 0.0
        self.started = 0
        self._last_t: float | None = None
        self._last_waiting = 0.0
        self._last_tasks: dict[int, int | None] = {}
        self._have_tasks = False

    def observe(self, t: float, probe: QueueProbe) -> None:
        sane = math.isfinite(probe.waiting) and 0 <= probe.waiting <= MAX_WAITING
        waiting = probe.waiting if sane else 0.0
        watched_before = self._last_t is not None
        if sane and self._last_t is not None and t > self._last_t:
            # Trapezoidal rule between two samples of the waiting count. An absurd count (a hostile
            # `requests_deferred 1e308`) is not integrated: one such sample must not make the total +Inf.
            self.wait_seconds += (self._last_waiting + waiting) / 2.0 * (t - self._last_t)
        self._last_t, self._last_waiting = t, waiting
        if probe.slot_tasks is None:
            return  # slots not read this poll (nothing in flight): task ids are compared at the next read
        tasks = dict(probe.slot_tasks)
        if self._have_tasks:
            for slot, task in tasks.items():
                # A slot seen before whose task id changed ran a new task (ids are global and
                # also consumed by other requests, so only the change counts, not its size).
                if task is not None and slot in self._last_tasks and self._last_tasks[slot] != task:
                    self.started += 1
        elif watched_before:
            # First slot read since the exporter started watching (slots are read only while work is in
            # flight): the slots busy now took their tasks after the idle polls that came before.
            self.started += len(probe.busy_slots)
        self._last_tasks, self._have_tasks = tasks, True

    def reseed(self) -> None:
        """Engine restarted: forget per-slot tasks (ids restart) but keep the cumulative totals."""
        self._last_t = None
        self._last_tasks, self._have_tasks = {}, False

    def histogram(self) -> Histogram:
        return Histogram.only_inf(self.wait_seconds, float(self.started))
