"""Soak: 200 replayed vLLM targets, a fifth of them flapping, hanging, answering garbage or 503, for a
bounded time. Samples the exporter every 10 s and checks that nothing drifts.

    .venv/bin/python bench/soak.py --minutes 30 --write     # writes bench/SOAK.md

Pass criteria (after a 5-minute warm-up): RSS drift < 5 %; asyncio task count and open file
descriptors constant; every healthy target polled on schedule (≥ 95 % of its expected polls).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import free_port, machine, proc_cpu_seconds, proc_rss_bytes, scrape, wait_http  # noqa: E402

from exporter.promparse import parse  # noqa: E402

PAYLOAD = ROOT / "tests" / "fixtures" / "vllm-real" / "v0.32.0-metrics-after-load.prom"
KINDS = ("flap", "hang", "garbage", "err")  # one in five targets is one of these


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", default="5s")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    warmup = min(300.0, args.minutes * 60 / 6)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        garbage = tmpdir / "garbage.bin"
        garbage.write_bytes(bytes(range(256)) * 64)
        spec = {
            "/health": {"status": 200},
            "/metrics": {"file": str(PAYLOAD)},
            "/flap/health": {"status": 200},
            "/flap/metrics": {"file": str(PAYLOAD), "fault": "flap"},
            "/hang/health": {"status": 200},
            "/hang/metrics": {"status": 200, "fault": "hang"},
            "/garbage/health": {"status": 200},
            "/garbage/metrics": {"file": str(garbage)},
            "/err/health": {"status": 200},
            "/err/metrics": {"status": 503},
        }
        (tmpdir / "spec.json").write_text(json.dumps(spec))
        replay_port, port = free_port(), free_port()
        replay = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "support" / "replay.py"),
                "--port",
                str(replay_port),
                "--spec",
                str(tmpdir / "spec.json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"http://127.0.0.1:{replay_port}/health")
        lines = [f"listen: 127.0.0.1:{port}", f"defaults: {{interval: {args.interval}, timeout: 2s}}", "targets:"]
        healthy = []
        for i in range(args.targets):
            kind = KINDS[(i // 5) % len(KINDS)] if i % 5 == 4 else None
            url = f"http://127.0.0.1:{replay_port}/t/{i}" + (f"/{kind}" if kind else "")
            lines.append(f"  - {{name: t{i:03d}, engine: vllm, url: '{url}'}}")
            if kind is None:
                healthy.append(f"t{i:03d}")
        (tmpdir / "config.yaml").write_text("\n".join(lines) + "\n")
        log = open(tmpdir / "exporter.log", "w")
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(tmpdir / "config.yaml")],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url)
        samples = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60:
                _, body = scrape(url)
                payload = parse(body, ("llm_exporter_asyncio_tasks", "process_open_fds", "llm_exporter_polls_total"))
                polls = {lab["target"]: v for lab, v in payload.get("llm_exporter_polls_total")}
                samples.append(
                    {
                        "t": time.monotonic() - started,
                        "rss": proc_rss_bytes(exporter.pid),
                        "cpu": proc_cpu_seconds(exporter.pid),
                        "tasks": payload.get("llm_exporter_asyncio_tasks")[0][1],
                        "fds": payload.get("process_open_fds")[0][1],
                        "polls": {t: polls.get(t, 0) for t in healthy},
                    }
                )
                time.sleep(10)
        finally:
            exporter.terminate()
            exporter.wait(10)
            replay.terminate()
            replay.wait(10)
        log_lines = (tmpdir / "exporter.log").read_text().splitlines()
    steady = [s for s in samples if s["t"] >= warmup]
    first, last = steady[0], steady[-1]
    rss_drift = (last["rss"] - first["rss"]) / first["rss"]
    interval = float(args.interval.rstrip("s"))
    expected = (last["t"] - first["t"]) / interval
    per_target = [last["polls"][t] - first["polls"][t] for t in healthy]
    on_schedule = sum(1 for n in per_target if n >= 0.95 * expected) / len(per_target)
    checks = [
        (
            "RSS drift after warm-up < 5 %",
            abs(rss_drift) < 0.05,
            f"{100 * rss_drift:+.2f} % ({first['rss'] / 2**20:.1f} → {last['rss'] / 2**20:.1f} MiB)",
        ),
        (
            "asyncio tasks constant",
            len({s["tasks"] for s in steady}) == 1,
            f"{min(s['tasks'] for s in steady):.0f}–{max(s['tasks'] for s in steady):.0f}",
        ),
        (
            "open fds constant",
            max(s["fds"] for s in steady) - min(s["fds"] for s in steady) <= 2,
            f"{min(s['fds'] for s in steady):.0f}–{max(s['fds'] for s in steady):.0f}",
        ),
        (
            "healthy polls on schedule",
            on_schedule >= 1.0,
            f"{100 * on_schedule:.0f} % of {len(healthy)} healthy targets got ≥ 95 % of {expected:.0f} expected polls "
            f"(min {min(per_target):.0f})",
        ),
    ]
    cpu = (last["cpu"] - first["cpu"]) / (last["t"] - first["t"])
    out = [
        "# Soak",
        "",
        f"Machine: {machine()}.  ",
        f"Command: `.venv/bin/python bench/soak.py --minutes {args.minutes:g} --write` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"{args.targets} replayed vLLM 0.32 targets at {args.interval}; one in five misbehaves "
        f"({', '.join(KINDS)} in turn). Warm-up {warmup:.0f} s, then {last['t'] - first['t']:.0f} s measured. "
        f"Exporter CPU {100 * cpu:.1f} % of a core; {len(log_lines)} log lines in all.",
        "",
        "| check | result | measured |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {'pass' if ok else 'FAIL'} | {text} |" for name, ok, text in checks]
    out += ["", "| minute | RSS (MiB) | asyncio tasks | open fds |", "|---|---|---|---|"]
    for sample in samples[::6]:
        out.append(
            f"| {sample['t'] / 60:.1f} | {sample['rss'] / 2**20:.1f} | {sample['tasks']:.0f} | {sample['fds']:.0f} |"
        )
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        (ROOT / "bench" / "SOAK.md").write_text(text)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
