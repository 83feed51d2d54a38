"""One asyncio task per target: poll on schedule, never overlapping, within a deadline.

A poll is `source.poll()` (its `collect()`) under the target's timeout. Transient failures
(connection reset, keep-alive closed by the server) are retried with
exponential backoff by tenacity while the poll's time budget lasts; tenacity is
brought in only when a first attempt fails that way (most polls never need it,
and a sidecar never pays its import). Results go to the target's state; logs
say what changed, once, not every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from . import clock
from .derive.maths import CumulativeHistogram
from .logsetup import RateLimited
from .observation import Observation, PollError, Reason
from .sources.base import Source, TransientPollError
from .state import PollEvents, TargetState

log = logging.getLogger("llm_exporter.poller")

JITTER = 0.05  # ±5 % of the interval, so many targets do not poll in lockstep
LOG_BURST, LOG_WINDOW = 3, 60.0  # per target: at most 3 state-change lines a minute (flapping targets)


class ChangeLog(RateLimited):
    """Logs a target's state changes, at most LOG_BURST per LOG_WINDOW (a token bucket); the next
    line that gets through says how many were held back."""

    def __init__(self) -> None:
        super().__init__(log, LOG_BURST, LOG_WINDOW, note="more state changes not logged: flapping")


RETRIES = 2  # a transient failure gets at most two more attempts, while the poll's budget lasts


async def poll_once(source: Source, budget_s: float) -> Observation:
    """Collect one observation within `budget_s` seconds, retrying transient failures."""
    deadline = time.monotonic() + budget_s
    try:
        async with asyncio.timeout(budget_s):
            try:
                return await source.poll()
            except TransientPollError:
                if time.monotonic() + 0.1 >= deadline:
                    raise
                return await _retry(source, deadline)
    except TimeoutError:
        raise PollError(Reason.TIMEOUT, f"poll did not finish within {budget_s:g}s") from None


async def _retry(source: Source, deadline: float) -> Observation:
    """Further attempts after a transient failure: exponential backoff (50 ms, then 100 ms, at most
    500 ms), stopping at RETRIES or when less than 100 ms of the budget is left."""
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_any, wait_exponential
    from tenacity.stop import stop_base

    class BudgetSpent(stop_base):
        def __call__(self, retry_state: object) -> bool:
            return time.monotonic() + 0.1 >= deadline

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientPollError),
        stop=stop_any(stop_after_attempt(RETRIES), BudgetSpent()),
        wait=wait_exponential(multiplier=0.1, max=0.5),
        reraise=True,
    )
    await asyncio.sleep(0.05)  # the first backoff, before tenacity's own
    async for attempt in retrying:
        with attempt:
            return await source.poll()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or reraises


class Poller:
    def __init__(
        self,
        source: Source,
        state: TargetState,
        on_update: Callable[[TargetState], None] | None = None,
        delays: CumulativeHistogram | None = None,
    ):
        self.source = source
        self.state = state
        self.delays = delays  # how late each poll starts (llm_exporter_poll_delay_seconds)
        self.on_update = on_update  # e.g. pre-render the target's exposition
        self.changes = ChangeLog()
        self.notices = RateLimited(log, burst=20, window=60.0)  # notices and loads: more room, still bounded
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.state.target.name

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"poll:{self.name}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.source.close()

    async def run(self) -> None:
        target = self.state.target
        # Spread first polls over a fraction of the interval.
        await asyncio.sleep(random.uniform(0, min(target.interval, 1.0) * 0.2))
        next_at = time.monotonic()
        while True:
            await self.poll()
            interval = self.state.target.interval  # a reload may have changed it
            next_at += interval * (1 + random.uniform(-JITTER, JITTER))
            now = time.monotonic()
            if next_at < now:  # overran: skip missed ticks rather than burst
                if self.delays is not None:
                    self.delays.add(now - next_at)  # the poll itself ran past the next tick
                next_at = now + interval * random.uniform(0, JITTER)
            await asyncio.sleep(next_at - now)
            if self.delays is not None:
                self.delays.add(max(0.0, time.monotonic() - next_at))  # a busy loop woke this poll late

    async def poll(self) -> None:
        """One poll, all of it (collect, state update, derivations, render) inside the error boundary: a bug
        anywhere is an `other` error on this target, logged, never a dead poller task."""
        try:
            await self._poll()
            if self.on_update is not None:
                self.on_update(self.state)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._internal_error(error, 0.0)

    def _internal_error(self, error: Exception, duration: float) -> None:
        target = self.state.target
        wrapped = PollError(Reason.OTHER, f"internal error: {type(error).__name__}: {error}")
        try:
            went_down = self.state.record_failure(wrapped, clock.now(), duration).went_down
        except Exception:  # pragma: no cover - the state itself is broken: log, keep the task alive
            went_down = True
        if went_down:
            log.error(
                "target %s (%s): unexpected error while polling",
                target.name,
                target.engine,
                exc_info=(type(error), error, error.__traceback__),
            )

    async def _poll(self) -> None:
        target = self.state.target
        started = time.monotonic()
        try:
            observation = await poll_once(self.source, target.timeout)
        except asyncio.CancelledError:
            raise
        except PollError as error:
            self._log(self.state.record_failure(error, clock.now(), time.monotonic() - started))
        except Exception as error:  # a bug in a source must not kill the poller
            self._internal_error(error, time.monotonic() - started)
        else:
            events = self.state.record_success(observation, clock.now(), time.monotonic() - started)
            self._log(events)

    def _log(self, events: PollEvents) -> None:
        """The poll's events, worded as the debug view's (PollEvents.describe). Every line a target's behaviour
        causes goes through a limiter (a crash-looping engine, a churning router): the debug view's events
        keep the full record."""
        target = self.state.target
        for level, text, change in events.describe():
            limiter = self.changes if change else self.notices
            limiter.emit(level, "target %s (%s): %s", target.name, target.engine, text)
