"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py), joined to engine targets by PID.

NVML calls block, so they run on one dedicated thread with the poll's deadline;
a hung driver shows as a timeout and never stalls the event loop, and no second
call is queued behind a blocked one. NVML is initialised once per process
(shared by all nvml targets, shut down when the exporter stops) and
re-initialised with exponential backoff after a failure or a lost GPU.
Unsupported fields are skipped per GPU and not asked again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..observation import (
    InfoSample,
    Observation,
    PollError,
    Readiness,
    Reason,
    SeriesSample,
)
from ..procinfo import parent_pid, release_free_memory
from .base import Source

log = logging.getLogger("llm_exporter.nvml")
MAX_BACKOFF = 300.0

# Clock-event (throttle) reason bits → label value. Names of newer NVML first.
CLOCK_EVENT_REASONS: tuple[tuple[str, str], ...] = (
    ("GpuIdle", "gpu_idle"),
    ("ApplicationsClocksSetting", "applications_clocks_setting"),
    ("SwPowerCap", "sw_power_cap"),
    ("HwSlowdown", "hw_slowdown"),
    ("SyncBoost", "sync_boost"),
    ("SwThermalSlowdown", "sw_thermal_slowdown"),
    ("HwThermalSlowdown", "hw_thermal_slowdown"),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown"),
    ("DisplayClockSetting", "display_clock_setting"),
)


@dataclass
class GpuReading:
    """Everything read from one GPU (or MIG instance) in one poll."""

    labels: tuple[tuple[str, str], ...]
    values: list[tuple[str, tuple[tuple[str, str], ...], float]] = field(default_factory=list)
    processes: list[tuple[int, float]] = field(default_factory=list)
    lost: bool = False


@dataclass
class NvmlReading:
    gpus: list[GpuReading]
    driver_version: str
    cuda_version: str


class NvmlLibrary:
    """Process-wide NVML handle: init once, call on one thread, shutdown at exit."""

    def __init__(self, module_loader: Callable[[], Any] | None = None):
        self._loader = module_loader or _import_pynvml
        self.nvml: Any = None
        self.initialised = False
        self.failures = 0
        self.next_attempt = 0.0
        self.last_init_error: str | None = None
        self.unsupported: set[tuple[str, str]] = set()  # (gpu uuid, field)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self.inflight: asyncio.Future[NvmlReading] | None = None
        self.inflight_started = 0.0

    # ---------------------------------------------------------------- on the NVML thread

    def ensure_init(self) -> None:
        if self.initialised:
            return
        now = time.monotonic()
        if now < self.next_attempt:
            raise PollError(
                Reason.OTHER, f"NVML unavailable ({self.last_init_error}); next retry in {self.next_attempt - now:.0f}s"
            )
        try:
            if self.nvml is None:
                self.nvml = self._loader()
            self.nvml.nvmlInit()
        except PollError:
            raise
        except Exception as exc:
            self.failures += 1
            self.next_attempt = now + min(MAX_BACKOFF, 2.0 ** min(self.failures, 10))
            self.last_init_error = _describe_init_error(exc)
            raise PollError(Reason.OTHER, self.last_init_error) from None
        self.initialised = True
        self.failures = 0
        self.last_init_error = None
        # Importing pynvml (a 290 KB module) and nvmlInit leave ~15 MiB of freed heap that glibc keeps
        # (measured on an H200, bench/RESULTS.md): hand it back once.
        release_free_memory()

    def reinit_later(self) -> None:
        """After a lost GPU: shut down and re-initialise with backoff."""
        self.shutdown_now()
        self.failures += 1
        self.next_attempt = time.monotonic() + min(MAX_BACKOFF, 2.0 ** min(self.failures, 10))
        self.last_init_error = "a GPU fell off the bus; NVML re-initialising"

    def shutdown_now(self) -> None:
        if self.initialised and self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
        self.initialised = False

    def read(self) -> NvmlReading:
        self.ensure_init()
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise PollError(Reason.OTHER, f"NVML: cannot count GPUs: {exc}") from None
        if count == 0:
            raise PollError(Reason.OTHER, "no NVIDIA GPU found")
        gpus: list[GpuReading] = []
        for index in range(count):
            gpus.extend(self._read_gpu(index))
        if any(g.lost for g in gpus):
            self.reinit_later()
        return NvmlReading(
            gpus,
            _text(self._call_plain(nvml.nvmlSystemGetDriverVersion) or ""),
            _cuda_version(self._call_plain(nvml.nvmlSystemGetCudaDriverVersion)),
        )

    def _call_plain(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def _read_gpu(self, index: int) -> list[GpuReading]:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError_GpuIsLost:
            return [GpuReading((("gpu", str(index)), ("uuid", ""), ("name", "")), lost=True)]
        except nvml.NVMLError as exc:
            log.debug("GPU %d: cannot get a handle: %s", index, exc)
            return []
        reading = GpuReading((("gpu", str(index)), ("uuid", uuid), ("name", name)))
        try:
            self._read_fields(handle, uuid, reading, whole_gpu=True)
        except nvml.NVMLError_GpuIsLost:
            reading.lost = True
            return [reading]
        out = [reading]
        out.extend(self._read_mig(handle, index, name))
        return out

    def _field(self, uuid: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML getter; None when this GPU does not support it (remembered)."""
        if (uuid, name) in self.unsupported:
            return None
        nvml = self.nvml
        try:
            return fn(*args)
        except nvml.NVMLError_NotSupported:
            self.unsupported.add((uuid, name))
            return None
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError as exc:
            log.debug("GPU %s: %s failed: %s", uuid, name, exc)
            return None

    def _read_fields(self, handle: Any, uuid: str, reading: GpuReading, whole_gpu: bool) -> None:
        nvml = self.nvml
        put = reading.values.append
        # v2 reports the memory the driver reserves apart from "used", as nvidia-smi does; v1
        # (older drivers) counts it as used.
        memory = None
        if getattr(nvml, "nvmlMemory_v2", None) is not None:
            memory = self._field(uuid, "memory_v2", nvml.nvmlDeviceGetMemoryInfo, handle, nvml.nvmlMemory_v2)
        if memory is None:
            memory = self._field(uuid, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            put(("gpu_memory_used_bytes", (), float(memory.used)))
            put(("gpu_memory_free_bytes", (), float(memory.free)))
            put(("gpu_memory_total_bytes", (), float(memory.total)))
            reserved = getattr(memory, "reserved", None)
            if isinstance(reserved, int):
                put(("gpu_memory_reserved_bytes", (), float(reserved)))
        for process_fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            processes = self._field(uuid, process_fn, getattr(nvml, process_fn), handle)
            for proc in processes or []:
                used = getattr(proc, "usedGpuMemory", None)
                if isinstance(used, int) and used >= 0 and used < 2**63:
                    reading.processes.append((int(proc.pid), float(used)))
        if not whole_gpu:
            return  # MIG instances: NVML answers memory and processes only
        util = self._field(uuid, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            put(("gpu_utilization_ratio", (), util.gpu / 100.0))
            put(("gpu_memory_utilization_ratio", (), util.memory / 100.0))
        power = self._field(uuid, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        if power is not None:
            put(("gpu_power_watts", (), power / 1000.0))
        limit = self._field(uuid, "power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        if limit is not None:
            put(("gpu_power_limit_watts", (), limit / 1000.0))
        energy = self._field(uuid, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        if energy is not None:
            put(("gpu_energy_joules", (), energy / 1000.0))
        temperature = self._field(uuid, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        if temperature is not None:
            put(("gpu_temperature_celsius", (), float(temperature)))
        for clock, key in ((nvml.NVML_CLOCK_SM, "gpu_sm_clock_hertz"), (nvml.NVML_CLOCK_MEM, "gpu_memory_clock_hertz")):
            mhz = self._field(uuid, key, nvml.nvmlDeviceGetClockInfo, handle, clock)
            if mhz is not None:
                put((key, (), mhz * 1e6))
        reasons_fn = (
            getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        mask = self._field(uuid, "clock_events", reasons_fn, handle)
        if mask is not None:
            for nvml_name, label in CLOCK_EVENT_REASONS:
                bit = getattr(nvml, f"nvmlClocksEventReason{nvml_name}", None) or getattr(
                    nvml, f"nvmlClocksThrottleReason{nvml_name}", 0
                )
                if bit and mask & bit:
                    put(("gpu_clock_event_active", (("reason", label),), 1.0))
        for direction, counter in (("tx", nvml.NVML_PCIE_UTIL_TX_BYTES), ("rx", nvml.NVML_PCIE_UTIL_RX_BYTES)):
            kbps = self._field(uuid, f"pcie_{direction}", nvml.nvmlDeviceGetPcieThroughput, handle, counter)
            if kbps is not None:
                put(("gpu_pcie_bytes_per_second", (("direction", direction),), kbps * 1024.0))
        for kind, error_type in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = self._field(
                uuid, f"ecc_{kind}", nvml.nvmlDeviceGetTotalEccErrors, handle, error_type, nvml.NVML_AGGREGATE_ECC
            )
            if count is not None:
                put(("gpu_ecc_errors", (("type", kind),), float(count)))
        pstate = self._field(uuid, "pstate", nvml.nvmlDeviceGetPerformanceState, handle)
        if pstate is not None and 0 <= pstate <= 15:
            put(("gpu_performance_state", (), float(pstate)))

    def _read_mig(self, handle: Any, index: int, name: str) -> list[GpuReading]:
        nvml = self.nvml
        mode = self._field("", "mig_mode", nvml.nvmlDeviceGetMigMode, handle)
        if not mode or mode[0] != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        out = []
        for mig_index in range(self._field("", "mig_count", nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig_index)
                mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            except nvml.NVMLError:
                continue  # empty MIG slot
            reading = GpuReading((("gpu", str(index)), ("uuid", mig_uuid), ("name", name), ("mig", str(mig_index))))
            self._read_fields(mig, mig_uuid, reading, whole_gpu=False)
            out.append(reading)
        return out

    # ---------------------------------------------------------------- from the event loop

    async def read_async(self, budget_s: float) -> NvmlReading:
        """Read all GPUs on the NVML thread. Concurrent callers share one in-flight read; a read
        still blocked from an earlier poll is reported instead of queueing another behind it."""
        now = time.monotonic()
        if self.inflight is None or self.inflight.done():
            self.inflight_started = now
            self.inflight = asyncio.get_running_loop().run_in_executor(self.executor, self.read)
        elif now - self.inflight_started > budget_s:
            raise PollError(
                Reason.TIMEOUT, f"an NVML call has been blocked for {now - self.inflight_started:.1f}s (hung driver?)"
            )
        try:
            return await asyncio.wait_for(asyncio.shield(self.inflight), budget_s)
        except TimeoutError:
            raise PollError(Reason.TIMEOUT, f"NVML did not answer within {budget_s:g}s") from None

    def close(self) -> None:
        """Shut NVML down on its own thread (never blocks the caller on a hung driver)."""
        if self.inflight is None or self.inflight.done():
            self.executor.submit(self.shutdown_now)
        self.executor.shutdown(wait=False)


def _import_pynvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


def _describe_init_error(exc: Exception) -> str:
    name = type(exc).__name__
    if isinstance(exc, ImportError):
        return f"pynvml not importable: {exc}"
    hints = {
        "NVMLError_LibraryNotFound": "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver here",
        "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
        "NVMLError_NoPermission": "no permission to open /dev/nvidia*",
    }
    return hints.get(name, f"NVML init failed: {name}: {exc}")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:128]


def _cuda_version(value: Any) -> str:
    if not isinstance(value, int) or value <= 0:
        return ""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _ancestors(pid: int, limit: int = 16) -> tuple[int, ...]:
    """pid and its parents (from /proc), nearest first: the join stage matches any of them to an engine."""
    chain = [pid]
    for _ in range(limit):
        parent = parent_pid(chain[-1])
        if parent is None or parent <= 1 or parent in chain:
            break
        chain.append(parent)
    return tuple(chain)


class NvmlSource(Source):
    engine = "nvml"
    title = "NVIDIA GPUs (NVML)"
    needs_url = False

    @property
    def library(self) -> NvmlLibrary:
        if self.shared.nvml is None:
            self.shared.nvml = NvmlLibrary()  # one per process, shared by every nvml target
        return self.shared.nvml

    async def collect(self) -> Observation:
        reading = await self.library.read_async(self.target.timeout)
        observation = Observation(Readiness.READY)
        put = observation.series.append
        for gpu in reading.gpus:
            if gpu.lost:
                put(SeriesSample("gpu_lost", gpu.labels, 1.0))
                continue
            for key, extra, value in gpu.values:
                put(SeriesSample(key, gpu.labels + extra, value))
            for pid, used in gpu.processes:
                # Keyed by pid only: the join stage (exporter/join.py) adds the target, engine and model of
                # the engine process that owns it (or one of its parents).
                put(
                    SeriesSample(
                        "gpu_process_memory_used_bytes",
                        gpu.labels + (("pid", str(pid)),),
                        used,
                        join_pids=_ancestors(pid),
                    )
                )
        observation.info = [
            InfoSample(
                "gpu_driver_info", (("driver_version", reading.driver_version), ("cuda_version", reading.cuda_version))
            )
        ]
        lost = [dict(g.labels)["gpu"] for g in reading.gpus if g.lost]
        if lost:
            observation.notices = (f"GPU {', '.join(lost)} fell off the bus (GPU_IS_LOST); NVML re-initialising",)
        return observation
