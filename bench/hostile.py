"""The attacks of the reliability report (shared/reviews/reliability-404e8c1.md) against the real exporter
process, each beside a control target, against a baseline from the same run.

    .venv/bin/python bench/hostile.py [--seconds 12] [--only NAME ...] [--write]

Every scenario runs a fresh exporter with a control target `ctl` (the real vLLM 0.32 payload, 500 ms) and,
for upstream attacks, one hostile target `bad`; client attacks hit the exporter's own port. Measured per
scenario, from /proc and the exporter's own metrics: resident memory at the end and its peak (VmHWM), the
event loop's lag (the sum of `llm_exporter_event_loop_lag_seconds`), the control target's polls against
its schedule, and a legitimate scraper's latency and failures (one scrape a second). --write puts the table
in bench/hostile.md and bench/RESULTS.md's "Hostile" section.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import free_port, proc_peak_rss_bytes, proc_rss_bytes, publish_section, wait_http  # noqa: E402

from exporter.promparse import parse  # noqa: E402

HOSTILE_SERVER = r"""
import asyncio, json, sys
from aiohttp import web
VLLM = open(sys.argv[2]).read()
LLAMA = open(sys.argv[3]).read()
PROPS = open(sys.argv[4]).read()
TAIL = "# TYPE vllm:num_requests_running gauge\n"
N = {"n": 0}
CACHE = {}

def cached(name, build):
    if name not in CACHE:
        CACHE[name] = build()
    return CACHE[name]

async def handle(req):
    mode, _, rest = req.path[1:].partition("/")
    rest = "/" + rest
    N["n"] += 1
    n = N["n"]
    if rest == "/health":
        return web.Response(text="")
    if mode == "good":
        return web.Response(text=VLLM)
    if mode == "biglabels":
        junk = [f'vllm:num_requests_running{{engine="0",model_name="tiny-llama",junk="{n}-{k}-{"x" * (1 << 20)}"}} 1'
                for k in range(7)]
        return web.Response(text=VLLM + TAIL + "\n".join(junk) + "\n")
    if mode == "series115000":
        return web.Response(text=cached(mode, lambda: VLLM + TAIL + "".join(
            f'vllm:num_requests_running{{engine="{i}",model_name="tiny-llama"}} 1\n' for i in range(115000))))
    if mode == "manymodels":
        fams = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_hits_total",
                "vllm:prefix_cache_queries_total"]
        return web.Response(text="".join(f"# TYPE {f} gauge\n" + "".join(
            f'{f}{{engine="0",model_name="model-{n}-{i}"}} {n}\n' for i in range(10000)) for f in fams))
    if mode == "router":
        if rest == "/metrics" and "model" not in req.query:
            return web.json_response({"error": {"message": "model name is missing"}}, status=400)
        if rest == "/models":
            return web.json_response({"data": [{"id": f"m{n}-{i}", "status": {"value": "loaded", "args": []}}
                                               for i in range(1000)]})
        if rest == "/metrics":
            return web.Response(text=LLAMA)
        if rest == "/props" and "model" in req.query:
            return web.Response(text='{"x":"' + "p" * 200_000 + '"}', content_type="application/json")
        return web.Response(text=PROPS, content_type="application/json")
    if mode in ("hugeslots", "hugewait"):
        if rest == "/metrics":
            text = LLAMA.replace("llamacpp:requests_processing 0", "llamacpp:requests_processing 1")
            if mode == "hugewait":
                text = text.replace("llamacpp:requests_deferred 0", "llamacpp:requests_deferred 1e308")
            return web.Response(text=text)
        if rest == "/slots":
            if mode == "hugewait":
                return web.json_response([{"id": 0, "id_task": n, "n_ctx": 4096, "is_processing": True}])
            one = ('{"id":%d,"id_task":1,"n_ctx":4096,"is_processing":true,"n_prompt_tokens":5,'
                   '"next_token":[{"n_decoded":1}]}')
            return web.Response(text=cached(mode, lambda: "[" + ",".join(one % i for i in range(70000)) + "]"),
                                content_type="application/json")
        return web.Response(text=PROPS, content_type="application/json")
    return web.Response(status=404)

app = web.Application()
app.router.add_route("*", "/{t:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

VLLM = ROOT / "tests" / "fixtures" / "vllm-real" / "v0.32.0-metrics-after-prefix.prom"
LC = ROOT / "tests" / "fixtures" / "llamacpp"


class Scenario:
    def __init__(
        self,
        name: str,
        what: str,
        bad: str | None = None,
        attack: Callable[[int], Callable[[], None]] | None = None,
        web_auth: bool = False,
        fd_soft_limit: int | None = None,
        big_exposition: bool = False,
    ):
        self.name, self.what, self.bad, self.attack = name, what, bad, attack
        self.web_auth, self.fd_soft_limit, self.big_exposition = web_auth, fd_soft_limit, big_exposition


# ---------------------------------------------------------------- client attacks (each returns a stopper)


def _loop_in_thread(body: Callable[[threading.Event], None]) -> Callable[[], None]:
    stop = threading.Event()
    thread = threading.Thread(target=body, args=(stop,), daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(10)

    return stopper


def wrong_passwords(port: int) -> Callable[[], None]:
    def body(stop: threading.Event) -> None:
        def worker(i: int) -> None:
            k = 0
            while not stop.is_set():
                k += 1
                auth = "Basic " + base64.b64encode(f"prom:wrong{i}-{k}".encode()).decode()
                with contextlib.suppress(Exception):
                    urllib.request.urlopen(
                        urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": auth}),
                        timeout=5,
                    )

        workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return _loop_in_thread(body)


def slow_readers(port: int) -> Callable[[], None]:
    socks = []
    for _ in range(40):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)

    def stopper() -> None:
        for sock in socks:
            sock.close()

    return stopper


def slowloris(port: int) -> Callable[[], None]:
    def body(stop: threading.Event) -> None:
        socks: list[socket.socket] = []
        while not stop.is_set():
            while len(socks) < 1100 and not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    socks.append(sock)
                except OSError:
                    break
            for sock in list(socks):
                try:
                    sock.sendall(b"X-a: b\r\n")
                except OSError:
                    socks.remove(sock)
                    sock.close()
            stop.wait(1.0)
        for sock in socks:
            sock.close()

    return _loop_in_thread(body)


def malformed(port: int) -> Callable[[], None]:
    def body(stop: threading.Event) -> None:
        while not stop.is_set():
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                        sock.sendall(b"GET * HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cHJvbTpzM2NyZXQ=\x01\r\n\r\n")
                        sock.recv(100)
                except OSError:
                    pass
            stop.wait(0.05)

    return _loop_in_thread(body)


def concurrent_scrapes(port: int) -> Callable[[], None]:
    def body(stop: threading.Event) -> None:
        def one() -> None:
            with contextlib.suppress(Exception):
                urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}),
                    timeout=20,
                ).read()

        while not stop.is_set():
            threads = [threading.Thread(target=one, daemon=True) for _ in range(200)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    return _loop_in_thread(body)


SCENARIOS = [
    Scenario("baseline", "ctl alone"),
    Scenario("H1 biglabels", "7 unique 1 MB label values per poll", bad="biglabels"),
    Scenario("H2 router churn", "router listing 1,000 fresh model ids per poll, 200 KB /props each", bad="router"),
    Scenario("M1 series115000", "115k series of one family (7.9 MB)", bad="series115000"),
    Scenario("M1 manymodels", "10,000 models x 7 families (3.5 MB)", bad="manymodels"),
    Scenario("M1 hugeslots", "70,000-slot /slots (7.3 MB)", bad="hugeslots"),
    Scenario("M9 hugewait", "requests_deferred 1e308", bad="hugewait"),
    Scenario("H3 wrong passwords", "8 clients, wrong passwords for a real user", attack=wrong_passwords, web_auth=True),
    Scenario(
        "baseline, 300 targets",
        "ctl and 300 pass-through targets, no attack: the H4 and M2 rows' baseline",
        big_exposition=True,
    ),
    Scenario(
        "H4 slow readers",
        "40 clients that ask and never read (300 more targets: ~10 MB exposition)",
        attack=slow_readers,
        big_exposition=True,
    ),
    Scenario("H5 slowloris", "1,100 half-sent heads, soft fd limit 1,024", attack=slowloris, fd_soft_limit=1024),
    Scenario("M7 malformed", "2,000 malformed requests a second", attack=malformed),
    Scenario(
        "M2 200 gzip scrapes",
        "200 concurrent gzip scrapes, again and again",
        attack=concurrent_scrapes,
        big_exposition=True,
    ),
]


def metric(body: str, name: str, **labels: str) -> float:
    total = 0.0
    family = name.removesuffix("_sum").removesuffix("_count").removesuffix("_total")
    for sample_labels, value in parse(body, (family,)).get(name):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


def run(scenario: Scenario, seconds: float, upstream: int, workdir: Path) -> dict[str, object]:
    port = free_port()
    bad = scenario.bad
    engine = "llamacpp" if bad in ("router", "hugeslots", "hugewait") else "vllm"
    config = workdir / f"{scenario.name.split()[0]}.yaml"
    text = (
        f"listen: 127.0.0.1:{port}\ntargets:\n"
        f"  - name: ctl\n    engine: vllm\n    url: http://127.0.0.1:{upstream}/good\n"
        f"    interval: 500ms\n    timeout: 500ms\n"
    )
    if scenario.big_exposition:  # 300 more vLLM targets with pass-through: a ~10 MB exposition
        text += "".join(
            f"  - {{name: big{i}, engine: vllm, url: 'http://127.0.0.1:{upstream}/good', interval: 5s, "
            f"timeout: 4s, passthrough: true}}\n"
            for i in range(300)
        )
    if bad:
        text += (
            f"  - name: bad\n    engine: {engine}\n    url: http://127.0.0.1:{upstream}/{bad}\n"
            f"    interval: 1s\n    timeout: 1s\n"
        )
    config.write_text(text)
    args = [sys.executable, "-m", "exporter", "--config", str(config)]
    headers: dict[str, str] = {}
    if scenario.web_auth:
        web = workdir / "web.yml"
        import bcrypt

        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(10)).decode()
        web.write_text(f"basic_auth_users: {{prom: '{hashed}'}}\n")
        args += ["--web.config.file", str(web)]
        headers["Authorization"] = "Basic " + base64.b64encode(b"prom:s3cret").decode()

    def limits() -> None:
        if scenario.fd_soft_limit:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (scenario.fd_soft_limit, hard))

    log = open(workdir / f"{scenario.name.split()[0]}.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(1.0)
        stopper = scenario.attack(port) if scenario.attack else None
        latencies: list[float] = []
        failures = 0
        started = time.monotonic()
        before = _scrape(port, headers)[1]
        polls0 = metric(before, "llm_exporter_polls_total", target="ctl")
        lag0 = metric(before, "llm_exporter_event_loop_lag_seconds_sum")
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            try:
                elapsed, _ = _scrape(port, headers)
                latencies.append(elapsed)
            except Exception:
                failures += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        elapsed_run = time.monotonic() - started
        if stopper is not None:
            stopper()
        after = ""
        for _ in range(5):
            try:
                after = _scrape(port, headers)[1]
                break
            except Exception:
                time.sleep(1)
        polls = metric(after, "llm_exporter_polls_total", target="ctl") - polls0
        lag = metric(after, "llm_exporter_event_loop_lag_seconds_sum") - lag0
        errors_ctl = metric(after, "llm_exporter_poll_errors_total", target="ctl")
        rss, hwm = proc_rss_bytes(proc.pid), proc_peak_rss_bytes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    log_bytes = (workdir / f"{scenario.name.split()[0]}.log").stat().st_size
    latencies.sort()
    return {
        "name": scenario.name,
        "what": scenario.what,
        "rss_mib": rss / 2**20,
        "hwm_mib": hwm / 2**20,
        "lag_s": lag,
        "seconds": elapsed_run,
        "ctl_polls": polls,
        "ctl_expected": elapsed_run / 0.5,
        "ctl_errors": errors_ctl,
        "scrape_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "scrape_max_ms": 1000 * latencies[-1] if latencies else None,
        "scrape_failures": failures,
        "log_kib": log_bytes / 1024,
    }


def _scrape(port: int, headers: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = resp.read().decode()
    return time.perf_counter() - start, body


def table(rows: list[dict[str, object]], seconds: float) -> str:
    lines = [
        "## Hostile: the reliability report's attacks (bench/hostile.py)",
        "",
        f"`.venv/bin/python bench/hostile.py --seconds {seconds:g} --write`: a fresh exporter per row, a control "
        "target `ctl` (vLLM 0.32 payload, 500 ms) beside each attack, a legitimate scraper once a second. "
        "The baseline row is measured in the same run.",
        "",
        "| attack | what | RSS / peak | peak ÷ its baseline | loop lag (s, sum) | ctl polls / schedule | "
        "ctl errors | scrape p50 / max | scrape failures | log |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    baselines = {r["name"]: r for r in rows if str(r["name"]).startswith("baseline")}
    worst = ("", 0.0)
    for r in rows:
        big = str(r["name"]).startswith(("H4", "M2"))
        base = baselines.get("baseline, 300 targets" if big else "baseline") or rows[0]
        growth = float(r["hwm_mib"]) / float(base["hwm_mib"])  # type: ignore[arg-type]
        if not str(r["name"]).startswith("baseline") and growth > worst[1]:
            worst = (str(r["name"]), growth)
        p50 = f"{r['scrape_p50_ms']:.0f} / {r['scrape_max_ms']:.0f} ms" if r["scrape_p50_ms"] is not None else "—"
        lines.append(
            f"| {r['name']} | {r['what']} | {r['rss_mib']:.0f} / {r['hwm_mib']:.0f} MiB | {growth:.2f}× | "
            f"{r['lag_s']:.2f} | {r['ctl_polls']:.0f} / {r['ctl_expected']:.0f} | {r['ctl_errors']:.0f} | "
            f"{p50} | {r['scrape_failures']} | {r['log_kib']:.0f} KiB |"
        )
    lines += [
        "",
        f"The largest peak against its own baseline is {worst[0]} at {worst[1]:.2f}×. "
        "At 404e8c1 the same attacks reached 1.8 GiB (H1), 2.5 GiB (H2) and 1.1 GiB (H4), and H3/H5 made "
        "/healthz or every scrape fail (shared/reviews/reliability-404e8c1.md).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--table-from", metavar="FILE", help="render the table from a run's stderr (JSON lines)")
    args = parser.parse_args()
    if args.table_from:  # re-render a run's rows (the JSON lines it printed on stderr)
        rows = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.startswith("{")]
        return _publish(table(rows, args.seconds), args.write)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = workdir / "hostile_server.py"
        server.write_text(HOSTILE_SERVER)
        upstream = free_port()
        srv = subprocess.Popen(
            [
                sys.executable,
                str(server),
                str(upstream),
                str(VLLM),
                str(LC / "b11434-metrics-idle-after-load.prom"),
                str(LC / "b11434-props.json"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            wait_http(f"http://127.0.0.1:{upstream}/good/health")
            rows = []
            for scenario in SCENARIOS:
                if args.only and scenario.name not in args.only and scenario.name != "baseline":
                    continue
                row = run(scenario, args.seconds, upstream, workdir)
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
        finally:
            srv.terminate()
            srv.wait(10)
    return _publish(table(rows, args.seconds), args.write)


def _publish(text: str, write: bool) -> int:
    print(text)
    if write:
        publish_section("hostile.md", "## Hostile: the reliability report's attacks (bench/hostile.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
