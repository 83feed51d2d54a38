"""Drive the real poll pipeline (fetch → source → state → renderers) in-process for tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from exporter.app import make_session
from exporter.config import TargetConfig
from exporter.openmetrics import ExporterCollector
from exporter.poller import Poller
from exporter.sources import source_for
from exporter.sources.base import SharedContext
from exporter.state import TargetState
from exporter.status import ExporterStatus
from tests.support.configs import load_target


def target_config(engine: str, url: str, name: str = "t", **extra: str) -> TargetConfig:
    return load_target(engine, url, name, **extra)


class Pipeline:
    def __init__(self, engine: str, url: str, **extra: str):
        self.target = target_config(engine, url, **extra)
        self.state = TargetState(self.target)
        self.session = make_session()
        self.source = source_for(engine)(self.target, SharedContext(session=self.session))
        self.poller = Poller(self.source, self.state)
        self.status = ExporterStatus()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ExporterCollector("llm", lambda: [self.state], self.status))

    async def poll(self) -> TargetState:
        await self.poller.poll()
        return self.state

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str, **labels: str) -> float | None:
        from exporter.promparse import parse

        for sample_labels, value in parse(self.exposition()).get(name):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    async def close(self) -> None:
        await self.source.close()
        await self.session.close()
