"""Capture a real llama-server's router-mode answers (and a single-model server's /models) as fixtures.

    .venv/bin/python -m tests.support.capture_llamacpp_router tests/fixtures/llamacpp/router

Runs the cached llama-server (tests/support/build_llama_server.sh) with `--models-dir` holding two tiny
generated GGUF models and a corrupt one, and writes each answer unedited (bodies as served, plus the
status and the headers the source reads): /models with nothing loaded, while `small` loads, once it is
loaded, after the corrupt model failed; /metrics without ?model= (the router's 400), /metrics, /props
and /slots of the loaded child (?model=small&autoload=false), /metrics of a model that is not loaded;
then a single-model server (`-m`) on the same port: its /models (no `status`) and /metrics.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tests.support.tiny_gguf import write_model

HEADERS = ("Content-Type", "Process-Start-Time-Unix")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), {k: v for k, v in resp.headers.items() if k in HEADERS}
    except urllib.error.HTTPError as err:
        return err.code, err.read(), {k: v for k, v in err.headers.items() if k in HEADERS}


def post(url: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with contextlib.suppress(urllib.error.HTTPError):  # a failed load answers an error: the capture wants it
        urllib.request.urlopen(request, timeout=60).read()


def save(out: pathlib.Path, name: str, answer: tuple[int, bytes, dict[str, str]]) -> None:
    status, body, headers = answer
    (out / name).write_bytes(body)
    (out / (name + ".meta.json")).write_text(json.dumps({"status": status, "headers": headers}, indent=1) + "\n")
    print(f"{name}: {status} {len(body)} bytes", file=sys.stderr)


def wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["status"]["value"] for m in json.loads(get(url + "/models")[1])["data"]}


def serve(binary: str, args: list[str], port: int) -> subprocess.Popen[bytes]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--metrics", "--slots", "-t", "2", "--no-webui"]
    return subprocess.Popen(
        [binary, *args, *common, "-c", "1024", "-np", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main(out: pathlib.Path) -> None:
    binary = (
        subprocess.run(
            ["bash", str(pathlib.Path(__file__).parent / "build_llama_server.sh")],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    out.mkdir(parents=True, exist_ok=True)
    models = out / "_models"
    models.mkdir(exist_ok=True)
    write_model(str(models / "small.gguf"), layers=2, hidden=256, heads=4, ffn=512, context=1024)
    write_model(str(models / "large.gguf"), layers=12, hidden=1024, heads=16, ffn=4096, context=1024)
    (models / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    router = serve(binary, ["--models-dir", str(models), "--models-max", "2"], port)
    try:
        wait(lambda: get(url + "/health")[0] == 200, 60, "the router")
        save(out, "models-none-loaded.json", get(url + "/models"))
        save(out, "metrics-no-model.json", get(url + "/metrics"))
        save(out, "metrics-not-loaded.json", get(url + "/metrics?model=small&autoload=false"))
        post(url + "/models/load", {"model": "large"})
        wait(lambda: states(url)["large"] == "loading", 30, "large loading")
        save(out, "models-one-loading.json", get(url + "/models"))
        wait(lambda: states(url)["large"] == "loaded", 120, "large loaded")
        post(url + "/models/load", {"model": "small"})
        wait(lambda: states(url)["small"] == "loaded", 120, "small loaded")
        save(out, "models-two-loaded.json", get(url + "/models"))
        save(out, "child-metrics.prom", get(url + "/metrics?model=small&autoload=false"))
        save(out, "child-props.json", get(url + "/props?model=small&autoload=false"))
        post(url + "/models/load", {"model": "broken"})
        wait(
            lambda: states(url)["broken"] == "unloaded" and "failed" in get(url + "/models")[1].decode(),
            60,
            "broken failed",
        )
        post(url + "/models/unload", {"model": "large"})
        wait(lambda: states(url)["large"] == "unloaded", 60, "large unloaded")
        save(out, "models-failed-and-unloaded.json", get(url + "/models"))
    finally:
        router.terminate()
        router.wait(30)
    single = serve(binary, ["-m", str(models / "small.gguf")], port)
    try:
        wait(lambda: get(url + "/health")[0] == 200, 60, "the single-model server")
        save(out, "single-models.json", get(url + "/models"))
        save(out, "single-metrics.prom", get(url + "/metrics"))
    finally:
        single.terminate()
        single.wait(30)
    for path in models.iterdir():
        path.unlink()
    models.rmdir()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
