"""NVML source with pynvml's functions monkeypatched; errors are the real NVMLError subclasses."""

import asyncio
import itertools
import subprocess
import time
from types import SimpleNamespace

import pynvml
import pytest

from exporter.app import Exporter
from exporter.config import load_config_text
from exporter.join import process_owners
from exporter.observation import ModelState, ModelStatus, Observation, Readiness, Reason
from exporter.poller import Poller
from exporter.samples import target_samples
from exporter.sources import engine_specs
from exporter.sources.base import SharedContext
from exporter.sources.nvml import NVML, NvmlSource
from exporter.state import TargetState
from tests.support.pipeline import target_config


def err(code):
    return pynvml.NVMLError(code)


class FakeGpus:
    """Two GPUs; knobs to make fields unsupported, lose a GPU, hang, or enable MIG."""

    def __init__(self, monkeypatch, count=2):
        self.count = count
        self.calls = {"init": 0, "shutdown": 0}
        self.unsupported: set[tuple[int, str]] = set()
        self.lost: set[int] = set()
        self.hang = 0.0
        self.processes: dict[int, list] = {0: [], 1: []}
        self.mig = False
        fns = {
            "nvmlInit": self.init,
            "nvmlShutdown": self.shutdown,
            "nvmlDeviceGetCount": self.get_count,
            "nvmlDeviceGetHandleByIndex": lambda i: ("gpu", i),
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h[1]}" if h[0] == "gpu" else f"MIG-{h[1]}-{h[2]}",
            "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetMemoryInfo": self.field(
                "memory",
                lambda h, version=None: SimpleNamespace(
                    total=80 * 2**30,
                    used=(h[1] + 1) * 2**30,
                    free=80 * 2**30 - (h[1] + 1) * 2**30 - 2**29,
                    **({"reserved": 2**29} if version else {}),
                ),
            ),
            "nvmlDeviceGetUtilizationRates": self.field("util", lambda h: SimpleNamespace(gpu=37, memory=12)),
            "nvmlDeviceGetPowerUsage": self.field("power", lambda h: 123456),
            "nvmlDeviceGetEnforcedPowerLimit": self.field("power_limit", lambda h: 700000),
            "nvmlDeviceGetTotalEnergyConsumption": self.field("energy", lambda h: 5_000_000),
            "nvmlDeviceGetTemperature": self.field("temp", lambda h, s: 41),
            "nvmlDeviceGetClockInfo": self.field("clock", lambda h, c: 1980 if c == pynvml.NVML_CLOCK_SM else 2619),
            "nvmlDeviceGetCurrentClocksEventReasons": self.field(
                "events", lambda h: pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonSwPowerCap
            ),
            "nvmlDeviceGetPcieThroughput": self.field("pcie", lambda h, c: 100),
            "nvmlDeviceGetTotalEccErrors": self.field("ecc", lambda h, t, c: 3 if t == 0 else 0),
            "nvmlDeviceGetPerformanceState": self.field("pstate", lambda h: 0),
            "nvmlDeviceGetComputeRunningProcesses": self.field(
                "procs", lambda h: self.processes.get(h[1], []) if h[0] == "gpu" else []
            ),
            "nvmlDeviceGetGraphicsRunningProcesses": self.field("gprocs", lambda h: []),
            "nvmlDeviceGetMigMode": self.field("mig", lambda h: [int(self.mig), int(self.mig)]),
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 2,
            "nvmlDeviceGetMigDeviceHandleByIndex": lambda h, i: ("mig", h[1], i),
            "nvmlSystemGetDriverVersion": lambda: "580.95.05",
            "nvmlSystemGetCudaDriverVersion": lambda: 13000,
        }
        for name, fn in fns.items():
            monkeypatch.setattr(pynvml, name, fn)

    def init(self):
        self.calls["init"] += 1

    def shutdown(self):
        self.calls["shutdown"] += 1

    def get_count(self):
        if self.hang:
            time.sleep(self.hang)
        return self.count

    def field(self, name, fn):
        def call(handle, *args):
            index = handle[1]
            if index in self.lost:
                raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
            if (index, name) in self.unsupported:
                self.calls[f"{name}:{index}"] = self.calls.get(f"{name}:{index}", 0) + 1
                raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return fn(handle, *args)

        return call


def make(shared=None, timeout="1s"):
    target = load_config_text(
        f"targets:\n  - {{name: gpus, engine: nvml, interval: 2s, timeout: {timeout}}}\n",
        "t",
        {},
        engines=engine_specs(),
    ).targets[0]
    shared = shared or SharedContext()
    source = NvmlSource(target, shared)
    state = TargetState(target)
    return source, state, Poller(source, state), shared


def close(library):
    """Close and wait for the NVML thread, so a late nvmlShutdown never lands in the next test's fake."""
    library.close()
    library.executor.shutdown(wait=True)


def values(state, key):
    return {tuple(sorted(s.labels)): s.value for s in state.report.series if s.key == key}


def one(state, key, **labels):
    hits = [
        s.value
        for s in state.report.series
        if s.key == key and all(dict(s.labels).get(k) == v for k, v in labels.items())
    ]
    assert len(hits) == 1, (key, labels, hits)
    return hits[0]


async def test_no_driver_reports_down_once_and_backs_off(caplog):
    _source, state, poller, shared = make()
    for _ in range(3):
        await poller.poll()
    assert not state.health.up and state.health.last_error[0] is Reason.OTHER
    assert "libnvidia-ml" in state.health.last_error[1] or "NVML" in state.health.last_error[1]
    assert len([r for r in caplog.records if "gpus" in r.getMessage()]) == 1
    library = shared.get(NVML)
    assert library.failures == 1  # second and third polls did not retry init within the backoff
    close(library)


async def test_reads_every_field_in_base_units(monkeypatch):
    fake = FakeGpus(monkeypatch)
    _source, state, poller, shared = make()
    await poller.poll()
    assert state.health.up, state.health.last_error
    assert one(state, "gpu_utilization_ratio", gpu="0") == 0.37
    assert one(state, "gpu_memory_utilization_ratio", gpu="1") == 0.12
    assert one(state, "gpu_memory_used_bytes", gpu="1", uuid="GPU-1") == 2 * 2**30
    assert one(state, "gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert one(state, "gpu_memory_reserved_bytes", gpu="0") == 2**29
    assert one(state, "gpu_power_watts", gpu="0") == pytest.approx(123.456)
    assert one(state, "gpu_power_limit_watts", gpu="0") == 700
    assert one(state, "gpu_energy_joules", gpu="0") == 5000
    assert one(state, "gpu_temperature_celsius", gpu="0") == 41
    assert one(state, "gpu_sm_clock_hertz", gpu="0") == 1980e6
    assert one(state, "gpu_memory_clock_hertz", gpu="0") == 2619e6
    reasons = {
        dict(s.labels)["reason"]
        for s in state.report.series
        if s.key == "gpu_clock_event_active" and dict(s.labels)["gpu"] == "0"
    }
    assert reasons == {"gpu_idle", "sw_power_cap"}
    assert one(state, "gpu_pcie_bytes_per_second", gpu="0", direction="tx") == 102400
    assert one(state, "gpu_ecc_errors", gpu="0", type="corrected") == 3
    assert one(state, "gpu_performance_state", gpu="0") == 0
    assert state.report.info[0].labels == (("driver_version", "580.95.05"), ("cuda_version", "13.0"))
    assert fake.calls["init"] == 1
    close(shared.get(NVML))


async def test_unsupported_field_skipped_for_that_gpu_only_and_not_asked_again(monkeypatch):
    fake = FakeGpus(monkeypatch)
    fake.unsupported = {(1, "power"), (1, "ecc")}
    _source, state, poller, shared = make()
    await poller.poll()
    await poller.poll()
    assert state.health.up
    assert {dict(s.labels)["gpu"] for s in state.report.series if s.key == "gpu_power_watts"} == {"0"}
    assert {dict(s.labels)["gpu"] for s in state.report.series if s.key == "gpu_ecc_errors"} == {"0"}
    assert fake.calls["power:1"] == 1
    close(shared.get(NVML))


async def test_lost_gpu_is_reported_and_nvml_reinitialised_with_backoff(monkeypatch, caplog):
    fake = FakeGpus(monkeypatch)
    _source, state, poller, shared = make()
    await poller.poll()
    fake.lost = {1}
    await poller.poll()
    assert state.health.up
    assert one(state, "gpu_lost", gpu="1") == 1
    assert one(state, "gpu_temperature_celsius", gpu="0") == 41  # the healthy GPU is still reported
    assert fake.calls["shutdown"] == 1
    assert any("fell off the bus" in r.getMessage() for r in caplog.records)
    await poller.poll()  # within the backoff: no init storm
    assert fake.calls["init"] == 1 and not state.health.up
    library = shared.get(NVML)
    library.next_attempt = 0  # backoff elapsed
    fake.lost = set()
    await poller.poll()
    assert state.health.up and fake.calls["init"] == 2
    close(library)


async def test_hung_driver_times_out_without_blocking_the_loop(monkeypatch):
    fake = FakeGpus(monkeypatch)
    fake.hang = 1.5
    _source, state, poller, shared = make(timeout="300ms")
    ticks = []

    async def ticker():
        for _ in range(20):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    started = time.monotonic()
    await asyncio.gather(poller.poll(), ticker())
    assert time.monotonic() - started < 0.8
    assert state.health.last_error[0] is Reason.TIMEOUT
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.1  # the event loop kept running
    await poller.poll()  # the call is still blocked: reported, nothing queued behind it
    assert "blocked" in state.health.last_error[1]
    await asyncio.sleep(1.3)
    fake.hang = 0
    await poller.poll()
    assert state.health.up
    close(shared.get(NVML))


async def test_no_gpu(monkeypatch):
    FakeGpus(monkeypatch, count=0)
    _source, state, poller, shared = make()
    await poller.poll()
    assert not state.health.up and "no NVIDIA GPU" in state.health.last_error[1]
    close(shared.get(NVML))


async def test_mig_instances_are_their_own_series(monkeypatch):
    fake = FakeGpus(monkeypatch, count=1)
    fake.mig = True
    _source, state, poller, shared = make()
    await poller.poll()
    migs = {dict(s.labels).get("mig") for s in state.report.series if s.key == "gpu_memory_used_bytes"}
    assert migs == {None, "0", "1"}
    assert one(state, "gpu_memory_used_bytes", mig="1", uuid="MIG-0-1") == 2**30
    close(shared.get(NVML))


@pytest.mark.tools
async def test_process_memory_joined_to_engine_target_through_parent_pid(monkeypatch):
    fake = FakeGpus(monkeypatch)
    # a real process tree: the engine (sh) and its worker child (sleep) that holds GPU memory
    engine = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        time.sleep(0.2)
        child = int(subprocess.run(["pgrep", "-P", str(engine.pid)], capture_output=True, text=True).stdout.split()[0])
        fake.processes = {
            0: [
                SimpleNamespace(pid=child, usedGpuMemory=5 * 2**30),
                SimpleNamespace(pid=999_999, usedGpuMemory=2**20),
                SimpleNamespace(pid=4242, usedGpuMemory=None),
            ]
        }
        _source, state, poller, shared = make()
        await poller.poll()
        # NVML reports pids only; the join stage labels them from the live engine target that owns one
        engine_state = TargetState(target_config("llamacpp", "http://127.0.0.1:1", name="llama"))
        engine_state.record_success(
            Observation(
                Readiness.READY,
                process_pid=engine.pid,
                lifecycle={"": ModelStatus(ModelState.LOADED, model="tiny.gguf", pid=engine.pid)},
            ),
            1.0,
            0.01,
        )
        exposed = [
            (labels, value)
            for key, _, labels, value in target_samples(state, process_owners([engine_state]))
            if key == "gpu_process_memory_used_bytes"
        ]
        owned = [(labels, value) for labels, value in exposed if labels["pid"] == str(child)]
        assert len(owned) == 1 and owned[0][1] == 5 * 2**30
        labels = owned[0][0]
        assert (labels["target"], labels["engine"], labels["model"], labels["gpu"]) == (
            "llama",
            "llamacpp",
            "tiny.gguf",
            "0",
        )
        stranger = [labels for labels, _ in exposed if labels["pid"] == "999999"]
        assert stranger[0]["target"] == "gpus" and stranger[0]["engine"] == "nvml"  # stays with the nvml target
        assert "model" not in stranger[0]
        # a process whose memory NVML cannot report is skipped, not exported as 0
        assert not [labels for labels, _ in exposed if labels.get("pid") == "4242"]
        close(shared.get(NVML))
    finally:
        engine.kill()
        engine.wait()


async def test_exporter_initialises_nvml_once_and_shuts_down_on_stop(monkeypatch):
    fake = FakeGpus(monkeypatch)
    config = load_config_text(
        "listen: 127.0.0.1:1\ntargets:\n  - {name: a, engine: nvml, interval: 1s}\n"
        "  - {name: b, engine: nvml, interval: 1s}\n",
        "t",
        {},
        engines=engine_specs(),
    )
    exporter = Exporter(config, None)
    await exporter.start()
    await exporter.poll_all_once()
    assert all(s.health.up for s in exporter.states.values())
    library = exporter.shared.get(NVML)
    await exporter.stop()
    library.executor.shutdown(wait=True)  # the shutdown runs on the NVML thread
    assert fake.calls["init"] == 1 and fake.calls["shutdown"] == 1
