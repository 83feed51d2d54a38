"""`engine: auto`: identify the engine from what the target answers, then poll it as that engine.

Every registered source declares how it is recognised (`metrics_prefix`, `detect_probe`): the
/metrics family prefixes decide first; a llama.cpp server without --metrics is recognised by its
501/503 error envelope; else each source's probe (an endpoint and a JSON key only it answers with).
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


async def detect(http: HttpFetcher) -> str:
    response = await http.get("/metrics")
    if response.status == 200:
        engine = detect_from_metrics(response.body[:1_000_000].decode("utf-8", "replace"))
        if engine:
            return engine
    error = response.json_object(limit=65536).get("error")
    if (
        isinstance(error, dict)
        and error.get("type") in ("not_supported_error", "unavailable_error")
        and "llamacpp" in REGISTRY
    ):
        return "llamacpp"  # llama-server's error envelope (no --metrics, or loading)
    for engine, source in REGISTRY.items():  # engines whose Prometheus text is elsewhere
        if source.metrics_prefix and source.metrics_path != "/metrics":
            answer = await http.get(source.metrics_path)
            if (
                answer.status == 200
                and detect_from_metrics(answer.body[:1_000_000].decode("utf-8", "replace")) == engine
            ):
                return engine
    for engine, source in REGISTRY.items():
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
        observation = await self.delegate.collect()
        self.fed_by = self.delegate.fed_by
        observation.detected_engine = self.detected
        observation.info.append(InfoSample("engine_detected_info", (("detected", self.detected or ""),)))
        return observation

    async def close(self) -> None:
        if self.delegate is not None:
            await self.delegate.close()
