"""The prometheus_client Collector over the sample stream (samples.py): fresh metric families at each
collect. The registry behind OpenMetrics scrapes' process_* families, and the reference text.py's renderer
is checked against in the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .join import process_owners
from .samples import exporter_samples, family_header, order, passthrough_families, target_samples
from .state import TargetState
from .status import ExporterStatus

if TYPE_CHECKING:  # prometheus_client is imported only when an OpenMetrics scrape comes (resident memory)
    from prometheus_client.metrics_core import Metric


class ExporterCollector:
    """The prometheus_client Collector (OpenMetrics, and the reference for TextRenderer)."""

    def __init__(self, namespace: str, states: Callable[[], Iterable[TargetState]], status: ExporterStatus):
        self.namespace = namespace
        self.states = states
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; avoid a collect() at registration time

    def collect(self) -> Iterator[Metric]:
        states = list(self.states())
        owners = process_owners(states)
        raw = passthrough_families(states)
        families: dict[str, tuple[Metric, str] | None] = {}
        samples = exporter_samples(self.status)
        for state in states:
            samples.extend(target_samples(state, owners))
        for key, suffix, labels, value in samples:
            if key not in families:
                header = family_header(self.namespace, key, raw)
                families[key] = _metric(*header) if header else None
            entry = families[key]
            if entry is not None:
                entry[0].add_sample(entry[1] + suffix, labels, value)
        for key in sorted(families, key=order):
            entry = families[key]
            if entry is not None:
                yield entry[0]


def _metric(name: str, kind: str, help_text: str) -> tuple[Metric, str]:
    """A family for prometheus_client, and the prefix of its sample names. An engine's counter family may
    be declared with its _total (text format 0.0.4 allows both); OpenMetrics names the family without it."""
    from prometheus_client.metrics_core import Metric

    family = name[:-6] if kind == "counter" and name.endswith("_total") else name
    return Metric(family, help_text, kind), name
