"""SGLang: /ready and /metrics (server started with --enable-metrics).

Readiness never runs a generation: SGLang's `GET /health` (and `/health_generate`) sends a one-token
request through the scheduler and takes at least a second (SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION,
default on since sglang#13320), so it is never called. `GET /ready` (0.5.23) answers 200 once the
tokenizer manager is ready and not paused, 503 before; a server without it (404) is asked `GET
/model_info` (no scheduler work; the older `/get_model_info` logs a deprecation warning on every call
where /model_info exists, so it is asked only when /model_info is missing too).

The hit ratio is Δ`sglang:cached_tokens_total` / Δ`sglang:prompt_tokens_total`;
`sglang:cache_hit_rate` covers only the last prefill batch and is not used. Newer versions label
series with `tp_rank`/`dp_rank`/`engine_type`: they are combined per model.
"""

from __future__ import annotations

from ..observation import ModelSample, ModelState, ModelStatus, Observation, PollError, Reason
from ..promparse import Payload
from .base import PrometheusTextSource, expect_status
from .mapping import Feed, Upstream

U = Upstream
MODEL_LABEL = "model_name"
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("sglang:num_running_reqs", "0.3-0.5"),)),
    Feed("requests_waiting", "gauge", (U("sglang:num_queue_reqs", "0.3-0.5"),)),
    Feed("kv_cache_usage_ratio", "gauge", (U("sglang:token_usage", "0.3-0.5", combine="mean"),)),
    Feed("kv_cache_hit_tokens", "counter", (U("sglang:cached_tokens_total", "0.4-0.5"),)),
    Feed(
        "kv_cache_hit_tokens_by_tier",
        "counter",
        (U("sglang:cached_tokens_total", "0.5.23+ (cache_source)"),),
        required=False,
        label="cache_source",
        label_as="tier",
    ),
    Feed("kv_cache_query_tokens", "counter", (U("sglang:prompt_tokens_total", "0.3-0.5"),)),
    Feed("prompt_tokens", "counter", (U("sglang:prompt_tokens_total", "0.3-0.5"),)),
    Feed("generation_tokens", "counter", (U("sglang:generation_tokens_total", "0.3-0.5"),)),
    Feed(
        "token_queue_latency",
        "histogram",
        (U("sglang:queue_time_seconds", "0.5.x"), U("sglang:queue_time_s", "0.5 early")),
    ),
    Feed("time_to_first_token", "histogram", (U("sglang:time_to_first_token_seconds", "0.3-0.5"),)),
    Feed(
        "inter_token_latency",
        "histogram",
        (U("sglang:inter_token_latency_seconds", "0.4-0.5.22"), U("sglang:time_per_output_token_seconds", "0.3")),
        required=False,
    ),
    Feed(
        "time_per_output_token",
        "histogram",
        (U("sglang:request_time_per_output_token_seconds", "0.5.23+"),),
        required=False,
    ),
    Feed("request_latency", "histogram", (U("sglang:e2e_request_latency_seconds", "0.3-0.5"),)),
    Feed(
        "startup_phase_seconds", "gauge", (U("sglang:startup_time_seconds", "0.5.18+"),), required=False, label="phase"
    ),
    Feed("request_prompt_length", "histogram", (U("sglang:prompt_tokens_histogram", "0.5.x"),), required=False),
    Feed("request_generation_length", "histogram", (U("sglang:generation_tokens_histogram", "0.5.x"),), required=False),
)
# The startup phase that spans launch to ready: SGLang's TokenizerManager measures tokenizer_e2e from
# the engine launch until every scheduler reported ready (it covers load_weight, kv_cache_allocation
# and scheduler_e2e); the HTTP server's start and the warm-up request (~1 s) follow it.
START_TO_READY_PHASE = "tokenizer_e2e"
READY_PATHS = ("/ready", "/model_info", "/get_model_info")  # asked in this order; the first that exists is kept
DOCS = """\
Readiness from `GET /ready` (200 ready, 503 starting or paused); servers without it are asked
`/model_info` (then `/get_model_info`), which do no scheduler work. `/health` is never called: it runs
a one-token generation. `sglang:prompt_tokens_total` counts every
prompt token, cached ones included, so it is the query counter of the hit ratio and
`llm_prompt_tokens_total` for SGLang includes cache hits. `sglang:cache_hit_rate` covers only the
last prefill batch and is not used. `tp_rank`/`dp_rank`/`engine_type` labels are combined per model.
The start load time is `sglang:startup_time_seconds{phase="tokenizer_e2e"}` (basis
`engine_reported`)."""


class SglangSource(PrometheusTextSource):
    engine = "sglang"
    title = "SGLang"
    mapping = MAPPING
    model_label = MODEL_LABEL
    metrics_prefix = "sglang:"
    detect_probe = ("/get_server_info", "tp_size")
    endpoints = READY_PATHS
    docs = DOCS
    hint = "started without --enable-metrics?"

    ready_path = READY_PATHS[0]

    async def not_ready(self) -> Observation | None:
        """Loading while the server is starting (or paused); a failure when it answers neither way."""
        for path in READY_PATHS[READY_PATHS.index(self.ready_path) :]:
            response = await self.http.get(path)
            if response.status == 404:
                continue  # an older server: try the next endpoint, and keep that one
            self.ready_path = path
            if response.status == 503:
                return self.loading()
            expect_status(response, path)
            return None
        raise PollError(Reason.HTTP_STATUS, f"none of {', '.join(READY_PATHS)} answered (404): not SGLang?")

    def model_status(self, observation: Observation, payload: Payload) -> ModelStatus:
        model = observation.models.get(self.served_model, ModelSample())
        startup = model.get("startup_phase_seconds", phase=START_TO_READY_PHASE)
        return ModelStatus(ModelState.LOADED, model=self.served_model, engine_load_seconds=startup)
