"""Model load time: from engine process start to the first time it is ready to serve."""

from __future__ import annotations

from dataclasses import dataclass

from ..observation import Readiness

BASIS_PROCESS_START = "process_start"        # process start time known (payload or /proc)
BASIS_FIRST_SEEN_DOWN = "first_seen_down"    # lower bound: first not-ready poll the exporter saw
BASIS_ENGINE_TIMESTAMPS = "engine_timestamps"  # exporter met it ready: engine's own timestamps


@dataclass(frozen=True)
class LoadTime:
    seconds: float
    basis: str


class LoadTimer:
    """Watches readiness observations and measures each engine life's load time.

    Only a not-ready → ready transition that was observed dates "ready" (with the
    engine's own exact ready timestamp when it has one and it falls between the
    two polls). When the exporter first meets an engine that is already ready,
    the engine's own timestamps are the only basis; without them the load time is
    unknown (None), never made up.
    """

    def __init__(self) -> None:
        self.last: Readiness | None = None
        self.last_t: float | None = None
        self.not_ready_since: float | None = None
        self.load: LoadTime | None = None

    def restart(self) -> None:
        """A new engine process life started: its load time is not known yet."""
        self.load = None
        if self.last is Readiness.READY:
            self.last = None

    def observe(self, t: float, readiness: Readiness, process_start: float | None = None,
                engine_ready: float | None = None, engine_ready_exact: bool = False) -> LoadTime | None:
        previous, previous_t = self.last, self.last_t
        self.last, self.last_t = readiness, t
        if readiness is not Readiness.READY:
            if previous is not Readiness.DOWN and previous is not Readiness.LOADING:
                self.not_ready_since = t
            return None
        if previous is Readiness.READY:
            return None
        measured: LoadTime | None = None
        if previous is not None and self.not_ready_since is not None:
            ready_at = t
            if (engine_ready_exact and engine_ready is not None and previous_t is not None
                    and previous_t - 0.05 <= engine_ready <= t):
                ready_at = engine_ready
            if process_start is not None and process_start <= ready_at:
                measured = LoadTime(ready_at - process_start, BASIS_PROCESS_START)
            else:
                measured = LoadTime(ready_at - self.not_ready_since, BASIS_FIRST_SEEN_DOWN)
        elif engine_ready is not None and process_start is not None and engine_ready >= process_start:
            measured = LoadTime(engine_ready - process_start, BASIS_ENGINE_TIMESTAMPS)
        self.not_ready_since = None
        if measured is not None and measured.seconds < 7 * 86400:
            self.load = measured
        return self.load
