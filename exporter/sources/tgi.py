"""Hugging Face TGI (text-generation-inference): /health, /info and /metrics.

TGI's router listens only once the model is loaded (connection refused before), and /health
answers 200 when a shard can serve. Series carry no model label: the model comes from /info
(`model_id`). TGI has no KV-cache metrics at all: none are exposed (not zeros).
"""

from __future__ import annotations

import json

from ..config import TargetConfig
from ..observation import (
    InfoSample,
    ModelState,
    ModelStatus,
    Observation,
    PollError,
    Readiness,
)
from .base import HttpFetcher, SharedContext, Source
from .mapping import MAX_LABEL_VALUE, Feed, Upstream, apply, prefixes

U = Upstream
MODEL_LABEL = "model"  # TGI sets none; every series maps to the model from /info
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("tgi_batch_current_size", "1.0-3.x"),)),
    Feed("requests_waiting", "gauge", (U("tgi_queue_size", "1.0-3.x"),)),
    Feed("token_queue_latency", "histogram", (U("tgi_request_queue_duration", "1.0-3.x"),)),
    Feed("request_latency", "histogram", (U("tgi_request_duration", "1.0-3.x"),)),
    Feed("prompt_tokens", "counter", (U("tgi_request_input_length_sum", "1.0-3.x"),)),
    Feed("generation_tokens", "counter", (U("tgi_request_generated_tokens_sum", "1.0-3.x"),)),
    Feed("requests_finished", "counter", (U("tgi_request_success_total", "1.0-3.x"),),
         const_labels=(("reason", "success"),)),
    Feed("requests_finished", "counter", (U("tgi_request_failure_total", "1.0-3.x"),), required=False, label="err",
         label_as="reason"),
)
METRICS_PREFIXES = prefixes(MAPPING)
MODEL_STATES = (ModelState.LOADED, ModelState.LOADING)


class TgiSource(Source):
    engine = "tgi"

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.model: str | None = None

    async def collect(self, http: HttpFetcher | None, now: float) -> Observation:
        assert http is not None
        if await self.still_loading(http):
            observation = Observation(Readiness.LOADING, model_states=MODEL_STATES)
            observation.lifecycle[""] = ModelStatus(ModelState.LOADING, model=self.model or "")
            return observation
        if self.model is None:
            self.model = await self._model(http)
        payload, text = await self.read_metrics(http, METRICS_PREFIXES, "tgi_", "not a TGI server?")
        models, misses = apply(payload, MAPPING, MODEL_LABEL)
        sample = models.pop("", None)
        if sample is not None:
            models[self.model or ""] = sample
        info = [InfoSample("engine_info", (("model", self.model or ""), ("build", ""), ("model_path", "")))]
        observation = Observation(Readiness.READY, models=models, mapping_misses=tuple(misses), info=info,
                                  model_states=MODEL_STATES)
        self.add_passthrough(observation, text)
        observation.lifecycle[""] = ModelStatus(ModelState.LOADED, model=self.model or "")
        return observation

    async def _model(self, http: HttpFetcher) -> str:
        try:
            response = await http.get("/info")
            info = json.loads(response.body) if response.status == 200 else {}
        except (PollError, ValueError):
            return ""
        model = info.get("model_id") if isinstance(info, dict) else None
        return str(model)[:MAX_LABEL_VALUE] if model else ""
