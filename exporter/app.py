"""The running exporter: owns the config, the shared HTTP client, targets' state and pollers.

Reload is atomic: the new config is fully validated before anything changes; a
broken one is rejected and the old one keeps running. State survives a reload
for targets whose name and engine did not change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import aiohttp

from . import __version__
from .collector import ExporterCollector, ExporterStatus, TextRenderer
from .config import Config, ConfigError, TargetConfig, load_config
from .hostinfo import read_host_cpu
from .poller import Poller
from .sources import source_for
from .sources.base import SharedContext
from .state import TargetState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("llm_exporter")


def make_session(max_connections: int = 256) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=4, ttl_dns_cache=60,
                                     keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        headers={"User-Agent": f"llm-exporter/{__version__}"},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class Exporter:
    def __init__(self, config: Config, config_path: str | None, listen_override: str | None = None):
        self.config = config
        self.config_path = config_path
        self.listen_override = listen_override  # --listen: wins over the file's listen, on reloads too
        self.status = ExporterStatus()
        self.status.config_reload_ok = True
        self.status.config_reload_time = time.time()
        self.states: dict[str, TargetState] = {}
        self.pollers: dict[str, Poller] = {}
        self.session: aiohttp.ClientSession | None = None
        # The text format (what Prometheus asks for by default) goes through the caching renderer;
        # OpenMetrics through prometheus_client, imported on the first such scrape (`registry`).
        self.collector = ExporterCollector(config.namespace, lambda: list(self.states.values()), self.status)
        self.renderer = TextRenderer(config.namespace, lambda: list(self.states.values()), self.status)
        self._registry: CollectorRegistry | None = None
        self.shared = SharedContext()
        self._host_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.running = False
        self._reload_lock = asyncio.Lock()
        self._reload_again = False

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry (OpenMetrics scrapes): the collector and process_* metrics."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self.collector)
            ProcessCollector(registry=self._registry)
        return self._registry

    # ------------------------------------------------------------------ lifecycle

    async def start(self, poll: bool = True) -> None:
        """Start polling (`poll=False`: set everything up but leave the polling to the caller: --once)."""
        self.session = self.shared.session = make_session()
        self._apply(self.config)
        if poll:
            for poller in self.pollers.values():
                poller.start()
        self.running = poll
        self._host_task = asyncio.create_task(self._read_host_info())
        self._lag_task = asyncio.create_task(self._watch_loop_lag())
        self.status.tasks = lambda: len(asyncio.all_tasks())

    async def _watch_loop_lag(self, period: float = 0.5) -> None:
        """Ask the loop for a timer every `period`; how much later it fires is the loop's lag."""
        while True:
            asked = time.monotonic() + period
            await asyncio.sleep(period)
            self.status.loop_lag.add(max(0.0, time.monotonic() - asked))

    async def _read_host_info(self) -> None:
        self.status.host_cpu = await read_host_cpu()

    async def stop(self) -> None:
        self.running = False
        for task in (self._host_task, self._lag_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(p.stop() for p in self.pollers.values()), return_exceptions=True)
        self.pollers.clear()
        self.shared.close()
        if self.session is not None:
            await self.session.close()
            self.session = self.shared.session = None

    async def poll_all_once(self) -> None:
        """--once: poll every target exactly once (windowed values, which need two polls, stay absent)."""
        await asyncio.gather(*(p.poll() for p in self.pollers.values()))
        if self._host_task is not None:
            await self._host_task

    # ------------------------------------------------------------------ pollers

    def _make_poller(self, target: TargetConfig, state: TargetState) -> Poller:
        source = source_for(target.engine)(target, self.shared)
        return Poller(source, state, on_update=self.renderer.refresh, delays=self.status.poll_delay)

    def _apply(self, config: Config) -> None:
        states: dict[str, TargetState] = {}
        for target in config.targets:
            previous = self.states.get(target.name)
            if previous is not None and previous.target.identity == target.identity:
                previous.retarget(target)
                states[target.name] = previous
            else:
                states[target.name] = TargetState(target)
        self.states = states
        self.pollers = {t.name: self._make_poller(t, states[t.name]) for t in config.targets}
        self.config = config
        self.collector.namespace = config.namespace
        self.renderer.namespace = config.namespace

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Reload the config file. Coalesces storms: at most one reload runs and one waits."""
        if self._reload_lock.locked():
            self._reload_again = True
            return False
        async with self._reload_lock:
            ok = await self._reload_once()
            while self._reload_again:
                self._reload_again = False
                ok = await self._reload_once()
            return ok

    async def _reload_once(self) -> bool:
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_config, self.config_path)
        except ConfigError as exc:
            self.status.config_reload_ok = False
            log.error("config reload rejected, keeping the running config: %s", exc)
            return False
        if self.listen_override is not None:
            new = dataclasses.replace(new, listen=self.listen_override)
        if new.listen != self.config.listen:
            log.warning("config reload: listen changed to %s; restart the exporter to apply it", new.listen)
        old_pollers = self.pollers
        await asyncio.gather(*(p.stop() for p in old_pollers.values()), return_exceptions=True)
        self._apply(new)
        if self.running:
            for poller in self.pollers.values():
                poller.start()
        self.status.config_reload_ok = True
        self.status.config_reload_time = time.time()
        log.info("config reloaded from %s: %d targets", new.source, len(new.targets))
        return True
