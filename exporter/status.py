"""Process-wide facts the renderers show beside the targets: the config reload's outcome, host CPU, the
number of tasks, how late the event loop and the polls run, scrapes served. The service layer writes them;
samples.py reads them."""

from __future__ import annotations

from collections.abc import Callable

from .derive.maths import CumulativeHistogram

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ExporterStatus:
    """Process-wide facts the renderers show (config reload outcome, host CPU, tasks, how late the event
    loop and the polls run)."""

    def __init__(self) -> None:
        self.loop_lag = CumulativeHistogram(LAG_BUCKETS)  # event-loop wake-ups later than asked
        self.poll_delay = CumulativeHistogram(LAG_BUCKETS)  # polls started later than their schedule
        self.config_reload_ok = False
        self.config_reload_time: float | None = None
        self.host_cpu: tuple[tuple[str, str], ...] | None = None
        self.tasks: Callable[[], int] | None = None
        self.render_seconds: float | None = None
        self.scrapes: dict[str, int] = {"text": 0, "openmetrics": 0}
        self.connections_dropped: dict[str, int] = {"evicted": 0, "write_timeout": 0}
