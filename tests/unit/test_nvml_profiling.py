"""NVML beyond "utilisation": GPM profiling counters, per-process utilisation, XID events, memory-row
health, NVLink errors and the GPU <-> target info series. pynvml's functions are monkeypatched (on top of
test_nvml's FakeGpus); errors are the real NVMLError subclasses. The same code reading a real H200's
recorded answers is tested in test_nvml_recorded.py."""

import logging
from types import SimpleNamespace

import pynvml
import pytest

from exporter.join import target_links
from exporter.observation import SeriesSample
from exporter.sources import engine_specs
from exporter.sources.nvml import NVML
from tests.unit.test_nvml import FakeGpus, close, err, make, one, values


class FakeProfiling:
    """GPU 0 supports GPM, per-process utilisation, XID events, row remapping and 4 NVLinks; GPU 1 none."""

    def __init__(self, monkeypatch):
        self.gpm_values = {  # metric id → percent or MiB/s
            pynvml.NVML_GPM_METRIC_SM_UTIL: 96.5,
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 40.0,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 93.0,
            pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: 92.0,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 16.0,
            pynvml.NVML_GPM_METRIC_FP16_UTIL: 0.0,
            pynvml.NVML_GPM_METRIC_FP32_UTIL: 2.5,
            pynvml.NVML_GPM_METRIC_FP64_UTIL: 100.4,  # sampling noise above 100 %
            pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 10.0,
            pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 0.5,
        }
        self.samples_live = 0
        self.sample_gets = 0
        self.util_samples: list = []
        self.util_since: list[int] = []
        self.events: list = []
        self.registered: list = []
        self.remapped = (2, 1, 0, 1)
        self.links_active = {0: 1, 1: 1, 2: 0, 3: 1}
        self.link_errors = {pynvml.NVML_NVLINK_ERROR_DL_REPLAY: 5, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT: 1}
        fns = {
            "nvmlGpmQueryDeviceSupport": self.gpm_support,
            "nvmlGpmSampleAlloc": self.sample_alloc,
            "nvmlGpmSampleFree": self.sample_free,
            "nvmlGpmSampleGet": self.sample_get,
            "nvmlGpmMetricsGet": self.metrics_get,
            "nvmlDeviceGetProcessUtilization": self.process_utilization,
            "nvmlDeviceGetSupportedEventTypes": lambda h: pynvml.nvmlEventTypeXidCriticalError if h[1] == 0 else 0,
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlDeviceRegisterEvents": lambda h, types, s: self.registered.append((h, types, s)),
            "nvmlEventSetWait": self.event_wait,
            "nvmlEventSetFree": lambda s: None,
            "nvmlDeviceGetRemappedRows": self.remapped_rows,
            "nvmlDeviceGetRetiredPages": lambda h, cause: [0x1000] * (cause + 1),
            "nvmlDeviceGetRetiredPagesPendingStatus": lambda h: 1,
            "nvmlDeviceGetNvLinkState": self.nvlink_state,
            "nvmlDeviceGetNvLinkErrorCounter": lambda h, link, counter: self.link_errors.get(counter, 0),
        }
        for name, fn in fns.items():
            monkeypatch.setattr(pynvml, name, fn)
        monkeypatch.setattr(
            pynvml,
            "c_nvmlGpmMetricsGet_t",
            lambda: SimpleNamespace(metrics=[SimpleNamespace() for _ in range(pynvml.NVML_GPM_METRIC_MAX)]),
        )

    def gpm_support(self, handle):
        return SimpleNamespace(isSupportedDevice=1 if handle[1] == 0 else 0)

    def sample_alloc(self):
        self.samples_live += 1
        return SimpleNamespace(id=self.samples_live)

    def sample_free(self, sample):
        self.samples_live -= 1

    def sample_get(self, handle, sample):
        self.sample_gets += 1
        return sample

    def metrics_get(self, request):
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        assert request.sample1 is not request.sample2
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            if metric.metricId in self.gpm_values:
                metric.value, metric.nvmlReturn = self.gpm_values[metric.metricId], 0
            else:  # NVLink on this GPU: not available
                metric.value, metric.nvmlReturn = 0.0, pynvml.NVML_ERROR_NOT_SUPPORTED
        return request

    def process_utilization(self, handle, since):
        if handle[1] != 0:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self.util_since.append(since)
        if not self.util_samples:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return self.util_samples

    def event_wait(self, event_set, timeout_ms):
        assert timeout_ms <= 1  # a poll never waits for events
        if not self.events:
            raise err(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def remapped_rows(self, handle):
        if handle[1] != 0:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.remapped

    def nvlink_state(self, handle, link):
        if handle[1] != 0 or link not in self.links_active:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT if link else pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.links_active[link]


def util(pid, stamp, sm, mem):
    return SimpleNamespace(pid=pid, timeStamp=stamp, smUtil=sm, memUtil=mem, encUtil=0, decUtil=0)


@pytest.fixture
def gpus(monkeypatch):
    fake = FakeGpus(monkeypatch)
    return fake, FakeProfiling(monkeypatch)


async def test_gpm_values_cover_the_interval_between_two_polls_in_base_units(gpus, caplog):
    _fake, profiling = gpus
    caplog.set_level(logging.INFO)
    _source, state, poller, shared = make()
    await poller.poll()
    assert state.health.up
    assert not values(state, "gpu_sm_active_ratio")  # one sample: no interval yet
    await poller.poll()
    assert one(state, "gpu_sm_active_ratio", gpu="0") == pytest.approx(0.965)
    assert one(state, "gpu_sm_occupancy_ratio", gpu="0") == pytest.approx(0.40)
    assert one(state, "gpu_tensor_active_ratio", gpu="0") == pytest.approx(0.93)
    assert one(state, "gpu_tensor_hmma_active_ratio", gpu="0") == pytest.approx(0.92)
    assert one(state, "gpu_dram_bandwidth_utilization_ratio", gpu="0") == pytest.approx(0.16)
    assert one(state, "gpu_fp64_active_ratio", gpu="0") == 1.0  # clamped, not dropped
    assert one(state, "gpu_pcie_average_bytes_per_second", gpu="0", direction="tx") == 10 * 2**20
    # NVLink metrics NVML answered with an error: absent, not 0
    assert not values(state, "gpu_nvlink_bytes_per_second")
    # GPU 1 has no GPM: its families are absent, and one log line says why
    assert {dict(labels)["gpu"] for labels in values(state, "gpu_tensor_active_ratio")} == {"0"}
    await poller.poll()
    why = [r.getMessage() for r in caplog.records if "profiling counters" in r.getMessage()]
    assert len(why) == 1 and "GPU-1" in why[0] and "Hopper" in why[0]
    assert profiling.samples_live == 1  # only the one kept for the next interval
    close(shared.get(NVML))
    shared.get(NVML).executor.shutdown(wait=True)


async def test_gpu_profiling_false_takes_no_gpm_sample(gpus):
    _fake, profiling = gpus
    from exporter.config import load_config_text
    from exporter.poller import Poller
    from exporter.sources.base import SharedContext
    from exporter.sources.nvml import NvmlSource
    from exporter.state import TargetState

    target = load_config_text(
        "targets:\n  - {name: gpus, engine: nvml, interval: 2s, gpu_profiling: false}\n",
        "t",
        {},
        engines=engine_specs(),
    ).targets[0]
    shared = SharedContext()
    state = TargetState(target)
    poller = Poller(NvmlSource(target, shared), state)
    await poller.poll()
    await poller.poll()
    assert state.health.up and profiling.sample_gets == 0
    assert not values(state, "gpu_sm_active_ratio")
    close(shared.get(NVML))


async def test_failed_gpm_metrics_read_keeps_the_rest_of_the_poll(gpus, monkeypatch):
    _fake, profiling = gpus

    def broken(request):
        raise err(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(pynvml, "nvmlGpmMetricsGet", broken)
    _source, state, poller, shared = make()
    await poller.poll()
    await poller.poll()
    assert state.health.up and not values(state, "gpu_sm_active_ratio")
    assert one(state, "gpu_temperature_celsius", gpu="0") == 41
    assert profiling.samples_live == 1  # the failed interval's first sample was freed
    close(shared.get(NVML))


async def test_process_utilisation_is_the_mean_since_the_last_poll_and_zero_without_samples(gpus):
    fake, profiling = gpus
    fake.processes = {0: [SimpleNamespace(pid=100, usedGpuMemory=2**30), SimpleNamespace(pid=200, usedGpuMemory=1)]}
    profiling.util_samples = [util(100, 1_000, 50, 10)]  # the driver's buffer before the first poll
    _source, state, poller, shared = make()
    await poller.poll()
    assert not values(state, "gpu_process_sm_utilization_ratio")  # the first read only starts the window
    profiling.util_samples = [util(100, 1_000, 50, 10), util(100, 2_000, 90, 30), util(100, 3_000, 70, 50)]
    await poller.poll()
    assert profiling.util_since == [0, 1_000]
    assert one(state, "gpu_process_sm_utilization_ratio", pid="100") == pytest.approx(0.80)  # (90+70)/2
    assert one(state, "gpu_process_memory_utilization_ratio", pid="100") == pytest.approx(0.40)
    assert one(state, "gpu_process_sm_utilization_ratio", pid="200") == 0.0  # holds memory, ran nothing
    joinable = [s for s in state.report.series if s.key == "gpu_process_sm_utilization_ratio"]
    assert all(s.join_pids and s.join_pids[0] == int(dict(s.labels)["pid"]) for s in joinable)
    profiling.util_samples = []  # NVML_ERROR_NOT_FOUND: nothing ran since
    await poller.poll()
    assert profiling.util_since[-1] == 3_000
    assert one(state, "gpu_process_sm_utilization_ratio", pid="100") == 0.0
    # hostile samples (out of range, wrong types) are skipped
    profiling.util_samples = [util(100, 4_000, 250, 10), SimpleNamespace(pid="x", timeStamp=5_000, smUtil=1)]
    await poller.poll()
    assert one(state, "gpu_process_sm_utilization_ratio", pid="100") == 0.0
    assert {dict(labels)["gpu"] for labels in values(state, "gpu_process_sm_utilization_ratio")} == {"0"}
    close(shared.get(NVML))


async def test_xid_events_are_counted_per_gpu_and_code_and_never_block(gpus, caplog):
    _fake, profiling = gpus
    caplog.set_level(logging.INFO)
    _source, state, poller, shared = make()
    await poller.poll()
    assert [r[0] for r in profiling.registered] == [("gpu", 0)]  # GPU 1 does not deliver XID events
    assert not values(state, "gpu_xid_errors")  # none yet: no series (a code appears at its first event)

    def event(xid, gpu=0, kind=pynvml.nvmlEventTypeXidCriticalError):
        return SimpleNamespace(device=("gpu", gpu), eventType=kind, eventData=xid)

    profiling.events = [event(79), event(48), event(48), event(13, kind=pynvml.nvmlEventTypePState)]
    await poller.poll()
    assert one(state, "gpu_xid_errors", gpu="0", xid="79") == 1
    assert one(state, "gpu_xid_errors", gpu="0", xid="48") == 2
    assert "13" not in {dict(labels).get("xid") for labels in values(state, "gpu_xid_errors")}
    await poller.poll()  # counters keep their totals
    assert one(state, "gpu_xid_errors", gpu="0", xid="48") == 2
    assert any("XID 79" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "XID events not available" in r.getMessage()]) == 1
    close(shared.get(NVML))


async def test_memory_row_health_and_nvlink_errors(gpus):
    _fake, _profiling = gpus
    _source, state, poller, shared = make()
    await poller.poll()
    assert one(state, "gpu_remapped_rows", gpu="0", cause="correctable") == 2
    assert one(state, "gpu_remapped_rows", gpu="0", cause="uncorrectable") == 1
    assert one(state, "gpu_row_remap_pending", gpu="0") == 0
    assert one(state, "gpu_row_remap_failed", gpu="0") == 1
    # GPU 1 does no row remapping: page retirement (GPUs before Ampere) is read instead
    assert one(state, "gpu_retired_pages", gpu="1", cause="single_bit_ecc") == 1
    assert one(state, "gpu_retired_pages", gpu="1", cause="double_bit_ecc") == 2
    assert one(state, "gpu_retired_pages_pending", gpu="1") == 1
    assert not [labels for labels in values(state, "gpu_retired_pages") if dict(labels)["gpu"] == "0"]
    # three active links (link 2 is down): errors summed over them; GPU 1 has no NVLink
    assert one(state, "gpu_nvlink_errors", gpu="0", type="replay") == 15
    assert one(state, "gpu_nvlink_errors", gpu="0", type="crc_flit") == 3
    assert one(state, "gpu_nvlink_errors", gpu="0", type="recovery") == 0
    assert {dict(labels)["gpu"] for labels in values(state, "gpu_nvlink_errors")} == {"0"}
    close(shared.get(NVML))


def test_target_info_once_per_gpu_and_owner():
    owners = {
        11: (("target", "llama"), ("engine", "llamacpp"), ("model", "a")),
        12: (("target", "llama"), ("engine", "llamacpp"), ("model", "a")),
        13: (("target", "llama"), ("engine", "llamacpp"), ("model", "b")),
    }
    gpu0 = (("gpu", "0"), ("uuid", "GPU-0"), ("name", "H200"))
    gpu1 = (("gpu", "1"), ("uuid", "GPU-1"), ("name", "H200"))

    def memory(gpu, pid):
        return SeriesSample("gpu_process_memory_used_bytes", gpu + (("pid", str(pid)),), 1.0, join_pids=(pid,))

    series = [
        memory(gpu0, 11),
        memory(gpu0, 12),  # the same model's second process on the same GPU
        memory(gpu1, 11),
        memory(gpu0, 13),
        memory(gpu0, 99),  # nobody's
        SeriesSample("gpu_process_sm_utilization_ratio", gpu1 + (("pid", "13"),), 0.5, join_pids=(13,)),
    ]
    links = [dict(link) for link in target_links(series, owners)]
    assert [(link["gpu"], link["model"]) for link in links] == [("0", "a"), ("1", "a"), ("0", "b")]
    assert all("pid" not in link and link["target"] == "llama" for link in links)
