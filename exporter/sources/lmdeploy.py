"""LMDeploy (`lmdeploy serve api_server --enable-metrics`): `lmdeploy:*` families at /metrics.

Labels `model_name` and `engine` (the data-parallel rank, combined per model). Token counts come from the
per-request histograms' sums (`lmdeploy:request_prompt_tokens_sum`, `..._generation_tokens_sum`): they add
each finished request's prompt and output lengths, what its client got as `usage`. The iteration counter
`lmdeploy:generation_tokens_total` is not used: the metrics code read for this source increments it twice per
iteration (tests/fixtures/lmdeploy/SOURCES.md), and `lmdeploy:prompt_tokens_total` ("prefill tokens
processed") does not say whether cached tokens count. Mapped from the engine's metrics code; no LMDeploy
server can run here (CUDA only).
"""

from __future__ import annotations

from .base import PrometheusTextSource
from .mapping import Feed, Upstream

U = Upstream
MODEL_LABEL = "model_name"
V = "0.10+ (loggers.py)"
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("lmdeploy:num_requests_running", V),)),
    Feed("requests_waiting", "gauge", (U("lmdeploy:num_requests_waiting", V),)),
    Feed("kv_cache_usage_ratio", "gauge", (U("lmdeploy:gpu_cache_usage_perc", V, combine="mean"),)),
    Feed("kv_cache_hit_tokens", "counter", (U("lmdeploy:cached_tokens_total", "0.18+"),), required=False),
    Feed("prompt_tokens", "counter", (U("lmdeploy:request_prompt_tokens_sum", V),)),
    Feed("generation_tokens", "counter", (U("lmdeploy:request_generation_tokens_sum", V),)),
    Feed("token_queue_latency", "histogram", (U("lmdeploy:request_queue_time_seconds", V),)),
    Feed("time_to_first_token", "histogram", (U("lmdeploy:time_to_first_token_seconds", V),)),
    Feed("inter_token_latency", "histogram", (U("lmdeploy:time_per_output_token_seconds", V),)),
    Feed("request_latency", "histogram", (U("lmdeploy:e2e_request_latency_seconds", V),)),
    Feed("request_prefill", "histogram", (U("lmdeploy:request_prefill_time_seconds", V),), required=False),
    Feed("request_decode", "histogram", (U("lmdeploy:request_decode_time_seconds", V),), required=False),
    Feed("request_inference", "histogram", (U("lmdeploy:request_inference_time_seconds", V),), required=False),
    Feed("request_prompt_length", "histogram", (U("lmdeploy:request_prompt_tokens", V),), required=False),
    Feed("request_generation_length", "histogram", (U("lmdeploy:request_generation_tokens", V),), required=False),
)
DOCS = """\
`lmdeploy:*` at `/metrics` (start with `--enable-metrics`), readiness from `GET /health`. Prompt and
generation tokens are the per-request histograms' sums (each finished request's lengths, as its
`usage`); `lmdeploy:generation_tokens_total` is not used (incremented twice per iteration in the code
read) and `lmdeploy:prompt_tokens_total` does not say whether cached tokens count. `prefix_cache_hit_rate`
is a gauge over an engine-chosen interval and is not used; `cached_tokens_total` (0.18+) feeds the hit
tokens counter. Built from the engine's own metrics code (no server runs here)."""


class LmdeploySource(PrometheusTextSource):
    engine = "lmdeploy"
    title = "LMDeploy"
    mapping = MAPPING
    model_label = MODEL_LABEL
    metrics_prefix = "lmdeploy:"
    docs = DOCS

    hint = "started without --enable-metrics?"
