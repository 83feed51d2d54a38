"""The poller's own branches with scripted sources (fault injection; the engines' real failures are in
test_poller_faults.py): a bug in a source, transient failures with and without budget left, a poll
cancelled mid-flight, and late polls counted in the poll-delay histogram."""

from __future__ import annotations

import asyncio
import logging

from exporter.derive.maths import CumulativeHistogram
from exporter.observation import Observation, PollError, Readiness, Reason
from exporter.poller import Poller, poll_once
from exporter.sources.base import Source, TransientPollError
from exporter.state import TargetState
from tests.support.configs import load_target


class Scripted(Source):
    """A source that plays a script: each step returns an observation, raises, or waits."""

    def __init__(self, steps: list[object], **settings: str):
        super().__init__(load_target("vllm", **settings))
        self.steps = steps
        self.calls = 0
        self.closed = False

    async def collect(self) -> Observation:
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
        return Observation(Readiness.READY)

    async def close(self) -> None:
        self.closed = True


async def test_a_bug_in_a_source_is_an_other_error_logged_once_with_its_traceback(caplog):
    source = Scripted([RuntimeError("boom")])
    poller = Poller(source, TargetState(source.target))
    with caplog.at_level(logging.ERROR, logger="llm_exporter"):
        for _ in range(3):
            await poller.poll()
    health = poller.state.health
    assert health.errors[Reason.OTHER] == 3 and not health.up and source.calls == 3
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # news once; the traceback shows where


async def test_a_transient_failure_is_retried_within_the_budget():
    source = Scripted([TransientPollError(Reason.OTHER, "connection lost"), None])
    observation = await poll_once(source, 1.0)
    assert observation.readiness is Readiness.READY and source.calls == 2


async def test_a_transient_failure_without_budget_left_is_reported_not_retried():
    source = Scripted([TransientPollError(Reason.OTHER, "connection lost"), None])
    try:
        await poll_once(source, 0.05)  # less than the 100 ms a retry needs
    except PollError as error:
        assert error.reason is Reason.OTHER and "connection lost" in str(error)
    else:
        raise AssertionError("the transient failure was retried without budget")
    assert source.calls == 1


async def test_a_poll_past_its_budget_is_a_timeout_and_stopping_cancels_a_poll_in_flight():
    source = Scripted([5.0], interval="1s", timeout="200ms")
    poller = Poller(source, TargetState(source.target))
    await poller.poll()
    assert poller.state.health.last_error is not None and poller.state.health.last_error[0] is Reason.TIMEOUT
    poller.start()
    await asyncio.sleep(0.05)  # the first poll is waiting in the source
    await poller.stop()
    assert poller.task is None and source.closed  # cancelled cleanly, its resources released


async def test_polls_slower_than_their_interval_are_counted_late_and_never_burst():
    delays = CumulativeHistogram((0.01, 0.1, 1.0))
    source = Scripted([0.18], interval="100ms", timeout="100ms")  # every poll runs to its 100 ms timeout
    poller = Poller(source, TargetState(source.target), delays=delays)
    poller.start()
    await asyncio.sleep(1.05)
    await poller.stop()
    # each overrun poll is counted late (it ran past its tick, then woke late)...
    assert delays.count >= 2 * min(source.calls - 1, 2)
    assert source.calls <= 12  # ...and the missed ticks were skipped, not run in a burst
