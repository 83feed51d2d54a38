"""One meaning per unified counter, proven against what the clients themselves were told: requests with a
shared prefix through /v1/completions (streamed and not) on the real llama-server and the real vLLM; the
exporter's counter deltas must equal the sums of the `usage` fields the clients received, exactly."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.real.test_llamacpp_real import LlamaServer
from tests.real.test_vllm_real import VllmServer, model_dir  # noqa: F401 - the module's fixture
from tests.support.net import ExporterProcess, free_port, value, wait_until

pytestmark = pytest.mark.real_engine
RESULTS: dict[str, dict[str, tuple[float, float]]] = {}
COUNTERS = (
    ("prompt", "llm_prompt_tokens_total"),
    ("completion", "llm_generation_tokens_total"),
    ("cached", "llm_kv_cache_hit_tokens_total"),
)


def completion(port: int, model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, int]:
    """One /v1/completions request; the usage the client was told (the final chunk's, when streamed)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()[:300]
    usage = None
    if stream:
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
    else:
        usage = json.loads(response.read())["usage"]
    conn.close()
    assert usage, "the server sent no usage"
    details = usage.get("prompt_tokens_details") or {}
    return {
        "prompt": usage["prompt_tokens"],
        "completion": usage["completion_tokens"],
        "cached": details.get("cached_tokens") or 0,
        "has_cached": "cached_tokens" in details,
    }


def one_target(tmp_path, exporter_port: int, name: str, engine: str, port: int, interval: str, timeout: str):
    """The exporter's config: one target on loopback."""
    config = tmp_path / "exporter.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{exporter_port}\ntargets:\n  - {{name: {name}, engine: {engine}, "
        f"url: 'http://127.0.0.1:{port}', interval: {interval}, timeout: {timeout}}}\n"
    )
    return config


def counters(body: str, target: str) -> dict[str, float | None]:
    out = {key: value(body, name, target=target) for key, name in COUNTERS}
    from exporter.promparse import parse

    finished = [v for labels, v in parse(body).get("llm_requests_finished_total") if labels.get("target") == target]
    out["requests"] = sum(finished) if finished else None  # every finish reason
    return out


def prove(
    exporter: ExporterProcess, port: int, model: str, target: str, interval: float, prefix: str
) -> dict[str, tuple]:
    wait_until(lambda: value(exporter.metrics(), "llm_ready", target=target) == 1, 30, what=f"{target} ready")
    time.sleep(2 * interval)
    before = counters(exporter.metrics(), target)
    told = [
        completion(port, model, prefix + question, 8, stream)
        for question, stream in (
            ("What is a counter?", False),
            ("What is a gauge?", False),
            ("What is a histogram?", True),
            ("What is a label?", True),
            ("What is a scrape?", False),
        )
    ]
    sums = {key: sum(t[key] for t in told) for key in ("prompt", "completion", "cached")}
    assert sums["cached"] > 0, told  # the shared prefix was served from the cache at least once
    expected: dict[str, float] = dict(sums)
    if before["requests"] is not None:  # an engine that counts finished requests: one per request sent
        expected["requests"] = len(told)
    time.sleep(3 * interval)  # a few polls after the last request

    def settled() -> dict[str, float | None] | None:
        after = counters(exporter.metrics(), target)
        return (
            after
            if all(
                after[k] is not None and before[k] is not None and after[k] - before[k] == expected[k] for k in expected
            )
            else None
        )

    try:
        wait_until(settled, 10, interval=interval, what="exporter deltas equal to the clients' usage sums")
    finally:
        after = counters(exporter.metrics(), target)
        RESULTS[target] = {k: ((after[k] or 0) - (before[k] or 0), expected[k]) for k in expected}
        print(f"{target}: exporter delta vs client sum:", RESULTS[target])
    return RESULTS[target]


def test_llamacpp_counters_equal_the_usage_clients_got(llama_server_bin, tiny_gguf, tmp_path):
    port, exporter_port = free_port(), free_port()
    server = LlamaServer(llama_server_bin, tiny_gguf, port, tmp_path / "llama.log")
    config = one_target(tmp_path, exporter_port, "llama", "llamacpp", port, "200ms", "190ms")
    server.start()
    exporter = ExporterProcess(config, exporter_port)
    try:
        prove(
            exporter,
            port,
            "tiny",
            "llama",
            0.2,
            "You are a careful assistant for a monitoring project; answer briefly and precisely. " * 3,
        )
    finally:
        exporter.stop()
        server.stop()


def test_vllm_counters_equal_the_usage_clients_got(vllm_python, model_dir, tmp_path):  # noqa: F811
    port, exporter_port = free_port(), free_port()
    server = VllmServer(vllm_python, model_dir, port, tmp_path / "vllm.log")
    server.args.append("--enable-prompt-tokens-details")  # so clients are told cached_tokens
    config = one_target(tmp_path, exporter_port, "vllm", "vllm", port, "500ms", "450ms")
    exporter = ExporterProcess(config, exporter_port)
    server.start()
    try:
        # longer than vLLM's cache blocks, so whole blocks of it are shared (as in test_vllm_real.py)
        prove(
            exporter,
            port,
            "tiny-llama",
            "vllm",
            0.5,
            "the model serves tokens from a cache while requests wait in a queue for a batch slot " * 12,
        )
    finally:
        exporter.stop()
        server.stop()


def test_llamacpp_kv_usage_follows_the_fill_the_clients_know(llama_server_bin, tiny_gguf, tmp_path):
    """Two long streams, one per slot (`-np 2 -c 4096`: two pools of 2048 cells, 4096 in all): every sample of
    llm_kv_cache_usage_ratio while both stream equals (prompt tokens + tokens streamed so far) / 4096 as the
    clients count them, within the tokens generated between the exporter's poll and the sample."""
    import threading

    port, exporter_port = free_port(), free_port()
    server = LlamaServer(llama_server_bin, tiny_gguf, port, tmp_path / "llama.log")
    config = one_target(tmp_path, exporter_port, "llama", "llamacpp", port, "200ms", "190ms")
    server.start()
    exporter = ExporterProcess(config, exporter_port)
    streamed = [0, 0]
    prompts = [0, 0]
    active = [False, False]

    def stream(i: int) -> None:
        body = {
            "model": "tiny",
            "prompt": f"Stream number {i}: " + "tell me about metrics and caches. " * 20,
            "max_tokens": 600,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        active[i] = True
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    prompts[i] = chunk["usage"]["prompt_tokens"]
                elif chunk.get("choices"):
                    streamed[i] += 1
        active[i] = False
        conn.close()

    try:
        wait_until(lambda: value(exporter.metrics(), "llm_ready", target="llama") == 1, 30, what="ready")
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        samples = []  # (exporter ratio, tokens streamed by each client at the sample, time)
        while any(t.is_alive() for t in threads):
            before = tuple(streamed)
            ratio = value(exporter.metrics(), "llm_kv_cache_usage_ratio", target="llama")
            if all(active) and min(before) > 5:
                samples.append((ratio, before, tuple(streamed), time.monotonic()))
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        assert len(samples) >= 5, samples
        rate = (sum(streamed) / max(1e-9, samples[-1][3] - samples[0][3])) if samples else 0  # both streams
        slack = rate * 0.5 / 4096  # a poll interval and a scrape apart, at the measured token rate
        errors = []
        for ratio, at_start, at_end, _ in samples:
            assert ratio is not None
            low = (sum(prompts) + sum(at_start)) / 4096 - slack
            high = (sum(prompts) + sum(at_end)) / 4096 + 2 / 4096
            errors.append(round(ratio - (sum(prompts) + sum(at_start)) / 4096, 4))
            assert low <= ratio <= high, (ratio, low, high)
        RESULTS["kv_usage"] = {"samples": len(samples), "max_error": max(map(abs, errors)), "slack": slack}
        print("llama kv usage vs client fill:", RESULTS["kv_usage"])
    finally:
        exporter.stop()
        server.stop()
