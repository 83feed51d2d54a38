"""Small helpers for tests that start real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(
    url: str, timeout: float = 5.0, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, str]:
    """GET (or POST a JSON body when `data` is given)."""
    if data is not None:
        headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")


class ExporterProcess:
    """The real `llm-exporter` console command, started with a config file."""

    def __init__(
        self, config_path: Path, port: int, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ):
        self.port = port
        self.config_path = config_path
        exe = Path(sys.executable).with_name("llm-exporter")
        cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "exporter"])]
        self.log_path = config_path.with_suffix(".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*cmd, "--config", str(config_path), *extra_args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        wait_until(
            lambda: self.get("/healthz")[0] == 200 or self.proc.poll() is not None,
            15,
            what="exporter to serve /healthz",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"exporter exited early: {self.logs()}")

    def get(self, path: str, **kw: Any) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", **kw)

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def value(body: str, name: str, **labels: str) -> float | None:
    """The first sample of `name` in an exposition whose labels include `labels`."""
    from exporter.promparse import parse

    for sample_labels, sample_value in parse(body).get(name):
        if all(sample_labels.get(k) == want for k, want in labels.items()):
            return sample_value
    return None


def start_prometheus(prometheus_bin: str, config: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Debian's Prometheus with `config`, its TSDB and log in `workdir`, ready to answer on `port`."""
    log = open(workdir / "prometheus.log", "w")
    proc = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 30, what="prometheus")
    return proc


async def serve_handler(handler: Callable[[Any], Any], methods: str = "*") -> tuple[Any, int]:
    """An aiohttp server on a free loopback port answering every path with `handler` (a fake engine for
    fault injection); returns its runner (to `cleanup()`) and its port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route(methods, "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
