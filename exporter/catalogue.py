"""The unified metric namespace: every metric the exporter can expose.

One table, used by samples.py to build families and by
tests/unit/test_docs.py to check that docs/metrics.md lists every metric.
Names are given without the namespace prefix (default `llm`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    key: str  # the key sources and state use
    name: str  # exposed name without namespace (counters without _total)
    type: str  # gauge | counter | histogram | info
    help: str
    labels: tuple[str, ...] = ()  # labels besides target, engine, model and configured labels
    never_negative: bool = False  # a gauge no engine can report below 0 (counters and ratios always are)

    @property
    def suffix(self) -> str:
        """What the sample name adds to the family name: counters end in _total."""
        return "_total" if self.type == "counter" else ""

    @property
    def non_negative(self) -> bool:
        """Values below 0 are hostile or broken: they are dropped (state.py)."""
        return self.never_negative or self.type == "counter" or self.name.endswith("_ratio")


# Per-model metrics that sources fill from engine payloads.
ENGINE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "requests_running",
        "requests_running",
        "gauge",
        "Requests currently being processed (in a batch slot).",
        never_negative=True,
    ),
    MetricSpec(
        "requests_waiting", "requests_waiting", "gauge", "Requests waiting for a batch slot.", never_negative=True
    ),
    MetricSpec(
        "requests_waiting_by_reason",
        "requests_waiting_by_reason",
        "gauge",
        "Requests waiting, by why they wait (vLLM 0.20+: capacity, deferred).",
        ("reason",),
    ),
    MetricSpec("kv_cache_usage_ratio", "kv_cache_usage_ratio", "gauge", "Fraction of the KV cache in use (0-1)."),
    MetricSpec(
        "kv_cache_hit_tokens",
        "kv_cache_hit_tokens",
        "counter",
        "Prompt tokens served from the prefix/prompt cache: the sum of the "
        "usage.prompt_tokens_details.cached_tokens clients got.",
    ),
    MetricSpec(
        "kv_cache_hit_tokens_by_tier",
        "kv_cache_hit_tokens_by_tier",
        "counter",
        "Prompt tokens served from the prefix cache, by the cache tier that held them (device, host, "
        "disk/storage, ...), where the engine tells (SGLang 0.5.23+, vLLM 0.32+).",
        ("tier",),
    ),
    MetricSpec(
        "kv_cache_query_tokens",
        "kv_cache_query_tokens",
        "counter",
        "Prompt tokens looked up in the prefix/prompt cache (hits + misses).",
    ),
    MetricSpec(
        "kv_cache_hit_blocks",
        "kv_cache_hit_blocks",
        "counter",
        "Prefix-cache hits counted in KV blocks (engines that count blocks, not tokens).",
    ),
    MetricSpec(
        "kv_cache_query_blocks",
        "kv_cache_query_blocks",
        "counter",
        "Prefix-cache queries counted in KV blocks (engines that count blocks, not tokens).",
    ),
    MetricSpec(
        "kv_cache_lifetime_hit_ratio",
        "kv_cache_lifetime_hit_ratio",
        "gauge",
        "Engine-reported prefix-cache hit ratio since engine start (vLLM V0 gauge); not windowed.",
    ),
    MetricSpec(
        "prompt_tokens",
        "prompt_tokens",
        "counter",
        "Prompt tokens of the requests served, cached or computed: the sum of the usage.prompt_tokens "
        "clients got (computed vs cached: the kv_cache hit and query counters).",
    ),
    MetricSpec(
        "generation_tokens",
        "generation_tokens",
        "counter",
        "Tokens generated: the sum of the usage.completion_tokens clients got.",
    ),
    MetricSpec("preemptions", "preemptions", "counter", "Requests preempted by the scheduler."),
    MetricSpec(
        "requests_finished", "requests_finished", "counter", "Requests finished, by finish reason.", ("reason",)
    ),
    MetricSpec("slots_total", "slots", "gauge", "Batch slots (parallel sequences) the engine serves."),
    MetricSpec(
        "startup_phase_seconds",
        "engine_startup_phase_seconds",
        "gauge",
        "Engine startup time by phase, as the engine reports it (SGLang 0.5.18+).",
        ("phase",),
    ),
    MetricSpec("context_size_tokens", "context_size_tokens", "gauge", "Context size per slot, in tokens."),
    MetricSpec(
        "model_memory_bytes",
        "model_memory_bytes",
        "gauge",
        "Memory the loaded model takes, weights and context (Ollama /api/ps `size`).",
        never_negative=True,
    ),
    MetricSpec(
        "model_vram_bytes",
        "model_vram_bytes",
        "gauge",
        "Part of the loaded model's memory on the GPU (Ollama /api/ps `size_vram`).",
        never_negative=True,
    ),
    MetricSpec(
        "model_keep_alive_expiry",
        "model_keep_alive_expiry_timestamp_seconds",
        "gauge",
        "Unix time the loaded model's keep-alive runs out and it is unloaded if still idle "
        "(Ollama /api/ps `expires_at`).",
        never_negative=True,
    ),
    MetricSpec(
        "token_queue_latency",
        "token_queue_latency_seconds",
        "histogram",
        "Time requests waited before getting a batch slot. Engine buckets where the engine "
        "has them; for llama.cpp an estimate with only the +Inf bucket (see docs/metrics.md).",
    ),
    MetricSpec(
        "time_to_first_token",
        "time_to_first_token_seconds",
        "histogram",
        "Time to first token, as the engine measures it.",
    ),
    MetricSpec(
        "inter_token_latency",
        "inter_token_latency_seconds",
        "histogram",
        "Time between consecutive output tokens, as the engine measures it.",
    ),
    MetricSpec(
        "request_latency",
        "request_latency_seconds",
        "histogram",
        "End-to-end request latency, as the engine measures it.",
    ),
    MetricSpec(
        "time_per_output_token",
        "time_per_output_token_seconds",
        "histogram",
        "Per finished request: its mean time per output token after the first, as the engine measures it. "
        "One observation per request, not per token: not the inter-token latency.",
    ),
    MetricSpec(
        "request_prefill",
        "request_prefill_seconds",
        "histogram",
        "Per finished request: time in the prefill phase (first scheduled to first token), as the engine measures it.",
    ),
    MetricSpec(
        "request_decode",
        "request_decode_seconds",
        "histogram",
        "Per finished request: time in the decode phase (first token to last token), as the engine measures it.",
    ),
    MetricSpec(
        "request_inference",
        "request_inference_seconds",
        "histogram",
        "Per finished request: time running (first scheduled to last token: prefill plus decode).",
    ),
    MetricSpec(
        "request_prompt_length",
        "request_prompt_tokens",
        "histogram",
        "Per finished request: its prompt length in tokens (the engine's histogram).",
    ),
    MetricSpec(
        "request_generation_length",
        "request_generation_tokens",
        "histogram",
        "Per finished request: the tokens it generated (the engine's histogram).",
    ),
    MetricSpec(
        "lora_adapter_running",
        "lora_adapter_running",
        "gauge",
        "1 for each LoRA adapter with requests running (vLLM vllm:lora_requests_info lists adapter names, "
        "not request counts).",
        ("adapter",),
    ),
    MetricSpec(
        "lora_adapter_waiting",
        "lora_adapter_waiting",
        "gauge",
        "1 for each LoRA adapter with requests waiting (vLLM vllm:lora_requests_info).",
        ("adapter",),
    ),
    MetricSpec(
        "lora_adapters_running", "lora_adapters_running", "gauge", "LoRA adapters with requests running now (vLLM)."
    ),
    MetricSpec(
        "lora_adapters_max", "lora_adapters_max", "gauge", "LoRA adapters that can run in one batch (vLLM max_lora)."
    ),
)

# Per-model metrics derived by the exporter over the target's window.
DERIVED_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "kv_cache_hit_ratio",
        "kv_cache_hit_ratio",
        "gauge",
        "Share of prompt tokens (or blocks, see unit) served from the prefix cache over the "
        "window: delta hits / delta queries. Absent when nothing was queried.",
        ("unit",),
    ),
    MetricSpec(
        "token_queue_latency_mean",
        "token_queue_latency_mean_seconds",
        "gauge",
        "Mean queue wait over the window: delta sum / delta count of the queue-latency "
        "histogram. Absent when no request left the queue in the window.",
    ),
    MetricSpec(
        "prompt_tokens_rate", "prompt_tokens_per_second", "gauge", "Prompt tokens computed per second over the window."
    ),
    MetricSpec(
        "generation_tokens_rate",
        "generation_tokens_per_second",
        "gauge",
        "Tokens generated per second over the window.",
    ),
)

# Per-model lifecycle (labels target, engine, model): states, loads and their durations.
LIFECYCLE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "model_state",
        "model_state",
        "gauge",
        "1 for the model's current lifecycle state, 0 for the other states its engine can report "
        "(loaded, loading, sleeping, unloaded, failed, downloading).",
        ("state",),
    ),
    MetricSpec(
        "model_loads",
        "model_loads",
        "counter",
        "Loads the exporter saw complete, by kind: start (process start to ready), load (a router "
        "or on-demand load), wake (sleeping to ready).",
        ("kind",),
    ),
    MetricSpec(
        "model_load_duration",
        "model_load_duration_seconds",
        "histogram",
        "Durations of the loads the exporter saw complete and could date, by kind.",
        ("kind",),
    ),
    MetricSpec(
        "model_load",
        "model_last_load_duration_seconds",
        "gauge",
        "Duration of the model's last load, by kind; basis says how it was dated (docs/metrics.md). "
        "Absent when it could not be measured.",
        ("kind", "basis"),
    ),
    MetricSpec(
        "model_load_failures",
        "model_load_failures",
        "counter",
        "Loads that failed: the engine reported a failed load, or the process went away while loading.",
    ),
    MetricSpec(
        "model_loaded_time",
        "model_loaded_timestamp_seconds",
        "gauge",
        "Unix time the model's current load finished (absent unless the model is loaded).",
    ),
    MetricSpec(
        "model_unloads",
        "model_unloads",
        "counter",
        "Unloads the exporter saw, by the reason the engine's answers tell: Ollama expired (its keep-alive "
        "ran out) or evicted (before it); a llama.cpp router evicted (another model started loading: "
        "--models-max) or requested.",
        ("reason",),
    ),
)

# Per-target metrics kept by the exporter itself.
TARGET_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("up", "up", "gauge", "1 when the last poll of the target succeeded, else 0."),
    MetricSpec(
        "target_absent",
        "target_absent",
        "gauge",
        "Only for `optional: true` targets: 1 while nothing has answered since the exporter started and "
        "nothing is there (connection refused; no NVIDIA driver or GPU), else 0. LLMTargetDown skips them.",
    ),
    MetricSpec("ready", "ready", "gauge", "1 when the engine is ready to serve, 0 when loading or down."),
    MetricSpec(
        "engine_restarts",
        "engine_restarts",
        "counter",
        "Engine restarts detected (counters going down, new process start time).",
    ),
    MetricSpec(
        "engine_healthy",
        "engine_healthy",
        "gauge",
        "1 when the engine's data-parallel rank reports healthy, 0 when unhealthy or dead (vLLM "
        "vllm:engine_healthy, with --enable-fault-tolerance).",
        ("rank",),
    ),
    MetricSpec(
        "engine_process_start_time",
        "engine_process_start_time_seconds",
        "gauge",
        "Unix time the engine process started.",
        ("basis",),
    ),
    MetricSpec(
        "endpoint_enabled",
        "engine_endpoint_enabled",
        "gauge",
        "1 when an optional engine endpoint answers, 0 when the engine has it disabled.",
        ("endpoint",),
    ),
    MetricSpec("poll_duration", "exporter_poll_duration_seconds", "gauge", "Duration of the last poll of the target."),
    MetricSpec("poll_errors", "exporter_poll_errors", "counter", "Failed polls by reason.", ("reason",)),
    MetricSpec("polls", "exporter_polls", "counter", "Polls of the target, failed ones included."),
    MetricSpec(
        "last_success", "exporter_last_success_timestamp_seconds", "gauge", "Unix time of the last successful poll."
    ),
    MetricSpec(
        "mapping_misses",
        "exporter_mapping_misses",
        "counter",
        "Polls where the target answered but none of the known upstream names for a unified metric "
        "was present (an upstream rename or removal, or a version without it).",
        ("metric",),
    ),
    MetricSpec(
        "series_dropped",
        "exporter_series_dropped",
        "counter",
        "Engine series dropped because the target exceeded max_series.",
    ),
)

# Per-GPU metrics (nvml targets). Labels gpu, uuid, name (and mig for MIG instances).
GPU_LABELS = ("gpu", "uuid", "name")
GPU_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "gpu_utilization_ratio",
        "gpu_utilization_ratio",
        "gauge",
        "Fraction of time a kernel ran on the GPU over the driver's sample period "
        "(nvmlDeviceGetUtilizationRates.gpu / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_utilization_ratio",
        "gpu_memory_utilization_ratio",
        "gauge",
        "Fraction of time device memory was read or written (nvmlDeviceGetUtilizationRates.memory / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_used_bytes",
        "gpu_memory_used_bytes",
        "gauge",
        "Device memory used, driver reservation excluded (nvmlDeviceGetMemoryInfo v2 .used; v1 on "
        "old drivers includes it).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_reserved_bytes",
        "gpu_memory_reserved_bytes",
        "gauge",
        "Device memory the driver reserves (nvmlDeviceGetMemoryInfo v2 .reserved).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_free_bytes",
        "gpu_memory_free_bytes",
        "gauge",
        "Device memory free (nvmlDeviceGetMemoryInfo.free).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_total_bytes",
        "gpu_memory_total_bytes",
        "gauge",
        "Device memory total (nvmlDeviceGetMemoryInfo.total).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_power_watts", "gpu_power_watts", "gauge", "Power draw (nvmlDeviceGetPowerUsage, mW / 1000).", GPU_LABELS
    ),
    MetricSpec(
        "gpu_power_limit_watts",
        "gpu_power_limit_watts",
        "gauge",
        "Enforced power limit (nvmlDeviceGetEnforcedPowerLimit, mW / 1000).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_energy_joules",
        "gpu_energy_joules",
        "counter",
        "Energy consumed since the driver loaded (nvmlDeviceGetTotalEnergyConsumption, mJ / 1000).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_temperature_celsius",
        "gpu_temperature_celsius",
        "gauge",
        "GPU core temperature (nvmlDeviceGetTemperature, NVML_TEMPERATURE_GPU).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_sm_clock_hertz",
        "gpu_sm_clock_hertz",
        "gauge",
        "SM clock (nvmlDeviceGetClockInfo NVML_CLOCK_SM, MHz × 1e6).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_memory_clock_hertz",
        "gpu_memory_clock_hertz",
        "gauge",
        "Memory clock (nvmlDeviceGetClockInfo NVML_CLOCK_MEM, MHz × 1e6).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_clock_event_active",
        "gpu_clock_event_active",
        "gauge",
        "1 for each clock-event (throttle) reason active now (nvmlDeviceGetCurrentClocksEventReasons).",
        GPU_LABELS + ("reason",),
    ),
    MetricSpec(
        "gpu_pcie_bytes_per_second",
        "gpu_pcie_bytes_per_second",
        "gauge",
        "PCIe throughput over the driver's 20 ms sample (nvmlDeviceGetPcieThroughput, KB/s × 1024).",
        GPU_LABELS + ("direction",),
    ),
    MetricSpec(
        "gpu_ecc_errors",
        "gpu_ecc_errors",
        "counter",
        "ECC errors since the GPU was made (nvmlDeviceGetTotalEccErrors, NVML_AGGREGATE_ECC).",
        GPU_LABELS + ("type",),
    ),
    MetricSpec(
        "gpu_performance_state",
        "gpu_performance_state",
        "gauge",
        "Performance state: 0 (P0, maximum) to 15 (P15, minimum) (nvmlDeviceGetPerformanceState).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_lost", "gpu_lost", "gauge", "1 when the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST).", GPU_LABELS
    ),
    # Profiling counters (NVML GPM, nvmlGpmMetricsGet over two samples: the poll interval). Hopper and newer.
    MetricSpec(
        "gpu_sm_active_ratio",
        "gpu_sm_active_ratio",
        "gauge",
        "Fraction of SMs busy over the poll interval, averaged over SMs (GPM NVML_GPM_METRIC_SM_UTIL / 100; "
        "DCGM's SM_ACTIVE). Unlike gpu_utilization_ratio, a tiny kernel on one SM reads near 0.",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_sm_occupancy_ratio",
        "gpu_sm_occupancy_ratio",
        "gauge",
        "Resident warps as a fraction of the SMs' maximum over the poll interval (GPM SM_OCCUPANCY / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_tensor_active_ratio",
        "gpu_tensor_active_ratio",
        "gauge",
        "Fraction of time the SMs' tensor pipes (any type) were active over the poll interval "
        "(GPM ANY_TENSOR_UTIL / 100): prefill and matmul-bound work.",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_tensor_hmma_active_ratio",
        "gpu_tensor_hmma_active_ratio",
        "gauge",
        "Fraction of time the half-precision (FP16/BF16) tensor pipes were active (GPM HMMA_TENSOR_UTIL / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_dram_bandwidth_utilization_ratio",
        "gpu_dram_bandwidth_utilization_ratio",
        "gauge",
        "Device-memory bandwidth used as a fraction of the theoretical maximum over the poll interval "
        "(GPM DRAM_BW_UTIL / 100): what bounds decode.",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_fp16_active_ratio",
        "gpu_fp16_active_ratio",
        "gauge",
        "Fraction of time the SMs ran non-tensor FP16 math (GPM FP16_UTIL / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_fp32_active_ratio",
        "gpu_fp32_active_ratio",
        "gauge",
        "Fraction of time the SMs ran non-tensor FP32 math (GPM FP32_UTIL / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_fp64_active_ratio",
        "gpu_fp64_active_ratio",
        "gauge",
        "Fraction of time the SMs ran non-tensor FP64 math (GPM FP64_UTIL / 100).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_pcie_average_bytes_per_second",
        "gpu_pcie_average_bytes_per_second",
        "gauge",
        "PCIe traffic averaged over the poll interval (GPM PCIE_TX/RX_PER_SEC, MiB/s × 2^20); "
        "gpu_pcie_bytes_per_second is the driver's 20 ms sample.",
        GPU_LABELS + ("direction",),
    ),
    MetricSpec(
        "gpu_nvlink_bytes_per_second",
        "gpu_nvlink_bytes_per_second",
        "gauge",
        "NVLink traffic over all links averaged over the poll interval (GPM NVLINK_TOTAL_TX/RX_PER_SEC, "
        "MiB/s × 2^20). Absent on GPUs without NVLink.",
        GPU_LABELS + ("direction",),
    ),
    # Faults.
    MetricSpec(
        "gpu_xid_errors",
        "gpu_xid_errors",
        "counter",
        "XID (critical error) events seen since the exporter started, by XID code (NVML events, "
        "nvmlEventTypeXidCriticalError). A code appears at its first event.",
        GPU_LABELS + ("xid",),
    ),
    MetricSpec(
        "gpu_remapped_rows",
        "gpu_remapped_rows",
        "gauge",
        "Device-memory rows remapped, by the error that caused it (nvmlDeviceGetRemappedRows; Ampere and newer).",
        GPU_LABELS + ("cause",),
    ),
    MetricSpec(
        "gpu_row_remap_pending",
        "gpu_row_remap_pending",
        "gauge",
        "1 when a row remap waits for the GPU's next reset (nvmlDeviceGetRemappedRows isPending).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_row_remap_failed",
        "gpu_row_remap_failed",
        "gauge",
        "1 when a row remap failed: the GPU needs service (nvmlDeviceGetRemappedRows failureOccurred).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_retired_pages",
        "gpu_retired_pages",
        "gauge",
        "Device-memory pages retired, by cause (nvmlDeviceGetRetiredPages; GPUs before Ampere).",
        GPU_LABELS + ("cause",),
    ),
    MetricSpec(
        "gpu_retired_pages_pending",
        "gpu_retired_pages_pending",
        "gauge",
        "1 when a page retirement waits for the next driver reload (nvmlDeviceGetRetiredPagesPendingStatus).",
        GPU_LABELS,
    ),
    MetricSpec(
        "gpu_nvlink_errors",
        "gpu_nvlink_errors",
        "counter",
        "NVLink data-link errors summed over the GPU's active links, by type (nvmlDeviceGetNvLinkErrorCounter: "
        "replay, recovery, crc_flit, crc_data).",
        GPU_LABELS + ("type",),
    ),
    MetricSpec(
        "gpu_process_memory_used_bytes",
        "gpu_process_memory_used_bytes",
        "gauge",
        "Device memory used by one process (nvmlDeviceGetComputeRunningProcesses / "
        "GraphicsRunningProcesses). A process of a configured engine target carries that "
        "target's target, engine and model labels: the GPU <-> model join. In a container, `pod_uid` and "
        "`container_id` from /proc/<pid>/cgroup (for the Kubernetes join rules).",
        GPU_LABELS + ("pid", "model", "pod_uid", "container_id"),
    ),
    MetricSpec(
        "gpu_process_sm_utilization_ratio",
        "gpu_process_sm_utilization_ratio",
        "gauge",
        "One process's SM utilisation over the poll interval: the mean of the driver's samples since the "
        "last poll (nvmlDeviceGetProcessUtilization smUtil / 100); 0 for a process holding memory with no "
        "sample. Joined to the owning target and model like gpu_process_memory_used_bytes.",
        GPU_LABELS + ("pid", "model", "pod_uid", "container_id"),
    ),
    MetricSpec(
        "gpu_process_memory_utilization_ratio",
        "gpu_process_memory_utilization_ratio",
        "gauge",
        "One process's memory-controller utilisation over the poll interval (nvmlDeviceGetProcessUtilization "
        "memUtil / 100), joined like gpu_process_sm_utilization_ratio.",
        GPU_LABELS + ("pid", "model", "pod_uid", "container_id"),
    ),
)

# Process-wide metrics.
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("build_info", "exporter_build_info", "gauge", "Always 1; labels carry the version.", ("version",)),
    MetricSpec(
        "render_duration",
        "exporter_scrape_render_seconds",
        "gauge",
        "Time the previous /metrics body (either format) took to build.",
    ),
    MetricSpec(
        "scrapes",
        "exporter_scrapes",
        "counter",
        "/metrics responses served, by format (text or openmetrics, as the client's Accept header asked).",
        ("format",),
    ),
    MetricSpec(
        "connections_dropped",
        "exporter_http_connections_dropped",
        "counter",
        "Connections the exporter's HTTP server closed on a client: evicted (over the connection cap, "
        "idle) or write_timeout (the client did not read its response in time).",
        ("reason",),
    ),
    MetricSpec(
        "event_loop_lag",
        "exporter_event_loop_lag_seconds",
        "histogram",
        "How much later than asked the event loop woke a 0.5 s timer: an overloaded exporter shows "
        "here before its data goes stale.",
    ),
    MetricSpec(
        "poll_delay",
        "exporter_poll_delay_seconds",
        "histogram",
        "How far behind its schedule each poll started (all targets).",
    ),
    MetricSpec(
        "tasks",
        "exporter_asyncio_tasks",
        "gauge",
        "asyncio tasks alive in the exporter (pollers, HTTP handlers): flat in a healthy process.",
    ),
    MetricSpec(
        "config_reload_ok",
        "exporter_config_last_reload_successful",
        "gauge",
        "1 when the last configuration (re)load succeeded.",
    ),
    MetricSpec(
        "host_cpu_info",
        "host_cpu_info",
        "info",
        "Host CPU from py-cpuinfo: brand, architecture, logical cores, AVX-512 and AMX; L2 (per core) "
        "and L3 cache sizes as the kernel reports them for cpu0 (sysfs).",
        ("brand", "arch", "logical_cores", "l2_cache_bytes", "l3_cache_bytes", "avx512", "amx"),
    ),
    MetricSpec(
        "config_reload_time",
        "exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load.",
    ),
)

# Info metrics (value 1; the labels carry the information), filled from sources' InfoSamples.
INFO_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "engine_info",
        "engine_info",
        "info",
        "Engine facts: model, build (llama.cpp /props).",
        ("model", "build", "model_path"),
    ),
    MetricSpec(
        "engine_detected_info",
        "engine_detected_info",
        "info",
        "The engine an `engine: auto` target was identified as.",
        ("detected",),
    ),
    MetricSpec(
        "gpu_target_info",
        "gpu_target_info",
        "info",
        "1 while an engine target's process (or a child of it) holds memory on this GPU: joins any per-GPU "
        "series to the target and model in PromQL (`* on (uuid) group_left (target, model)`).",
        ("gpu", "uuid", "name", "model"),
    ),
    MetricSpec(
        "gpu_driver_info",
        "gpu_driver_info",
        "info",
        "NVIDIA driver and CUDA driver versions (NVML).",
        ("driver_version", "cuda_version"),
    ),
    MetricSpec(
        "kv_cache_config_info",
        "kv_cache_config_info",
        "info",
        "KV-cache configuration read from vllm:cache_config_info, by key.",
        (
            "block_size",
            "num_gpu_blocks",
            "num_cpu_blocks",
            "enable_prefix_caching",
            "cache_dtype",
            "gpu_memory_utilization",
            "kv_cache_size_tokens",
        ),
    ),
)

ALL_METRICS = (
    ENGINE_METRICS
    + DERIVED_METRICS
    + LIFECYCLE_METRICS
    + TARGET_METRICS
    + GPU_METRICS
    + EXPORTER_METRICS
    + INFO_METRICS
)
BY_KEY = {spec.key: spec for spec in ALL_METRICS}


def exposed_names(namespace: str, spec: MetricSpec) -> tuple[str, ...]:
    """The sample names a spec produces on the wire."""
    base = f"{namespace}_{spec.name}"
    if spec.type == "counter":
        return (base + spec.suffix,)
    if spec.type == "histogram":
        return (base + "_bucket", base + "_sum", base + "_count")
    return (base,)
