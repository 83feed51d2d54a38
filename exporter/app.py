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
from .config import Config, ConfigError, TargetConfig, load_config, read_off_loop
from .hostinfo import read_host_cpu
from .openmetrics import ExporterCollector
from .poller import Poller
from .sources import engine_specs, source_for
from .sources.base import SharedContext, Source
from .state import TargetState
from .status import ExporterStatus
from .text import TextRenderer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("llm_exporter")
RELOAD_SPACING = 1.0  # seconds between the starts of two reloads
RELOAD_TIMEOUT = 10.0  # seconds to read and check the config (and the files it names)


def make_session(max_connections: int = 256) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=4, ttl_dns_cache=60, keepalive_timeout=30)
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
        self._last_reload = -RELOAD_SPACING

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
        background = [task for task in (self._host_task, self._lag_task) if task is not None]
        for task in background:
            task.cancel()
        # awaited, so that nothing of the exporter still runs (or logs) once stop() returns
        await asyncio.gather(*background, return_exceptions=True)
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

    def _make_poller(self, target: TargetConfig, state: TargetState, source: Source | None = None) -> Poller:
        source = source or source_for(target.engine)(target, self.shared)
        return Poller(source, state, on_update=self.renderer.refresh, delays=self.status.poll_delay)

    def _build_sources(self, targets: list[TargetConfig]) -> dict[str, Source]:
        """The sources of new or changed targets: building one reads files (TLS keys and certificates, token
        files) and may open NVML, so a reload runs this in a thread."""
        return {target.name: source_for(target.engine)(target, self.shared) for target in targets}

    def _apply(self, config: Config, sources: dict[str, Source] | None = None) -> list[Poller]:
        """Take a config: states kept for targets of the same name and engine, pollers kept for targets whose
        settings did not change at all (`sources`: built beforehand for the others). Returns the pollers that
        are new (to start)."""
        states: dict[str, TargetState] = {}
        pollers: dict[str, Poller] = {}
        new: list[Poller] = []
        for target in config.targets:
            previous = self.states.get(target.name)
            poller = self.pollers.get(target.name)
            if previous is not None and poller is not None and target.same_poller(previous.target):
                states[target.name], pollers[target.name] = previous, poller
                continue
            if previous is not None and previous.target.identity == target.identity:
                previous.retarget(target)
                states[target.name] = previous
            else:
                states[target.name] = TargetState(target)
            pollers[target.name] = self._make_poller(target, states[target.name], (sources or {}).get(target.name))
            new.append(pollers[target.name])
        self.states = states
        self.pollers = pollers
        self.config = config
        self.collector.namespace = config.namespace
        self.renderer.namespace = config.namespace
        return new

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Reload the config file. Coalesces storms: at most one reload runs and one waits, and reloads
        start at least RELOAD_SPACING apart (250 SIGHUPs 20 ms apart make a handful of reloads)."""
        if self._reload_lock.locked():
            self._reload_again = True
            return False
        async with self._reload_lock:
            ok = await self._spaced_reload()
            while self._reload_again:
                self._reload_again = False
                ok = await self._spaced_reload()
            return ok

    async def _spaced_reload(self) -> bool:
        wait = self._last_reload + RELOAD_SPACING - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._reload_again = False  # what came while waiting is read by this reload
        self._last_reload = time.monotonic()
        return await self._reload_once()

    async def _reload_once(self) -> bool:
        path = self.config_path
        try:
            new = await read_off_loop(
                lambda: load_config(path, engines=engine_specs()), RELOAD_TIMEOUT, path or "the default config"
            )
        except ConfigError as exc:
            self.status.config_reload_ok = False
            log.error("config reload rejected, keeping the running config: %s", exc)
            return False
        if self.listen_override is not None:
            new = dataclasses.replace(new, listen=self.listen_override)
        if new.listen != self.config.listen:
            log.warning("config reload: listen changed to %s; restart the exporter to apply it", new.listen)
        wanted = {t.name: t for t in new.targets}
        keep = {
            name
            for name in self.pollers
            if name in self.states and self.states[name].target.same_poller(wanted.get(name))
        }
        changed = [t for t in new.targets if t.name not in keep]
        try:
            sources = await read_off_loop(lambda: self._build_sources(changed), RELOAD_TIMEOUT, "the new targets")
        except Exception as exc:  # a source that cannot be built: nothing of the new config is taken
            self.status.config_reload_ok = False
            log.error("config reload rejected, keeping the running config: %s", exc)
            return False
        await asyncio.gather(
            *(p.stop() for name, p in self.pollers.items() if name not in keep), return_exceptions=True
        )
        started = self._apply(new, sources)
        if self.running:
            for poller in started:
                poller.start()
        self.status.config_reload_ok = True
        self.status.config_reload_time = time.time()
        log.info("config reloaded from %s: %d targets", new.source, len(new.targets))
        return True
