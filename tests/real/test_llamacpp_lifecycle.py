"""Model lifecycle against the real llama-server the suite builds (tests/support/build_llama_server.sh).

- Router mode (`--models-dir`, `--models-max 1`, autoload left on): loads, swaps and unloads of
  three tiny GGUF models of different sizes; per-model series and states follow GET /models;
  every load counted once, its duration within one poll of the server's own log; the exporter
  never loads a model.
- Sleep (`--sleep-idle-seconds`): the server falls asleep and stays asleep while the exporter
  polls for a minute; a request wakes it; the wake is counted (and dated, in router mode).
- Sidecar first, crash and restart: the exported load time equals the server's own within one
  poll and never includes the time nothing was running.

The server's own timeline comes from its log, each line stamped when it was read (a reader
thread on the server's stdout), and from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
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
INTERVAL = 0.25
RESULTS: dict[str, object] = {}


class LoggedServer:
    """A real llama-server whose log lines are read as they come, each with the time it was read."""

    def __init__(self, binary: str, args: list[str], port: int):
        self.args = [
            binary,
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics",
            "--slots",
            "-t",
            "2",
            "--no-webui",
            "-c",
            "1024",
            "-np",
            "2",
        ]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        self.spawned = time.time()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if wait_ready:
            wait_until(
                lambda: http_get(self.url + "/health", timeout=2)[0] == 200 or self.proc.poll() is not None,
                60,
                interval=0.02,
                what="llama-server listening and ready",
            )
            assert self.proc.poll() is None, self.log()[-3000:]

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))

    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str, after: float = 0.0) -> float | None:
        regex = re.compile(pattern)
        return next((t for t, line in list(self.lines) if t >= after and regex.search(line)), None)

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for _, line in list(self.lines) if regex.search(line))

    def post(self, path: str, body: dict[str, object], timeout: float = 120) -> dict[str, object]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())

    def models(self) -> dict[str, str]:
        status, body = http_get(self.url + "/models", timeout=5)
        assert status == 200, body
        return {m["id"]: m["status"]["value"] for m in json.loads(body)["data"]}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            else:
                kill_tree(self.proc)


def exporter_config(tmp_path, exporter_port: int, server_port: int, name: str = "llama") -> object:
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{exporter_port}
targets:
  - name: {name}
    engine: llamacpp
    url: http://127.0.0.1:{server_port}
    interval: {int(INTERVAL * 1000)}ms
    timeout: 240ms
    window: 5m
""")
    return config


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Three tiny GGUF models of different sizes, as a router's --models-dir."""
    from tests.support.tiny_gguf import write_model

    out = tmp_path_factory.mktemp("models")
    for name, layers, hidden in (("small", 2, 256), ("medium", 4, 512), ("large", 8, 768)):
        write_model(
            str(out / f"{name}.gguf"), layers=layers, hidden=hidden, heads=hidden // 64, ffn=hidden * 2, context=1024
        )
    return out


def parse_body(body: str, name: str) -> list:
    from exporter.promparse import parse

    return parse(body).get(name)


def _states(body: str, target: str = "router") -> dict[str, str]:
    from exporter.promparse import parse

    return {
        labels["model"]: labels["state"]
        for labels, v in parse(body).get("llm_model_state")
        if labels.get("target") == target and v == 1
    }


def test_router_loads_swaps_and_unloads(llama_server_bin, models_dir, tmp_path):
    port, exporter_port = free_port(), free_port()
    server = LoggedServer(llama_server_bin, ["--models-dir", str(models_dir), "--models-max", "1"], port)
    server.start()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port, "router"), exporter_port)
    try:
        # The exporter polls for 3 s with autoload on: every model stays unloaded.
        body = wait_until(
            lambda: (lambda b: b if len(_states(b)) == 3 else None)(exporter.metrics()),
            10,
            what="the exporter to list three models",
        )
        time.sleep(3)
        body = exporter.metrics()
        assert _states(body) == {"small": "unloaded", "medium": "unloaded", "large": "unloaded"}, body
        assert set(server.models().values()) == {"unloaded"}
        assert server.count("spawning server instance") == 0, "the exporter caused a load"
        assert value(body, "llm_requests_running", target="router") is None  # no values for unloaded models

        timeline: list[tuple[str, float, float]] = []  # (model, spawn log, ready log)

        def load_and_wait(model: str, how: str) -> None:
            # the router is still stopping the instance it evicted for the previous load: wait for that
            wait_until(
                lambda: all(state in ("loaded", "unloaded") for state in server.models().values()),
                30,
                what="the previous eviction to finish",
            )
            since = time.time()
            if how == "api":
                for attempt in range(3):  # the router answers 500 while an evicted child is still exiting
                    try:
                        server.post("/models/load", {"model": model})
                        break
                    except urllib.error.HTTPError as exc:
                        if exc.code != 500 or attempt == 2:
                            raise
                        time.sleep(1.0)
            else:  # a request for the model: the router loads it (and evicts the LRU at --models-max 1)
                server.post("/completion", {"model": model, "prompt": "hello", "n_predict": 4})
            wait_until(
                lambda: server.models()[model] == "loaded" and list(server.models().values()).count("loaded") == 1,
                60,
                what=f"{model} alone loaded",
            )
            spawn = server.first(rf"spawning server instance with name={model} ", since)
            ready = server.first(r"model loaded", spawn or since)
            assert spawn is not None and ready is not None, server.log()[-3000:]
            timeline.append((model, spawn, ready))
            wait_until(lambda: _states(exporter.metrics()).get(model) == "loaded", 5, what=f"exporter: {model}")

        load_and_wait("medium", "api")
        load_and_wait("small", "request")  # evicts medium
        load_and_wait("large", "request")  # evicts small
        load_and_wait("medium", "api")  # evicts large
        body = exporter.metrics()
        assert _states(body) == {"small": "unloaded", "medium": "loaded", "large": "unloaded"}
        assert value(body, "llm_requests_running", target="router", model="medium") == 0
        assert value(body, "llm_requests_running", target="router", model="large") is None
        assert value(body, "llm_slots", target="router", model="medium") == 2
        server.post("/models/unload", {"model": "medium"})
        wait_until(lambda: _states(exporter.metrics()).get("medium") == "unloaded", 15, what="medium unloaded")
        body = exporter.metrics()
        loads = {
            m: value(body, "llm_model_loads_total", target="router", model=m, kind="load")
            for m in ("small", "medium", "large")
        }
        assert loads == {"small": 1, "medium": 2, "large": 1}, loads
        # --models-max 1: each swap evicted the model before; the last one was unloaded on request
        unloads = {
            (labels["model"], labels["reason"]): v
            for labels, v in parse_body(body, "llm_model_unloads_total")
            if labels.get("target") == "router"
        }
        RESULTS["router_unloads"] = {f"{model}/{reason}": n for (model, reason), n in unloads.items()}
        assert unloads == {
            ("medium", "evicted"): 1,
            ("small", "evicted"): 1,
            ("large", "evicted"): 1,
            ("medium", "requested"): 1,
        }, unloads
        errors = []
        # every load's duration, against the server's own log (spawn line → child's "model loaded")
        durations = {m: [] for m in ("small", "medium", "large")}
        from exporter.promparse import parse

        hist = {
            labels["model"]: v
            for labels, v in parse(body).get("llm_model_load_duration_seconds_sum")
            if labels.get("target") == "router"
        }
        for model, spawn, ready in timeline:
            durations[model].append(ready - spawn)
        for model, truths in durations.items():
            errors.append((model, hist[model], sum(truths)))
            assert abs(hist[model] - sum(truths)) <= INTERVAL * len(truths) + 0.05, (model, hist[model], truths)
        last = {
            labels["model"]: (labels["basis"], v)
            for labels, v in parse(body).get("llm_model_last_load_duration_seconds")
            if labels.get("target") == "router"
        }
        # the children are on this host: each load is dated from the child's spawn (/proc), which precedes the
        # router's `loading` event on /models/sse; the stream dates loads where /proc cannot see the child
        # (tests/unit/test_llamacpp_router_events.py)
        assert {basis for basis, _ in last.values()} == {"process_start"}, last
        RESULTS["router"] = {"exported_sum_vs_log": errors, "bases": last}
        assert set(server.models().values()) == {"unloaded"}
    finally:
        print("router results:", RESULTS.get("router"))
        exporter.stop()
        server.stop()


def test_sleeping_server_is_never_woken_and_wakes_are_counted(llama_server_bin, tiny_gguf, tmp_path):
    port, exporter_port = free_port(), free_port()
    server = LoggedServer(llama_server_bin, ["-m", str(tiny_gguf), "--sleep-idle-seconds", "3"], port)
    server.start()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port), exporter_port)
    try:
        wait_until(
            lambda: server.first("server is entering sleeping state") is not None, 20, what="the server to sleep"
        )
        asleep = time.time()
        body = wait_until(
            lambda: (lambda b: b if _states(b, "llama") == {"tiny-llama.gguf": "sleeping"} else None)(
                exporter.metrics()
            ),
            5,
            what="exporter: sleeping",
        )
        polls_before = value(body, "llm_exporter_polls_total", target="llama")
        time.sleep(60)
        assert server.count("server is exiting sleeping state") == 0, "the exporter woke the server"
        assert server.count("server is entering sleeping state") == 1
        body = exporter.metrics()
        assert value(body, "llm_exporter_polls_total", target="llama") - polls_before >= 60 / INTERVAL * 0.8
        assert _states(body, "llama") == {"tiny-llama.gguf": "sleeping"}
        # a request wakes it: counted as a wake
        sent = time.time()
        server.post("/completion", {"prompt": "wake up", "n_predict": 4})
        assert server.first("server is exiting sleeping state", asleep) is not None
        body = wait_until(
            lambda: (lambda b: b if value(b, "llm_model_loads_total", target="llama", kind="wake") == 1 else None)(
                exporter.metrics()
            ),
            5,
            what="the wake to be counted",
        )
        RESULTS["sleep"] = {
            "slept_s": sent - asleep,
            "wake_counted": 1,
            "wake_seconds": value(body, "llm_model_last_load_duration_seconds", target="llama", kind="wake"),
        }
        # A single-model llama-server shows no loading state while it wakes: counted, not dated.
        assert value(body, "llm_model_last_load_duration_seconds", target="llama", kind="wake") is None
        assert value(body, "llm_model_loads_total", target="llama", kind="start") == 0  # met loaded: not a load
    finally:
        print("sleep results:", RESULTS.get("sleep"))
        exporter.stop()
        server.stop()


def test_router_child_sleeps_and_its_wake_is_dated(llama_server_bin, models_dir, tmp_path):
    port, exporter_port = free_port(), free_port()
    server = LoggedServer(
        llama_server_bin, ["--models-dir", str(models_dir), "--models-max", "1", "--sleep-idle-seconds", "2"], port
    )
    server.start()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port, "router"), exporter_port)
    try:
        server.post("/models/load", {"model": "large"})
        wait_until(lambda: server.models()["large"] == "sleeping", 30, what="the child to sleep")
        wait_until(lambda: _states(exporter.metrics()).get("large") == "sleeping", 5, what="exporter: sleeping")
        time.sleep(5)
        assert server.models()["large"] == "sleeping", "the exporter woke the child"
        assert value(exporter.metrics(), "llm_requests_running", target="router", model="large") is None
        since = time.time()
        server.post("/completion", {"model": "large", "prompt": "wake up", "n_predict": 4})
        woke = server.first("server is exiting sleeping state", since)
        body = wait_until(
            lambda: (
                lambda b: (
                    b if value(b, "llm_model_loads_total", target="router", model="large", kind="wake") == 1 else None
                )
            )(exporter.metrics()),
            5,
            what="the wake to be counted",
        )
        exported = value(body, "llm_model_last_load_duration_seconds", target="router", model="large", kind="wake")
        RESULTS["router_wake"] = {"exported": exported, "log_exit_sleep": woke and woke - since}
        assert woke is not None and exported is not None
        assert 0 <= exported <= INTERVAL + 0.1  # dated within one poll (the wake itself takes a few ms)
    finally:
        print("router wake results:", RESULTS.get("router_wake"))
        exporter.stop()
        server.stop()


def test_sidecar_first_crash_and_restart_never_count_downtime(llama_server_bin, tiny_gguf, tmp_path):
    from tests.real.test_llamacpp_real import proc_start_since_boot

    port, exporter_port = free_port(), free_port()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port), exporter_port)
    server = LoggedServer(llama_server_bin, ["-m", str(tiny_gguf)], port)
    try:
        time.sleep(5)  # the sidecar runs before its engine exists
        assert value(exporter.metrics(), "llm_up", target="llama") == 0
        measured = []
        for life in ("first start", "restart after a crash"):
            server.start()
            with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
                header = resp.headers["Process-Start-Time-Unix"]
            truth = int(header) / 1e6 - proc_start_since_boot(server.proc.pid)  # the server's own timeline
            body = wait_until(
                lambda: (
                    lambda b: (
                        b
                        if value(b, "llm_model_loads_total", target="llama", kind="start") == len(measured) + 1
                        else None
                    )
                )(exporter.metrics()),
                5,
                what="a start load",
            )
            exported = value(body, "llm_model_last_load_duration_seconds", target="llama", kind="start")
            from exporter.promparse import parse

            basis = next(
                (labels["basis"] for labels, _ in parse(body).get("llm_model_last_load_duration_seconds")), None
            )
            measured.append({"life": life, "exported": exported, "truth": truth, "basis": basis})
            # Without `process:` the exporter finds this llama-server by the port in its command line, so the
            # start is dated by the process itself: the server's own timeline, to the millisecond. Never the
            # seconds during which nothing was running.
            assert basis == "process_start", measured
            assert exported is not None and abs(exported - truth) <= 0.01, measured
            if life == "first start":
                server.stop(signal.SIGKILL)
                wait_until(lambda: value(exporter.metrics(), "llm_up", target="llama") == 0, 5, what="down")
                time.sleep(10)  # down for ten seconds: none of it is load time
        RESULTS["sidecar"] = measured
        body = exporter.metrics()
        assert value(body, "llm_model_load_failures_total", target="llama") == 0
    finally:
        print("sidecar results:", RESULTS.get("sidecar"))
        (tmp_path.parent / "llamacpp-lifecycle-results.json").write_text(json.dumps(RESULTS, default=str))
        exporter.stop()
        server.stop()


def test_each_model_keeps_its_own_history_across_restarts(llama_server_bin, models_dir, tmp_path):
    """A single-model llama-server restarted with small, medium, medium, small: each model's own start count
    and load histogram, exactly (the model is named from the process's command line, found by its port,
    from the moment it starts loading)."""
    from exporter.promparse import parse

    port, exporter_port = free_port(), free_port()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port), exporter_port)
    server = None
    try:
        seen: dict[str, int] = {}
        for model in ("small", "medium", "medium", "small"):
            server = LoggedServer(llama_server_bin, ["-m", str(models_dir / f"{model}.gguf")], port)
            server.start()
            seen[model] = seen.get(model, 0) + 1
            # wait for this start itself, not for a "loaded" state the model may still show from its last
            # run (stopping the server before the exporter has polled it would test nothing)
            wait_until(
                lambda m=model: (
                    value(exporter.metrics(), "llm_model_state", target="llama", model=f"{m}.gguf", state="loaded") == 1
                    and value(
                        exporter.metrics(), "llm_model_loads_total", target="llama", model=f"{m}.gguf", kind="start"
                    )
                    == seen[m]
                ),
                15,
                what=f"{model} start {seen[model]} counted",
            )
            server.stop()
            wait_until(lambda: value(exporter.metrics(), "llm_up", target="llama") == 0, 5, what="down")
        body = exporter.metrics()
        starts = {
            labels["model"]: v
            for labels, v in parse(body).get("llm_model_loads_total")
            if labels.get("target") == "llama" and labels.get("kind") == "start"
        }
        timed = {
            labels["model"]: v
            for labels, v in parse(body).get("llm_model_load_duration_seconds_count")
            if labels.get("target") == "llama"
        }
        RESULTS["per_model"] = {"starts": starts, "timed": timed}
        assert starts == {"small.gguf": 2, "medium.gguf": 2}, starts
        assert timed == {"small.gguf": 2, "medium.gguf": 2}, timed
        assert value(body, "llm_model_load_failures_total", target="llama", model="small.gguf") == 0
    finally:
        print("per-model results:", RESULTS.get("per_model"))
        exporter.stop()
        if server is not None:
            server.stop()


def test_a_killed_and_restarted_router_counts_one_restart(llama_server_bin, models_dir, tmp_path):
    """The --models-dir router is killed and started again (no `process:`: found by its port)."""
    port, exporter_port = free_port(), free_port()
    server = LoggedServer(llama_server_bin, ["--models-dir", str(models_dir), "--models-max", "1"], port)
    server.start()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port, "router"), exporter_port)
    try:
        wait_until(lambda: value(exporter.metrics(), "llm_up", target="router") == 1, 10, what="router up")
        time.sleep(3 * INTERVAL)
        assert value(exporter.metrics(), "llm_engine_restarts_total", target="router") == 0
        server.stop(signal.SIGKILL)
        wait_until(lambda: value(exporter.metrics(), "llm_up", target="router") == 0, 5, what="router down")
        server.start()
        wait_until(
            lambda: value(exporter.metrics(), "llm_engine_restarts_total", target="router") == 1,
            10,
            what="one restart counted",
        )
        time.sleep(3 * INTERVAL)
        assert value(exporter.metrics(), "llm_engine_restarts_total", target="router") == 1
    finally:
        exporter.stop()
        server.stop()


def test_a_corrupt_model_in_a_router_is_one_failure_of_that_model(llama_server_bin, models_dir, tmp_path):
    """A router whose --models-dir holds a corrupt GGUF: loading it fails; the failure is counted once, on that
    model, and logged once."""
    import shutil

    broken_dir = tmp_path / "models"
    broken_dir.mkdir()
    shutil.copy(models_dir / "small.gguf", broken_dir / "small.gguf")
    (broken_dir / "broken.gguf").write_bytes(b"GGUF" + b"\xff" * 4096)
    port, exporter_port = free_port(), free_port()
    server = LoggedServer(llama_server_bin, ["--models-dir", str(broken_dir), "--models-max", "1"], port)
    server.start()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port, "router"), exporter_port)
    try:
        wait_until(lambda: len(_states(exporter.metrics())) == 2, 10, what="two models listed")
        with contextlib.suppress(urllib.error.HTTPError):  # the router may answer the load with an error itself
            server.post("/models/load", {"model": "broken"})
        body = wait_until(
            lambda: (
                lambda b: b if value(b, "llm_model_load_failures_total", target="router", model="broken") == 1 else None
            )(exporter.metrics()),
            30,
            what="the failure counted",
        )
        time.sleep(4 * INTERVAL)
        body = exporter.metrics()
        assert value(body, "llm_model_load_failures_total", target="router", model="broken") == 1
        assert value(body, "llm_model_load_failures_total", target="router", model="small") == 0
        assert exporter.logs().count("model broken failed to load") == 1, exporter.logs()[-2000:]
    finally:
        exporter.stop()
        server.stop()


def test_a_process_killed_while_loading_is_one_failure_of_the_model_it_was_loading(llama_server_bin, tmp_path):
    """A llama-server killed (SIGKILL) while it loads a model (a ~700 MB GGUF read with direct I/O, so the
    load lasts a few polls): one failure, charged to that model (named from the command line while it loads,
    before /props can say), logged once."""
    from tests.support.tiny_gguf import write_model

    big = tmp_path / "big.gguf"
    write_model(str(big), layers=6, hidden=1536, heads=24, ffn=4096, context=1024)
    port, exporter_port = free_port(), free_port()
    exporter = ExporterProcess(exporter_config(tmp_path, exporter_port, port), exporter_port)
    server = LoggedServer(llama_server_bin, ["-m", str(big), "-lm", "dio"], port)
    try:
        server.start(wait_ready=False)
        wait_until(
            lambda: (
                value(exporter.metrics(), "llm_model_state", target="llama", model="big.gguf", state="loading") == 1
            ),
            20,
            interval=0.05,
            what="the exporter to see it loading",
        )
        server.stop(signal.SIGKILL)
        wait_until(lambda: value(exporter.metrics(), "llm_up", target="llama") == 0, 5, what="down")
        body = exporter.metrics()
        assert value(body, "llm_model_load_failures_total", target="llama", model="big.gguf") == 1, body
        assert value(body, "llm_model_loads_total", target="llama", model="big.gguf", kind="start") == 0
        assert exporter.logs().count("model big.gguf failed to load") == 1, exporter.logs()[-2000:]
    finally:
        exporter.stop()
        server.stop()
