"""The NVML source reading a real GPU's recorded answers (tests/fixtures/nvml-gpm, taken on an H100 by
bench/gpu/gpm_proof.py): the GPM mapping and maths, per-process utilisation, the XID-free event read and
the memory-health fields, replayed through tests/support/nvml_replay.ReplayNvml."""

import json

import pytest

from exporter.sources.nvml import GPM_METRICS, NvmlLibrary
from tests.conftest import FIXTURES
from tests.support.nvml_replay import ReplayNvml

RECORDED = FIXTURES / "nvml-gpm"
RECORDINGS = json.loads((RECORDED / "nvml-recordings.json").read_text())
PROOF = json.loads((RECORDED / "proof.json").read_text())


def replay(workload: str, polls: int = 4):
    nvml = ReplayNvml(RECORDINGS[workload])
    library = NvmlLibrary(module_loader=lambda: nvml)
    readings = [library.read() for _ in range(polls)]
    return nvml, readings


def plain(reading):
    gpu = reading.gpus[0]
    return {key: value for key, labels, value in gpu.values if not labels}, gpu


@pytest.mark.parametrize("workload", ["idle", "matmul", "copy", "tiny"])
def test_gpm_values_are_nvmls_own_numbers_in_base_units(workload):
    nvml, readings = replay(workload)
    assert not any(key.startswith("gpu_sm_active") for key in plain(readings[0])[0])  # one sample: no interval
    # what NVML answered for the last interval, metric by metric
    answers = RECORDINGS[workload]["calls"]["nvmlGpmMetricsGet(struct)"]
    last = answers[len(readings) - 2]["answer"]["metrics"]
    by_key = {key: (constant, scale) for constant, key, labels, scale in GPM_METRICS if not labels}
    values, _gpu = plain(readings[-1])
    for metric in last:
        for key, (constant, scale) in by_key.items():
            if getattr(nvml, constant) == metric["metricId"] and metric["nvmlReturn"] == 0:
                assert values[key] == pytest.approx(min(metric["value"], 100.0) * scale, abs=1e-12)


def test_the_three_workloads_read_as_the_issue_says():
    matmul, _ = plain(replay("matmul")[1][-1])
    assert matmul["gpu_tensor_active_ratio"] >= 0.8 and matmul["gpu_dram_bandwidth_utilization_ratio"] < 0.3
    copy, _ = plain(replay("copy")[1][-1])
    assert copy["gpu_dram_bandwidth_utilization_ratio"] >= 0.8 and copy["gpu_tensor_active_ratio"] < 0.01
    tiny, _ = plain(replay("tiny")[1][-1])
    assert tiny["gpu_sm_active_ratio"] < 0.05 and tiny["gpu_utilization_ratio"] >= 0.2  # "busy", yet idle SMs
    idle, _ = plain(replay("idle")[1][-1])
    assert idle["gpu_sm_active_ratio"] == 0 and idle["gpu_utilization_ratio"] == 0


def test_the_exporter_agreed_with_nvmls_own_gpm_reads_beside_it():
    """proof.json: medians of the running exporter's scrapes against a plain pynvml GPM reader in
    another process over the same seconds."""
    for workload in ("idle", "matmul", "copy", "tiny"):
        row = PROOF[f"workload_{workload}"]
        for ours, theirs in (
            ("gpu_sm_active_ratio", "sm_active"),
            ("gpu_tensor_active_ratio", "tensor"),
            ("gpu_dram_bandwidth_utilization_ratio", "dram"),
        ):
            assert row[f"median_{ours}"] == pytest.approx(row[f"median_direct_{theirs}"], abs=0.01), (workload, ours)


def test_per_process_utilisation_names_the_workload_and_memory_health_is_read():
    _nvml, readings = replay("matmul")
    _values, gpu = plain(readings[-1])
    (_pid, process), *others = gpu.processes.items()
    assert not others and process.sm >= 0.9 and process.memory > 2**30
    keys = {(key, labels) for key, labels, _ in gpu.values}
    assert ("gpu_row_remap_failed", ()) in keys and ("gpu_remapped_rows", (("cause", "uncorrectable"),)) in keys
    # the event read answered "no event" (NVML_ERROR_TIMEOUT): no XID series
    assert {"error": 10} in RECORDINGS["matmul"]["calls"]["nvmlEventSetWait(h2, 1)"]
    assert not [key for key, _, _ in gpu.values if key == "gpu_xid_errors"]


def test_joules_per_token_on_a_real_llama_server_agreed_with_the_client():
    """The CUDA llama-server run (H100): exporter energy and token deltas against NVML's energy delta and
    the clients' usage.completion_tokens over the same 45 s."""
    run = PROOF_LLAMA
    assert run["request_errors"] == 0 and run["exporter_generation_tokens"] == run["client_completion_tokens"]
    assert abs(run["relative_difference"]) < 0.10
    text = (RECORDED / "llama-join.prom").read_text()
    assert 'llm_gpu_target_info{engine="llamacpp",gpu="0"' in text
    assert 'llm_gpu_process_sm_utilization_ratio{engine="llamacpp"' in text


PROOF_LLAMA = json.loads((RECORDED / "llama-proof.json").read_text())
