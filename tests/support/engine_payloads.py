"""Builds the TensorRT-LLM and LMDeploy payload fixtures with prometheus_client, declaring each family exactly
as the engines' metrics code does at the commits named in the SOURCES.md files (names, HELP, types, label
names, bucket bounds), and observing a small scripted workload.

    python tests/support/engine_payloads.py tests/fixtures   # rewrites both files
"""

import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

out = Path(sys.argv[1])
LAT = [
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]
TTFT = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
]
TPOT = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
PREFILL = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
# three finished requests: (queue, ttft, tpot, prefill, decode, e2e, prompt, cached, generated)
REQUESTS = [
    (0.02, 0.15, 0.03, 0.12, 0.9, 1.1, 120, 0, 30),
    (0.4, 0.6, 0.035, 0.18, 1.2, 1.85, 120, 96, 35),
    (0.05, 0.2, 0.028, 0.14, 0.7, 0.95, 64, 48, 25),
]


def trtllm() -> bytes:
    r = CollectorRegistry()
    names, values = ["model_name", "engine_type"], ["tiny-llama", "trtllm"]
    L = dict(zip(names, values, strict=True))
    success = Counter(
        "trtllm_request_success_total",
        "Count of successfully processed requests.",
        names + ["finished_reason"],
        registry=r,
    )
    e2e = Histogram(
        "trtllm_e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        names,
        buckets=LAT,
        registry=r,
    )
    ttft = Histogram(
        "trtllm_time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        names,
        buckets=TTFT,
        registry=r,
    )
    tpot = Histogram(
        "trtllm_time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        names,
        buckets=TPOT,
        registry=r,
    )
    queue = Histogram(
        "trtllm_request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        names,
        buckets=LAT,
        registry=r,
    )
    prefill = Histogram(
        "trtllm_request_prefill_time_seconds",
        "Histogram of prefill (context) phase duration in seconds (first_token_time - first_scheduled_time).",
        names,
        buckets=PREFILL,
        registry=r,
    )
    decode = Histogram(
        "trtllm_request_decode_time_seconds",
        "Histogram of decode (generation) phase duration in seconds (last_token_time - first_token_time).",
        names,
        buckets=LAT,
        registry=r,
    )
    infer = Histogram(
        "trtllm_request_inference_time_seconds",
        "Histogram of total inference duration in seconds (last_token_time - first_scheduled_time).",
        names,
        buckets=LAT,
        registry=r,
    )
    prompt = Counter(
        "trtllm_prompt_tokens_total", "Cumulative number of prompt (input) tokens processed.", names, registry=r
    )
    gen = Counter(
        "trtllm_generation_tokens_total", "Cumulative number of generation (output) tokens produced.", names, registry=r
    )
    cached = Counter(
        "trtllm_prompt_cached_tokens_total",
        "Process-lifetime total prompt tokens served from KV cache. Resets only when the serving process "
        "restarts, not when the KV cache is flushed or evicted.",
        names,
        registry=r,
    )
    hit_rate = Gauge("trtllm_kv_cache_hit_rate", "KV cache hit rate", names, registry=r)
    reused = Counter(
        "trtllm_kv_cache_reused_blocks", "Cumulative number of KV cache blocks reused (cache hits)", names, registry=r
    )
    missed = Counter(
        "trtllm_kv_cache_missed_blocks", "Cumulative number of KV cache blocks missed (cache misses)", names, registry=r
    )
    util = Gauge("trtllm_kv_cache_utilization", "KV cache utilization", names, registry=r)
    running = Gauge("trtllm_num_requests_running", "Number of active requests", names, registry=r)
    waiting = Gauge("trtllm_num_requests_waiting", "Number of queued requests", names, registry=r)
    for q, t, p, pf, dc, e, n, c, g in REQUESTS:
        success.labels(**L, finished_reason="stop").inc()
        e2e.labels(**L).observe(e)
        ttft.labels(**L).observe(t)
        tpot.labels(**L).observe(p)
        queue.labels(**L).observe(q)
        prefill.labels(**L).observe(pf)
        decode.labels(**L).observe(dc)
        infer.labels(**L).observe(pf + dc)
        prompt.labels(**L).inc(n)
        gen.labels(**L).inc(g)
        cached.labels(**L).inc(c)
    reused.labels(**L).inc(9)
    missed.labels(**L).inc(10)
    hit_rate.labels(**L).set(9 / 19)
    util.labels(**L).set(0.125)
    running.labels(**L).set(1)
    waiting.labels(**L).set(2)
    return generate_latest(r)


def build_1_2_5(max_value: int) -> list[int]:
    out: list[int] = []
    e = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**e
            if v > max_value:
                return out
            out.append(v)
        e += 1


def lmdeploy() -> bytes:
    import prometheus_client

    prometheus_client.disable_created_metrics()
    r = CollectorRegistry()
    names, values = ["model_name", "engine"], ["tiny-llama", "0"]
    L = dict(zip(names, values, strict=True))
    running = Gauge(
        "lmdeploy:num_requests_running", "Number of requests in model execution batches.", names, registry=r
    )
    waiting = Gauge("lmdeploy:num_requests_waiting", "Number of requests waiting to be processed.", names, registry=r)
    usage = Gauge("lmdeploy:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", names, registry=r)
    prompt = Counter("lmdeploy:prompt_tokens_total", "Number of prefill tokens processed.", names, registry=r)
    gen = Counter("lmdeploy:generation_tokens_total", "Number of generation tokens processed.", names, registry=r)
    pt = Histogram(
        "lmdeploy:request_prompt_tokens",
        "Number of prefill tokens processed.",
        names,
        buckets=build_1_2_5(4096),
        registry=r,
    )
    gt = Histogram(
        "lmdeploy:request_generation_tokens",
        "Number of generation tokens processed.",
        names,
        buckets=build_1_2_5(4096),
        registry=r,
    )
    ttft = Histogram(
        "lmdeploy:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        names,
        buckets=TTFT,
        registry=r,
    )
    tpot = Histogram(
        "lmdeploy:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        names,
        buckets=TPOT,
        registry=r,
    )
    e2e = Histogram(
        "lmdeploy:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        names,
        buckets=LAT,
        registry=r,
    )
    queue = Histogram(
        "lmdeploy:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        names,
        buckets=LAT,
        registry=r,
    )
    infer = Histogram(
        "lmdeploy:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        names,
        buckets=LAT,
        registry=r,
    )
    prefill = Histogram(
        "lmdeploy:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        names,
        buckets=LAT,
        registry=r,
    )
    decode = Histogram(
        "lmdeploy:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        names,
        buckets=LAT,
        registry=r,
    )
    for q, t, p, pf, dc, e, n, c, g in REQUESTS:
        # record(): the iteration counters; the generation counter is incremented twice per iteration there
        prompt.labels(**L).inc(n - c)
        gen.labels(**L).inc(g)
        gen.labels(**L).inc(g)
        ttft.labels(**L).observe(t)
        tpot.labels(**L).observe(p)
        e2e.labels(**L).observe(e)
        queue.labels(**L).observe(q)
        prefill.labels(**L).observe(pf)
        infer.labels(**L).observe(pf + dc)
        decode.labels(**L).observe(dc)
        pt.labels(**L).observe(n)
        gt.labels(**L).observe(g)
    running.labels(**L).set(1)
    waiting.labels(**L).set(2)
    usage.labels(**L).set(0.125)
    return generate_latest(r)


(out / "trtllm" / "trtllm-main-050f80d-metrics.prom").write_bytes(trtllm())
(out / "lmdeploy" / "lmdeploy-main-0168eed-metrics.prom").write_bytes(lmdeploy())
