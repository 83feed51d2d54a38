"""Hugging Face TGI (text-generation-inference): /health, /info and /metrics.

TGI's router listens only once the model is loaded (connection refused before), and /health
answers 200 when a shard can serve. Series carry no model label: the model comes from /info
(`model_id`). TGI has no KV-cache metrics at all: none are exposed (not zeros).
"""

from __future__ import annotations

from ..config import TargetConfig
from ..observation import InfoSample, ModelSample, Observation, PollError
from ..promparse import Payload
from .base import PrometheusTextSource, SharedContext
from .mapping import MAX_LABEL_VALUE, Feed, Upstream

U = Upstream
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
DOCS = """\
TGI series carry no model label: the model is `model_id` from `/info`. TGI has no KV-cache
metrics: `llm_kv_cache_*` are absent for TGI targets (never zeros), so a router reading the three
router gauges gets running and waiting but no KV utilisation from TGI."""


class TgiSource(PrometheusTextSource):
    engine = "tgi"
    title = "TGI"
    mapping = MAPPING
    metrics_prefix = "tgi_"
    detect_probe = ("/info", "model_id")
    docs = DOCS
    hint = "not a TGI server?"

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.model: str | None = None  # model_id from /info, asked until it answers

    async def not_ready(self) -> Observation | None:
        if await self.still_loading():
            return self.loading()
        if self.model is None:
            self.model = await self._model()
        return None

    def map(self, payload: Payload) -> tuple[dict[str, ModelSample], list[str]]:
        models, misses = super().map(payload)
        sample = models.pop("", None)  # TGI labels no series with its model: name them by /info's
        if sample is not None:
            models[self.model or ""] = sample
        return models, misses

    def extend(self, observation: Observation, payload: Payload) -> None:
        observation.info = [InfoSample("engine_info", (("model", self.model or ""), ("build", ""), ("model_path", "")))]

    def model_name(self, models: dict[str, ModelSample]) -> str:
        return self.model or ""

    async def _model(self) -> str | None:
        """model_id from /info; None when /info did not answer (asked again at the next poll)."""
        try:
            response = await self.http.get("/info")
        except PollError:
            return None
        if response.status != 200:
            return None
        model = response.json_object(limit=65536).get("model_id")
        return str(model)[:MAX_LABEL_VALUE] if model else ""
