"""Hugging Face TGI (text-generation-inference): /health, /info and /metrics.

TGI's router listens only once the model is loaded (connection refused before), and /health
answers 200 when a shard can serve. Series carry no model label: the model comes from /info
(`model_id`). TGI has no KV-cache metrics at all: none are exposed (not zeros).
"""

from __future__ import annotations

from ..config import TargetConfig
from ..observation import (
    InfoSample,
    ModelState,
    ModelStatus,
    Observation,
    PollError,
    Readiness,
)
from .base import HttpSource, SharedContext
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
    Feed(
        "requests_finished",
        "counter",
        (U("tgi_request_success_total", "1.0-3.x"),),
        const_labels=(("reason", "success"),),
    ),
    Feed(
        "requests_finished",
        "counter",
        (U("tgi_request_failure_total", "1.0-3.x"),),
        required=False,
        label="err",
        label_as="reason",
    ),
)
METRICS_PREFIXES = prefixes(MAPPING)
MODEL_STATES = (ModelState.LOADED, ModelState.LOADING)
DOCS = """\
TGI series carry no model label: the model is `model_id` from `/info`. TGI has no KV-cache
metrics: `llm_kv_cache_*` are absent for TGI targets (never zeros), so a router reading the three
router gauges gets running and waiting but no KV utilisation from TGI."""


class TgiSource(HttpSource):
    engine = "tgi"
    title = "TGI"
    mapping = MAPPING
    model_label = "(none: model from /info)"
    metrics_prefix = "tgi_"
    detect_probe = ("/info", "model_id")
    docs = DOCS

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.model: str | None = None

    async def collect(self) -> Observation:
        if await self.still_loading():
            observation = Observation(Readiness.LOADING, model_states=MODEL_STATES)
            observation.lifecycle[""] = ModelStatus(ModelState.LOADING, model=self.model or "")
            return observation
        if self.model is None:
            self.model = await self._model()
        payload, text = await self.read_metrics(METRICS_PREFIXES, "tgi_", "not a TGI server?")
        models, misses = apply(payload, MAPPING, MODEL_LABEL, chosen_by_key=self.fed_by)
        sample = models.pop("", None)
        if sample is not None:
            models[self.model or ""] = sample
        info = [InfoSample("engine_info", (("model", self.model or ""), ("build", ""), ("model_path", "")))]
        observation = Observation(
            Readiness.READY,
            models=models,
            mapping_misses=tuple(misses),
            dropped_series=payload.dropped,
            info=info,
            model_states=MODEL_STATES,
        )
        self.add_passthrough(observation, text)
        observation.lifecycle[""] = ModelStatus(ModelState.LOADED, model=self.model or "")
        return observation

    async def _model(self) -> str:
        try:
            response = await self.http.get("/info")
        except PollError:
            return ""
        model = response.json_object(limit=65536).get("model_id") if response.status == 200 else None
        return str(model)[:MAX_LABEL_VALUE] if model else ""
