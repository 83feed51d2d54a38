"""Against a real llama-server built from the llama.cpp sources PyPI ships (tests/support/build_llama_server.sh).

One server life-cycle, in order: the exporter starts first and sees the server
refuse, load and become ready; concurrent requests queue; shared-prefix
requests hit the prompt cache; the server restarts. Each derived signal is
checked against the server's own data at the same moments.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request

import pytest

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


def proc_start_since_boot(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")


class LlamaServer:
    """A real llama-server on loopback (also used by the Prometheus end-to-end test)."""

    def __init__(self, binary, model, port, log_path):
        self.args = [
            binary,
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics",
            "--slots",
            "-np",
            "2",
            "-c",
            "4096",
            "-t",
            "2",
            "--no-webui",
        ]
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, process_group=0)
        self.spawned = time.time()
        wait_until(
            lambda: (
                http_get(f"http://127.0.0.1:{self.port}/health", timeout=2)[0] == 200 or self.proc.poll() is not None
            ),
            60,
            interval=0.02,
            what="llama-server ready",
        )
        assert self.proc.poll() is None, open(self.log_path).read()[-3000:]
        self.first_200 = time.time()

    def stop(self):
        if self.proc is not None:
            kill_tree(self.proc)
            self.log.close()

    def metrics(self):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics")
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.read().decode(), resp.headers["Process-Start-Time-Unix"]

    def complete(self, prompt, n_predict):
        body = json.dumps(
            {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "cache_prompt": True, "temperature": 0}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/completion", data=body, headers={"Content-Type": "application/json"}
        )
        sent = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as resp:
            reply = json.loads(resp.read())
        e2e = time.monotonic() - sent
        timings = reply["timings"]
        # what the client waited that the server did not spend computing this request
        return {"e2e": e2e, "wait": e2e - (timings["prompt_ms"] + timings["predicted_ms"]) / 1000.0, "timings": timings}


def test_llamacpp_real_server_end_to_end(llama_server_bin, tiny_gguf, tmp_path):
    model = tiny_gguf
    port, exporter_port = free_port(), free_port()
    config = tmp_path / "exporter.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{exporter_port}
targets:
  - name: llama
    engine: llamacpp
    url: http://127.0.0.1:{port}
    interval: 100ms
    timeout: 95ms
    window: 5m
    process: {{cmdline: "llama-server .*--port {port} "}}
""")
    server = LlamaServer(llama_server_bin, model, port, tmp_path / "llama-server.log")
    exporter = ExporterProcess(config, exporter_port)
    try:
        # ---- 1. load time: exporter watched the server from before it started
        time.sleep(0.5)
        assert value(exporter.metrics(), "llm_up", target="llama") == 0
        server.start()
        body = wait_until(
            lambda: (lambda b: b if value(b, "llm_ready", target="llama") == 1 else None)(exporter.metrics()),
            10,
            what="exporter to see ready",
        )
        load = value(body, "llm_model_last_load_duration_seconds", target="llama", basis="process_start")
        metrics_text, ready_header = server.metrics()
        truth = int(ready_header) / 1e6 - proc_start_since_boot(server.proc.pid)  # the server's own timeline
        RESULTS["load"] = (load, truth, server.first_200 - server.spawned)
        assert load is not None, body
        assert abs(load - truth) < 0.05
        assert load <= server.first_200 - server.spawned + 0.05
        # nothing served yet: the window's first sample has all-zero counters
        assert value(metrics_text, "llamacpp:prompt_tokens_total") == 0
        assert value(body, "llm_kv_cache_hit_ratio") is None

        # ---- 2. queueing: 6 concurrent requests on 2 slots
        before = exporter.metrics()
        sum0 = value(before, "llm_token_queue_latency_seconds_sum", target="llama")
        count0 = value(before, "llm_token_queue_latency_seconds_count", target="llama")
        results, waiting_seen = [], []
        stop_sampling = threading.Event()

        def sample_waiting():
            while not stop_sampling.is_set():
                waiting_seen.append(value(exporter.metrics(), "llm_requests_waiting", target="llama") or 0)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample_waiting)
        sampler.start()
        words = ["ocean", "forest", "desert", "mountain", "river", "island"]
        threads = [
            threading.Thread(
                target=lambda w=w: results.append(
                    server.complete(
                        f"Request {w}: tell me a long story about the {w} and the people who live near it.", 128
                    )
                )
            )
            for w in words
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join(120)
        time.sleep(0.5)  # a few more polls
        stop_sampling.set()
        sampler.join()
        after = exporter.metrics()
        started = value(after, "llm_token_queue_latency_seconds_count", target="llama") - count0
        estimate = (value(after, "llm_token_queue_latency_seconds_sum", target="llama") - sum0) / started
        client = sum(r["wait"] for r in results) / len(results)
        RESULTS["queue"] = (estimate, client, max(waiting_seen), started)
        assert len(results) == 6
        assert max(waiting_seen) > 0, "waiting requests were never exported"
        assert started == 6
        assert abs(estimate - client) / client < 0.20, (estimate, client)
        mean = value(after, "llm_token_queue_latency_mean_seconds", target="llama")
        assert mean == pytest.approx(
            (value(after, "llm_token_queue_latency_seconds_sum", target="llama"))
            / (value(after, "llm_token_queue_latency_seconds_count", target="llama")),
            rel=0.02,
        )

        # ---- 3. prompt cache: sequential requests sharing a long prefix
        prefix = "You are a helpful assistant for a monitoring project. " * 6
        cached_before = value(server.metrics()[0], "llamacpp:prompt_tokens_cached_total")
        for i in range(5):
            server.complete(prefix + f"Question {i}: what is metric {i}?", 8)
        time.sleep(0.5)  # quiet: counters stop moving, the exporter polls a few more times
        server_text, _ = server.metrics()
        body = exporter.metrics()
        cached = value(server_text, "llamacpp:prompt_tokens_cached_total")
        processed = value(server_text, "llamacpp:prompt_tokens_total")
        ratio = value(body, "llm_kv_cache_hit_ratio", target="llama", unit="tokens")
        RESULTS["hit_ratio"] = (ratio, cached, processed)
        assert cached - cached_before > 4 * 200  # requests 2-5 reused the ~250-token prefix
        # window = [first ready poll (all zero, checked above), now]: Δ = the server's totals
        assert ratio == pytest.approx(cached / (cached + processed), abs=1e-12)
        assert value(body, "llm_kv_cache_hit_tokens_total", target="llama") == cached

        # ---- 4. restart: detected, windows reseeded, a new load measured
        server.stop()
        wait_until(lambda: value(exporter.metrics(), "llm_up", target="llama") == 0, 5, what="down")
        server.start()
        body = wait_until(
            lambda: (
                lambda b: (
                    b
                    if value(b, "llm_engine_restarts_total", target="llama") == 1
                    and value(b, "llm_ready", target="llama") == 1
                    else None
                )
            )(exporter.metrics()),
            10,
            what="restart detected",
        )
        assert value(body, "llm_kv_cache_hit_ratio", target="llama") is None  # fresh window, nothing moved
        _, header = server.metrics()
        new_truth = int(header) / 1e6 - proc_start_since_boot(server.proc.pid)
        assert value(body, "llm_model_last_load_duration_seconds", target="llama") == pytest.approx(new_truth, abs=0.05)
        assert "engine restart detected" in exporter.logs()
    finally:
        print("llama.cpp real-server results:", RESULTS)
        (tmp_path.parent / "llamacpp-real-results.json").write_text(json.dumps(RESULTS))
        exporter.stop()
        server.stop()
