"""`engine: auto`: identify the engine from what the target answers, then poll it as that engine.

Every registered source declares how it is recognised, and auto.py names no engine: the /metrics
family prefixes (`metrics_prefix`) decide first; then `recognises()` of each source looks at a
non-200 /metrics answer (llama.cpp's 501/503 error envelope without --metrics or while loading); then
Prometheus text at each source's own `metrics_path`; then each source's probe (`detect_probe`: an
endpoint and a JSON key only it answers with), in `detect_priority` order, not file-name order.
The choice is shown in `llm_engine_detected_info{detected}` and kept until the exporter restarts or
reloads.
"""

from __future__ import annotations

from ..config import TargetConfig
from ..observation import InfoSample, Observation, PollError, Reason
from .base import REGISTRY, HttpFetcher, HttpSource, SharedContext, Source


def detect_from_metrics(text: str) -> str | None:
    """The engine whose metric prefix appears first in a /metrics payload."""
    best: tuple[int, str] | None = None
    for engine, source in REGISTRY.items():
        prefix = source.metrics_prefix
        if not prefix:
            continue
        at = 0 if text.startswith(prefix) else text.find("\n" + prefix)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, engine)
    return best[1] if best else None


def by_priority() -> list[tuple[str, type[Source]]]:
    """Registered sources in detection order: `detect_priority`, then name (stable, never file order)."""
    return sorted(REGISTRY.items(), key=lambda item: (item[1].detect_priority, item[0]))


async def detect(http: HttpFetcher) -> str:
    response = await http.get("/metrics")
    if response.status == 200:
        engine = detect_from_metrics(response.body[:1_000_000].decode("utf-8", "replace"))
        if engine:
            return engine
    else:
        for engine, source in by_priority():
            if source.recognises(response):
                return engine
    for engine, source in by_priority():  # engines whose Prometheus text is elsewhere
        if source.metrics_prefix and source.metrics_path != "/metrics":
            answer = await http.get(source.metrics_path)
            if (
                answer.status == 200
                and detect_from_metrics(answer.body[:1_000_000].decode("utf-8", "replace")) == engine
            ):
                return engine
    for engine, source in by_priority():
        if source.detect_probe is None:
            continue
        path, key = source.detect_probe
        answer = await http.get(path)
        if answer.status == 200 and key in answer.json_object(limit=65536):
            return engine
    raise PollError(Reason.PARSE, "cannot identify the engine (no known /metrics prefix or endpoint)")


class AutoSource(HttpSource):
    engine = "auto"
    title = "any of the above (auto-detected)"

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.delegate: Source | None = None
        self.detected: str | None = None

    async def collect(self) -> Observation:
        if self.delegate is None:
            self.detected = await detect(self.http)
            self.delegate = REGISTRY[self.detected](self.target, self.shared)
        observation = await self.delegate.poll()
        self.fed_by = observation.fed_by
        observation.detected_engine = self.detected
        observation.info.append(InfoSample("engine_detected_info", (("detected", self.detected or ""),)))
        return observation

    async def close(self) -> None:
        if self.delegate is not None:
            await self.delegate.close()
