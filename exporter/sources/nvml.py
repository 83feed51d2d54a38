"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py), joined to engine targets by PID.

NVML calls block, so they run on one dedicated thread with the poll's deadline;
a hung driver shows as a timeout and never stalls the event loop, and no second
call is queued behind a blocked one. NVML is initialised once per process
(shared by all nvml targets, shut down when the exporter stops) and
re-initialised with exponential backoff after a failure or a lost GPU.
Unsupported fields are skipped per GPU and not asked again.

What is read, each as a table row (field, NVML call, unit): FIELDS (one value per call), GPM_METRICS
(profiling counters over the poll interval, Hopper and newer), the per-process readings (memory,
SM and memory-controller utilisation) and the fault counters (XID events, remapped rows, retired
pages, NVLink errors).
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
from ..procinfo import container_identity, parent_pid, release_free_memory
from .base import ResourceKey, Source

log = logging.getLogger("llm_exporter.nvml")
MAX_BACKOFF = 300.0
MIB = 1024.0 * 1024.0

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class NvmlField:
    """One value read per GPU per poll: `call(handle, *args)` (args are pynvml constant names), then
    `.attr` of the result where given, times `scale` into the catalogue's base unit."""

    key: str
    call: str
    args: tuple[str, ...] = ()
    attr: str = ""
    scale: float = 1.0
    labels: Labels = ()
    whole_gpu_only: bool = True  # MIG instances answer memory and processes only


FIELDS: tuple[NvmlField, ...] = (
    NvmlField("gpu_utilization_ratio", "nvmlDeviceGetUtilizationRates", attr="gpu", scale=0.01),
    NvmlField("gpu_memory_utilization_ratio", "nvmlDeviceGetUtilizationRates", attr="memory", scale=0.01),
    NvmlField("gpu_power_watts", "nvmlDeviceGetPowerUsage", scale=0.001),  # mW
    NvmlField("gpu_power_limit_watts", "nvmlDeviceGetEnforcedPowerLimit", scale=0.001),  # mW
    NvmlField("gpu_energy_joules", "nvmlDeviceGetTotalEnergyConsumption", scale=0.001),  # mJ
    NvmlField("gpu_temperature_celsius", "nvmlDeviceGetTemperature", ("NVML_TEMPERATURE_GPU",)),
    NvmlField("gpu_sm_clock_hertz", "nvmlDeviceGetClockInfo", ("NVML_CLOCK_SM",), scale=1e6),  # MHz
    NvmlField("gpu_memory_clock_hertz", "nvmlDeviceGetClockInfo", ("NVML_CLOCK_MEM",), scale=1e6),  # MHz
    NvmlField(
        "gpu_pcie_bytes_per_second",
        "nvmlDeviceGetPcieThroughput",
        ("NVML_PCIE_UTIL_TX_BYTES",),
        scale=1024.0,  # KB/s
        labels=(("direction", "tx"),),
    ),
    NvmlField(
        "gpu_pcie_bytes_per_second",
        "nvmlDeviceGetPcieThroughput",
        ("NVML_PCIE_UTIL_RX_BYTES",),
        scale=1024.0,
        labels=(("direction", "rx"),),
    ),
    NvmlField(
        "gpu_ecc_errors",
        "nvmlDeviceGetTotalEccErrors",
        ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_AGGREGATE_ECC"),
        labels=(("type", "corrected"),),
    ),
    NvmlField(
        "gpu_ecc_errors",
        "nvmlDeviceGetTotalEccErrors",
        ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_AGGREGATE_ECC"),
        labels=(("type", "uncorrected"),),
    ),
)

# GPM (GPU Performance Monitoring, nvmlGpmMetricsGet) metric → catalogue key, labels, scale. NVML gives
# activities in percent (0-100) and bandwidths in MiB/s, each the mean between two samples.
GPM_METRICS: tuple[tuple[str, str, Labels, float], ...] = (
    ("NVML_GPM_METRIC_SM_UTIL", "gpu_sm_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_SM_OCCUPANCY", "gpu_sm_occupancy_ratio", (), 0.01),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "gpu_tensor_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_HMMA_TENSOR_UTIL", "gpu_tensor_hmma_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_DRAM_BW_UTIL", "gpu_dram_bandwidth_utilization_ratio", (), 0.01),
    ("NVML_GPM_METRIC_FP16_UTIL", "gpu_fp16_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_FP32_UTIL", "gpu_fp32_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_FP64_UTIL", "gpu_fp64_active_ratio", (), 0.01),
    ("NVML_GPM_METRIC_PCIE_TX_PER_SEC", "gpu_pcie_average_bytes_per_second", (("direction", "tx"),), MIB),
    ("NVML_GPM_METRIC_PCIE_RX_PER_SEC", "gpu_pcie_average_bytes_per_second", (("direction", "rx"),), MIB),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC", "gpu_nvlink_bytes_per_second", (("direction", "tx"),), MIB),
    ("NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC", "gpu_nvlink_bytes_per_second", (("direction", "rx"),), MIB),
)

# NVLink error counters (nvmlDeviceGetNvLinkErrorCounter), summed over the GPU's active links.
NVLINK_ERRORS: tuple[tuple[str, str], ...] = (
    ("NVML_NVLINK_ERROR_DL_REPLAY", "replay"),
    ("NVML_NVLINK_ERROR_DL_RECOVERY", "recovery"),
    ("NVML_NVLINK_ERROR_DL_CRC_FLIT", "crc_flit"),
    ("NVML_NVLINK_ERROR_DL_CRC_DATA", "crc_data"),
)

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

XID_EVENT_WAIT_MS = 1  # the event read never waits longer per poll
MAX_EVENTS_PER_POLL = 256


@dataclass
class ProcessReading:
    pid: int
    memory: float | None = None  # bytes
    sm: float | None = None  # 0-1 over the poll interval
    memory_controller: float | None = None


@dataclass
class GpuReading:
    """Everything read from one GPU (or MIG instance) in one poll."""

    labels: Labels
    values: list[tuple[str, Labels, float]] = field(default_factory=list)
    processes: dict[int, ProcessReading] = field(default_factory=dict)
    lost: bool = False

    def process(self, pid: int) -> ProcessReading:
        found = self.processes.get(pid)
        if found is None:
            found = self.processes[pid] = ProcessReading(pid)
        return found


@dataclass
class NvmlReading:
    gpus: list[GpuReading]
    driver_version: str
    cuda_version: str


class NvmlLibrary:
    """Process-wide NVML handle: init once, call on one thread, shutdown at exit."""

    def __init__(self, module_loader: Callable[[], Any] | None = None, gpu_profiling: bool = True):
        self._loader = module_loader or _import_pynvml
        self.nvml: Any = None
        self.initialised = False
        self.failures = 0
        self.next_attempt = 0.0
        self.last_init_error: str | None = None
        self.unsupported: set[tuple[str, str]] = set()  # (gpu uuid, call)
        self.gpu_profiling = gpu_profiling
        self.gpm = GpmSampler()
        self.util_seen: dict[str, int] = {}  # gpu uuid → last process-utilisation timestamp read (µs)
        self.events: Any = None  # the NVML event set for XID errors, or None
        self.xid_counts: dict[tuple[str, str], int] = {}  # (gpu uuid, xid) → events seen since start
        self.event_devices: set[str] = set()  # uuids registered for XID events
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
            self.gpm.free_all(self.nvml)
            if self.events is not None:
                with contextlib.suppress(Exception):
                    self.nvml.nvmlEventSetFree(self.events)
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
        self.events = None
        self.event_devices.clear()
        self.util_seen.clear()
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
        self._read_xid_events()
        for gpu in gpus:
            uuid = dict(gpu.labels).get("uuid", "")
            if uuid in self.event_devices and "mig" not in dict(gpu.labels):
                for (event_uuid, xid), seen in sorted(self.xid_counts.items()):
                    if event_uuid == uuid:
                        gpu.values.append(("gpu_xid_errors", (("xid", xid),), float(seen)))
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
            self._watch_xid(handle, uuid)
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
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
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
        self._read_memory(handle, uuid, reading)
        if not whole_gpu:
            return  # MIG instances: NVML answers memory and processes only
        answers: dict[tuple[str, tuple[str, ...]], Any] = {}  # one call per (call, args), however many rows
        for row in FIELDS:
            call = (row.call, row.args)
            if call not in answers:
                fn = getattr(nvml, row.call)
                answers[call] = self._field(uuid, f"{row.call}{row.args}", fn, handle, *_constants(nvml, row.args))
            value = answers[call]
            if value is not None and row.attr:
                value = getattr(value, row.attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                put((row.key, row.labels, float(value) * row.scale))
        self._read_clock_events(handle, uuid, reading)
        pstate = self._field(uuid, "pstate", nvml.nvmlDeviceGetPerformanceState, handle)
        if isinstance(pstate, int) and 0 <= pstate <= 15:
            put(("gpu_performance_state", (), float(pstate)))
        self._read_memory_health(handle, uuid, reading)
        self._read_nvlink_errors(handle, uuid, reading)
        self._read_process_utilisation(handle, uuid, reading)
        if self.gpu_profiling:
            reading.values.extend(self.gpm.read(self, handle, uuid))

    def _read_memory(self, handle: Any, uuid: str, reading: GpuReading) -> None:
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
                pid = getattr(proc, "pid", None)
                if isinstance(pid, int) and pid > 0 and isinstance(used, int) and 0 <= used < 2**63:
                    reading.process(pid).memory = float(used)

    def _read_clock_events(self, handle: Any, uuid: str, reading: GpuReading) -> None:
        nvml = self.nvml
        reasons_fn = (
            getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        mask = self._field(uuid, "clock_events", reasons_fn, handle)
        if not isinstance(mask, int):
            return
        for nvml_name, label in CLOCK_EVENT_REASONS:
            bit = getattr(nvml, f"nvmlClocksEventReason{nvml_name}", None) or getattr(
                nvml, f"nvmlClocksThrottleReason{nvml_name}", 0
            )
            if bit and mask & bit:
                reading.values.append(("gpu_clock_event_active", (("reason", label),), 1.0))

    def _read_memory_health(self, handle: Any, uuid: str, reading: GpuReading) -> None:
        """Row remapping (Ampere and newer) or page retirement (older GPUs): whichever the GPU does."""
        nvml = self.nvml
        put = reading.values.append
        rows = self._field(uuid, "remapped_rows", nvml.nvmlDeviceGetRemappedRows, handle)
        if isinstance(rows, tuple) and len(rows) == 4 and all(isinstance(v, int) for v in rows):
            correctable, uncorrectable, pending, failed = rows
            put(("gpu_remapped_rows", (("cause", "correctable"),), float(correctable)))
            put(("gpu_remapped_rows", (("cause", "uncorrectable"),), float(uncorrectable)))
            put(("gpu_row_remap_pending", (), 1.0 if pending else 0.0))
            put(("gpu_row_remap_failed", (), 1.0 if failed else 0.0))
            return
        for constant, cause in (
            ("NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", "single_bit_ecc"),
            ("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", "double_bit_ecc"),
        ):
            pages = self._field(
                uuid, f"retired_pages_{cause}", nvml.nvmlDeviceGetRetiredPages, handle, getattr(nvml, constant)
            )
            if isinstance(pages, list):
                put(("gpu_retired_pages", (("cause", cause),), float(len(pages))))
        pending_pages = self._field(uuid, "retired_pending", nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if isinstance(pending_pages, int):
            put(("gpu_retired_pages_pending", (), 1.0 if pending_pages else 0.0))

    def _read_nvlink_errors(self, handle: Any, uuid: str, reading: GpuReading) -> None:
        nvml = self.nvml
        totals: dict[str, int] = {}
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            state = self._field(uuid, f"nvlink_state_{link}", nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state is None:
                if link == 0 or (uuid, f"nvlink_state_{link}") in self.unsupported:
                    break  # no NVLink, or past the GPU's last link
                continue
            if not state:
                continue  # link inactive
            for constant, kind in NVLINK_ERRORS:
                count = self._field(
                    uuid,
                    f"nvlink_errors_{kind}",
                    nvml.nvmlDeviceGetNvLinkErrorCounter,
                    handle,
                    link,
                    getattr(nvml, constant),
                )
                if isinstance(count, int) and count >= 0:
                    totals[kind] = totals.get(kind, 0) + count
        for kind, total in totals.items():
            reading.values.append(("gpu_nvlink_errors", (("type", kind),), float(total)))

    def _read_process_utilisation(self, handle: Any, uuid: str, reading: GpuReading) -> None:
        """SM and memory-controller utilisation per process since the last poll (the driver's samples,
        averaged). A process that holds memory and has no sample in that window used no SM time."""
        if (uuid, "process_utilization") in self.unsupported:
            return
        nvml = self.nvml
        since = self.util_seen.get(uuid, 0)
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except nvml.NVMLError_NotFound:
            samples = []  # no process ran since `since`
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, nvml.NVMLError_NoPermission) as exc:
            self.unsupported.add((uuid, "process_utilization"))
            log.info("GPU %s: per-process utilisation not available: %s", uuid, exc)
            return
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError as exc:
            log.debug("GPU %s: process utilisation failed: %s", uuid, exc)
            return
        per_pid: dict[int, list[tuple[float, float]]] = {}
        newest = since
        for sample in samples or []:
            fields = [getattr(sample, name, None) for name in ("pid", "timeStamp", "smUtil", "memUtil")]
            numbers = [v for v in fields if isinstance(v, int) and not isinstance(v, bool)]
            if len(numbers) != 4:
                continue
            pid, stamp, sm, mem = numbers
            if stamp <= since or pid <= 0 or not 0 <= sm <= 100 or not 0 <= mem <= 100:
                continue
            newest = max(newest, stamp)
            per_pid.setdefault(pid, []).append((sm / 100.0, mem / 100.0))
        if since == 0:
            # The first read returns the driver's whole buffer: it only sets the window's start.
            self.util_seen[uuid] = newest or 1
            return
        self.util_seen[uuid] = newest
        for pid in set(per_pid) | set(reading.processes):
            values = per_pid.get(pid)
            process = reading.process(pid)
            if values:
                process.sm = sum(v[0] for v in values) / len(values)
                process.memory_controller = sum(v[1] for v in values) / len(values)
            else:
                process.sm = process.memory_controller = 0.0

    # ---------------------------------------------------------------- XID events

    def _watch_xid(self, handle: Any, uuid: str) -> None:
        """Register this GPU for XID (critical error) events once per NVML session."""
        if uuid in self.event_devices or (uuid, "xid_events") in self.unsupported:
            return
        nvml = self.nvml
        xid_type = getattr(nvml, "nvmlEventTypeXidCriticalError", 8)
        try:
            supported = nvml.nvmlDeviceGetSupportedEventTypes(handle)
            if not isinstance(supported, int) or not supported & xid_type:
                raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
            if self.events is None:
                self.events = nvml.nvmlEventSetCreate()
            nvml.nvmlDeviceRegisterEvents(handle, xid_type, self.events)
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError as exc:
            self.unsupported.add((uuid, "xid_events"))
            log.info("GPU %s: XID events not available (%s): no llm_gpu_xid_errors_total for it", uuid, exc)
            return
        self.event_devices.add(uuid)

    def _read_xid_events(self) -> None:
        """Drain the XID events that arrived since the last poll (waits XID_EVENT_WAIT_MS at most)."""
        if self.events is None:
            return
        nvml = self.nvml
        xid_type = getattr(nvml, "nvmlEventTypeXidCriticalError", 8)
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                data = nvml.nvmlEventSetWait(self.events, XID_EVENT_WAIT_MS)
            except nvml.NVMLError_Timeout:
                return  # none (more) waiting
            except nvml.NVMLError as exc:
                log.debug("NVML event read failed: %s", exc)
                return
            if getattr(data, "eventType", 0) != xid_type:
                continue
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(data.device))
            except nvml.NVMLError:
                continue
            xid = getattr(data, "eventData", None)
            if isinstance(xid, int) and 0 <= xid < 2**32:
                key = (uuid, str(xid))
                self.xid_counts[key] = self.xid_counts.get(key, 0) + 1
                log.warning("GPU %s: XID %d (see NVIDIA's XID catalogue)", uuid, xid)

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
            if self.gpu_profiling:
                instance = self._field(mig_uuid, "gpu_instance_id", nvml.nvmlDeviceGetGpuInstanceId, mig)
                if isinstance(instance, int):
                    reading.values.extend(self.gpm.read(self, handle, mig_uuid, instance))
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


class GpmSampler:
    """NVML GPM (Hopper and newer): one sample kept per GPU (or MIG instance) between polls; each poll
    reads a new one and the metrics over the two, so every value covers the poll interval."""

    def __init__(self) -> None:
        self.previous: dict[str, Any] = {}  # uuid → the last sample
        self.unsupported: set[str] = set()
        self.checked: set[str] = set()

    def supported(self, library: NvmlLibrary, handle: Any, uuid: str) -> bool:
        if uuid in self.unsupported:
            return False
        if uuid in self.checked:
            return True
        nvml = library.nvml
        try:
            support = nvml.nvmlGpmQueryDeviceSupport(handle)
            ok = bool(getattr(support, "isSupportedDevice", 0))
            why = "this GPU does not support GPM (Hopper or newer needed)"
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError as exc:
            ok, why = False, f"GPM query failed: {exc} (driver older than R520, or no permission)"
        if not ok:
            self.unsupported.add(uuid)
            log.info("GPU %s: no profiling counters: %s", uuid, why)
            return False
        self.checked.add(uuid)
        return True

    def read(
        self, library: NvmlLibrary, handle: Any, uuid: str, gpu_instance: int | None = None
    ) -> list[tuple[str, Labels, float]]:
        if not self.supported(library, handle, uuid):
            return []
        nvml = library.nvml
        sample = None
        try:
            sample = nvml.nvmlGpmSampleAlloc()
            if gpu_instance is None:
                nvml.nvmlGpmSampleGet(handle, sample)
            else:
                nvml.nvmlGpmMigSampleGet(handle, gpu_instance, sample)
        except nvml.NVMLError_GpuIsLost:
            self._free(nvml, sample)
            raise
        except nvml.NVMLError as exc:
            self._free(nvml, sample)
            self.unsupported.add(uuid)
            self.free(nvml, uuid)
            log.info("GPU %s: no profiling counters: GPM sample failed: %s", uuid, exc)
            return []
        previous = self.previous.get(uuid)
        self.previous[uuid] = sample
        if previous is None:
            return []  # the first poll only starts the interval
        try:
            return self._metrics(nvml, previous, sample)
        except nvml.NVMLError as exc:
            log.debug("GPU %s: GPM metrics failed: %s", uuid, exc)
            return []
        except (TypeError, ValueError, AttributeError) as exc:  # an nvidia-ml-py whose GPM types differ
            self.unsupported.add(uuid)
            self.free(nvml, uuid)
            log.info("GPU %s: no profiling counters: this nvidia-ml-py's GPM interface differs: %s", uuid, exc)
            return []
        finally:
            self._free(nvml, previous)

    @staticmethod
    def _metrics(nvml: Any, first: Any, second: Any) -> list[tuple[str, Labels, float]]:
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = first
        request.sample2 = second
        for i, (constant, _key, _labels, _scale) in enumerate(GPM_METRICS):
            request.metrics[i].metricId = getattr(nvml, constant)
        answer = nvml.nvmlGpmMetricsGet(request)
        out: list[tuple[str, Labels, float]] = []
        by_id = {getattr(nvml, row[0]): row for row in GPM_METRICS}
        for i in range(min(len(GPM_METRICS), int(answer.numMetrics))):
            metric = answer.metrics[i]
            row = by_id.get(metric.metricId)
            value = metric.value
            if row is None or metric.nvmlReturn != 0 or not isinstance(value, float) or value != value:
                continue  # this metric is not available on this GPU (NVLink on a PCIe card, say)
            _constant, key, labels, scale = row
            if scale == 0.01:
                value = min(value, 100.0)  # sampling noise can read a hair above 100 %
            if value >= 0:
                out.append((key, labels, value * scale))
        return out

    @staticmethod
    def _free(nvml: Any, sample: Any) -> None:
        if sample is not None:
            with contextlib.suppress(Exception):
                nvml.nvmlGpmSampleFree(sample)

    def free(self, nvml: Any, uuid: str) -> None:
        self._free(nvml, self.previous.pop(uuid, None))

    def free_all(self, nvml: Any) -> None:
        for uuid in list(self.previous):
            self.free(nvml, uuid)
        self.checked.clear()


def _constants(nvml: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(nvml, name) for name in names)


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


# The NVML handle every nvml target shares; closed (nvmlShutdown, once per process) when the exporter stops.
NVML: ResourceKey[NvmlLibrary] = ResourceKey("nvml", NvmlLibrary.close)


class NvmlSource(Source):
    engine = "nvml"
    title = "NVIDIA GPUs (NVML)"
    needs_url = False
    containers: dict[int, tuple[str, str]]  # pid → (pod UID, container id), read once per process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.containers = {}

    @property
    def library(self) -> NvmlLibrary:
        # One per process, shared by every nvml target (the first target's gpu_profiling decides).
        return self.shared.get_or_create(NVML, lambda: NvmlLibrary(gpu_profiling=self.target.gpu_profiling))

    async def collect(self) -> Observation:
        reading = await self.library.read_async(self.target.timeout)
        live = {pid for gpu in reading.gpus for pid in gpu.processes}
        self.containers = {pid: found for pid, found in self.containers.items() if pid in live}
        observation = Observation(Readiness.READY)
        put = observation.series.append
        for gpu in reading.gpus:
            if gpu.lost:
                put(SeriesSample("gpu_lost", gpu.labels, 1.0))
                continue
            for key, extra, value in gpu.values:
                put(SeriesSample(key, gpu.labels + extra, value))
            for pid, process in sorted(gpu.processes.items()):
                # Keyed by pid only: the join stage (exporter/join.py) adds the target, engine and model of
                # the engine process that owns it (or one of its parents).
                labels, parents = gpu.labels + (("pid", str(pid)),), _ancestors(pid)
                identity = self.containers.get(pid)
                if identity is None:
                    identity = self.containers[pid] = container_identity(pid) or ("", "")
                # In a container (the node-level DaemonSet): the pod UID and container id, for the
                # Kubernetes join rules (kube_pod_info); left out where not found.
                labels += tuple((k, v) for k, v in zip(("pod_uid", "container_id"), identity, strict=True) if v)
                readings: tuple[tuple[str, float | None], ...] = (
                    ("gpu_process_memory_used_bytes", process.memory),
                    ("gpu_process_sm_utilization_ratio", process.sm),
                    ("gpu_process_memory_utilization_ratio", process.memory_controller),
                )
                for key, number in readings:
                    if number is not None:
                        put(SeriesSample(key, labels, number, join_pids=parents))
        observation.info = [
            InfoSample(
                "gpu_driver_info", (("driver_version", reading.driver_version), ("cuda_version", reading.cuda_version))
            )
        ]
        lost = [dict(g.labels)["gpu"] for g in reading.gpus if g.lost]
        if lost:
            observation.notices = (f"GPU {', '.join(lost)} fell off the bus (GPU_IS_LOST); NVML re-initialising",)
        return observation
