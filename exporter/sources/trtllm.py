"""TensorRT-LLM (`trtllm-serve`): Prometheus text at /prometheus/metrics (its /metrics is JSON iteration stats).

Families are `trtllm_*` with labels `model_name` and `engine_type` (combined per model). The token hit ratio
is Δ`trtllm_prompt_cached_tokens_total` / Δ`trtllm_prompt_tokens_total` (every prompt token of a finished
request, cached or computed, as its `usage.prompt_tokens`); TensorRT-LLM's own `trtllm_kv_cache_hit_rate`
gauge covers one iteration and is not used. Mapped from the engine's metrics code (tensorrt_llm/metrics/
collector.py, see tests/fixtures/trtllm/SOURCES.md); no TensorRT-LLM server can run here (CUDA only).
"""

from __future__ import annotations

from .base import PrometheusTextSource
from .mapping import Feed, Upstream

U = Upstream
MODEL_LABEL = "model_name"
V = "1.x (collector.py)"
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("trtllm_num_requests_running", V),)),
    Feed("requests_waiting", "gauge", (U("trtllm_num_requests_waiting", V),)),
    Feed("kv_cache_usage_ratio", "gauge", (U("trtllm_kv_cache_utilization", V, combine="mean"),)),
    Feed("kv_cache_hit_tokens", "counter", (U("trtllm_prompt_cached_tokens_total", V),)),
    Feed("kv_cache_query_tokens", "counter", (U("trtllm_prompt_tokens_total", V),)),
    Feed(
        "kv_cache_hit_tokens_by_tier",
        "counter",
        (U("trtllm_prompt_cache_hit_tokens_total", V),),
        required=False,
        label="cache_tier",
        label_as="tier",
    ),
    Feed("prompt_tokens", "counter", (U("trtllm_prompt_tokens_total", V),)),
    Feed("generation_tokens", "counter", (U("trtllm_generation_tokens_total", V),)),
    Feed(
        "requests_finished",
        "counter",
        (U("trtllm_request_success_total", V),),
        label="finished_reason",
        label_as="reason",
    ),
    Feed("token_queue_latency", "histogram", (U("trtllm_request_queue_time_seconds", V),)),
    Feed("time_to_first_token", "histogram", (U("trtllm_time_to_first_token_seconds", V),)),
    Feed("time_per_output_token", "histogram", (U("trtllm_time_per_output_token_seconds", V),)),
    Feed("request_latency", "histogram", (U("trtllm_e2e_request_latency_seconds", V),)),
    Feed("request_prefill", "histogram", (U("trtllm_request_prefill_time_seconds", V),), required=False),
    Feed("request_decode", "histogram", (U("trtllm_request_decode_time_seconds", V),), required=False),
    Feed("request_inference", "histogram", (U("trtllm_request_inference_time_seconds", V),), required=False),
)
DOCS = """\
Text at `GET /prometheus/metrics` (`/metrics` is TensorRT-LLM's JSON iteration stats, not read);
readiness from `GET /health`. `model_name`/`engine_type` label every series; they are combined per
model. `trtllm_prompt_tokens_total` counts every prompt token of finished requests (cached ones
included), so it is the query counter of the token hit ratio; `trtllm_kv_cache_hit_rate` (one
iteration's block hit rate) is not used. `trtllm_time_per_output_token_seconds` is observed once per
finished request: `llm_time_per_output_token_seconds`, not the inter-token latency (absent). Built
from the engine's own metrics code (no server runs here)."""


class TrtllmSource(PrometheusTextSource):
    engine = "trtllm"
    title = "TensorRT-LLM"
    mapping = MAPPING
    model_label = MODEL_LABEL
    metrics_prefix = "trtllm_"
    metrics_path = "/prometheus/metrics"
    docs = DOCS

    hint = "not trtllm-serve?"
