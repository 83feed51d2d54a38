"""`engine: auto`: identify the engine from what the target answers, then poll it as that engine.

/metrics prefixes decide first (`llamacpp:`, `vllm:`, `sglang:`, `tgi_`); a llama.cpp server
without --metrics is recognised by its 501/503 error bodies and /props, vLLM by /version, TGI by
/info, SGLang by /get_server_info. The choice is shown in `llm_engine_detected_info{detected}`
and kept until the exporter restarts or reloads.
"""

from __future__ import annotations

import json

from ..observation import InfoSample, Observation, PollError, Reason
from .base import HttpFetcher, Source

PREFIXES = (("llamacpp:", "llamacpp"), ("vllm:", "vllm"), ("sglang:", "sglang"), ("tgi_", "tgi"))


def detect_from_metrics(text: str) -> str | None:
    """The engine whose metric prefix appears first in a /metrics payload."""
    best: tuple[int, str] | None = None
    for prefix, engine in PREFIXES:
        at = text.find("\n" + prefix)
        if text.startswith(prefix):
            at = 0
        if at >= 0 and (best is None or at < best[0]):
            best = (at, engine)
    return best[1] if best else None


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body[:65536])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def detect(http: HttpFetcher) -> str:
    response = await http.get("/metrics")
    if response.status == 200:
        engine = detect_from_metrics(response.body[:1_000_000].decode("utf-8", "replace"))
        if engine:
            return engine
    error = _json(response.body).get("error")
    if isinstance(error, dict) and error.get("type") in ("not_supported_error", "unavailable_error"):
        return "llamacpp"  # llama-server's error envelope (no --metrics, or loading)
    for path, engine, key in (("/props", "llamacpp", "default_generation_settings"), ("/version", "vllm", "version"),
                              ("/info", "tgi", "model_id"), ("/get_server_info", "sglang", "tp_size")):
        answer = await http.get(path)
        if answer.status == 200 and key in _json(answer.body):
            return engine
    raise PollError(Reason.PARSE, "cannot identify the engine (no known /metrics prefix or endpoint)")


class AutoSource(Source):
    engine = "auto"

    def __init__(self, target, shared=None):  # noqa: ANN001
        super().__init__(target, shared)
        self.delegate: Source | None = None
        self.detected: str | None = None

    async def collect(self, http: HttpFetcher | None, now: float) -> Observation:
        assert http is not None
        if self.delegate is None:
            from . import SOURCES  # the registry imports this module

            self.detected = await detect(http)
            self.delegate = SOURCES[self.detected](self.target, self.shared)
        observation = await self.delegate.collect(http, now)
        observation.info.append(InfoSample("engine_detected_info", (("detected", self.detected or ""),)))
        return observation

    async def close(self) -> None:
        if self.delegate is not None:
            await self.delegate.close()
