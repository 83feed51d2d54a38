"""What one poll costs against its floor, and where the rest goes.

    .venv/bin/python bench/pollcost.py [--seconds 60] [--targets 20] [--tree DIR] [--profile]

The floor is the work a poll cannot avoid: a bare aiohttp client doing the same two GETs (/health,
/metrics) and reading the bodies, plus the project's parse of the same payload — run as its own
process, with the same targets, interval and duration as the exporter, on the same replay server.
The exporter is the real `python -m exporter` process polling 20 vLLM targets at 1 s (the real 52 KiB
vLLM 0.32 payload) and scraped every 15 s. Both CPU figures come from /proc. --profile runs the exporter
under cProfile and splits its time per stage. --tree runs the exporter of another checkout (a git
worktree of an older commit: the "before" column).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import FIXTURES, Replay, free_port, polls_total, proc_cpu_seconds, scrape, wait_http  # noqa: E402

PAYLOAD = FIXTURES / "v0.32.0-metrics-after-load.prom"
SCRAPE_EVERY = 15.0
# Stage → the function whose cumulative time is that stage (file, function name).
STAGES = (
    ("fetch (HTTP, bodies read)", "sources/base.py", "get"),
    ("parse", "promparse.py", "parse"),
    ("mapping", "sources/mapping.py", "apply"),
    ("state and derivations", "state.py", "record_success"),
    ("text rendering", "text.py", "_target_lines"),
)


async def _floor(url: str, targets: int, seconds: float, paced: bool = True) -> dict[str, float]:
    """The floor process: per target, once a second (paced) or back to back (not paced: the issue's
    "bare client" floor, without the cost of waking up on a schedule), GET /health and /metrics, read,
    parse."""
    import aiohttp

    from exporter.promparse import LabelCache, parse
    from exporter.sources.vllm import METRICS_PREFIXES

    cache = LabelCache()
    polls = 0
    end = time.monotonic() + seconds

    async def target(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal polls
        next_at = time.monotonic() + i / targets
        while next_at < end:
            if paced:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            async with session.get(f"{url}/t/{i}/health") as resp:
                await resp.read()
            async with session.get(f"{url}/t/{i}/metrics") as resp:
                body = await resp.read()
            parse(body.decode("utf-8"), METRICS_PREFIXES, cache)
            polls += 1
            next_at += 1.0 if paced else seconds / 1000

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(target(i, session) for i in range(targets)))
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return {"cpu_s": cpu, "polls": polls}


def floor_run(replay: Replay, targets: int, seconds: float, paced: bool = True) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--floor-child",
            f"http://127.0.0.1:{replay.port}",
            str(targets),
            str(seconds),
            "paced" if paced else "tight",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["ms_per_poll"] = 1e3 * result["cpu_s"] / max(result["polls"], 1)
    return result


def exporter_run(
    tree: Path, replay: Replay, targets: int, seconds: float, profile: bool, tmp: Path
) -> dict[str, object]:
    port = free_port()
    config = tmp / f"pollcost-{port}.yaml"
    lines = [f"listen: 127.0.0.1:{port}", "targets:"]
    lines += [
        f"  - {{name: t{i:03d}, engine: vllm, url: 'http://127.0.0.1:{replay.port}/t/{i}', interval: 1s}}"
        for i in range(targets)
    ]
    config.write_text("\n".join(lines) + "\n")
    prof = tmp / f"pollcost-{port}.prof"
    cmd = [
        sys.executable,
        *(["-m", "cProfile", "-o", str(prof)] if profile else []),
        "-m",
        "exporter",
        "--config",
        str(config),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(3)
        _, body = scrape(url)
        polls0, cpu0, t0 = sum(polls_total(body).values()), proc_cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(SCRAPE_EVERY, max(0.0, seconds - (time.monotonic() - t0))))
            _, body = scrape(url)
        cpu = proc_cpu_seconds(proc.pid) - cpu0
        polls = sum(polls_total(body).values()) - polls0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    result: dict[str, object] = {"cpu_s": cpu, "polls": polls, "ms_per_poll": 1e3 * cpu / max(polls, 1)}
    if profile:
        result["stages"] = stages(prof, polls0 + polls)
    return result


def stages(prof: Path, polls: float) -> dict[str, float]:
    """ms per poll spent in each stage (cumulative time of its function, under cProfile)."""
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    total = 0.0
    for name, path, function in STAGES:
        cum = sum(entry[3] for (file, _, func), entry in stats.items() if file.endswith(path) and func == function)
        out[name] = 1e3 * cum / max(polls, 1)
        total += out[name]
    poll = sum(
        entry[3]
        for (file, _, func), entry in stats.items()
        if re.search(r"exporter/poller\.py$", file) and func == "_poll"
    )
    render_in_poll = sum(
        entry[3] for (file, _, func), entry in stats.items() if file.endswith("text.py") and func == "refresh"
    )
    out["poll, all of it (under cProfile)"] = 1e3 * (poll + render_in_poll) / max(polls, 1)
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The per-stage profile, before and after, as a markdown section."""
    lines = [
        "## Where a poll's time goes, before and after (bench/pollcost.py --profile)",
        "",
        "20 vLLM targets at 1 s, 60 s, scraped every 15 s; ms of CPU per poll under cProfile (which "
        "inflates every figure alike: read the shares). Before: main at 357d40c (this round's start); "
        "after: this commit.",
        "",
        "| stage | before | after |",
        "|---|---|---|",
    ]
    for stage in before["profile"]:
        lines.append(f"| {stage} | {before['profile'][stage]:.2f} ms | {after['profile'][stage]:.2f} ms |")
    for name, key in (("CPU per poll, without cProfile", "ms_per_poll"),):
        lines.append(f"| **{name}** | **{before['exporter'][key]:.2f} ms** | **{after['exporter'][key]:.2f} ms** |")
    lines.append(
        f"| ÷ the back-to-back floor | {before['ratio_back_to_back']:.2f}× | {after['ratio_back_to_back']:.2f}× |"
    )
    lines.append(f"| ÷ the paced floor | {before['ratio']:.2f}× | {after['ratio']:.2f}× |")
    lines += [
        "",
        "What was cut, as the profile showed it: text rendering after every poll (now only before an "
        "expected scrape: polls more frequent than scrapes render only what a scrape reads; label "
        "prefixes and numbers are memoised), the histogram mapping (bucket bounds checked by counting, "
        "`le` parsed once per distinct value), the retry wrapper (tenacity only after a transient "
        "failure), and prometheus_client on the text path (the exporter formats its own numbers and "
        "process_* metrics). Fetch and parse are the floor itself.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--floor-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE.json", "AFTER.json"),
        help="write bench/poll-profile.md from two --profile runs (before and after)",
    )
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(path).read_text()) for path in args.compare)
        (ROOT / "bench" / "poll-profile.md").write_text(compare(before, after))
        return 0
    if args.floor_child:
        url, targets, seconds, mode = args.floor_child
        print(json.dumps(asyncio.run(_floor(url, int(targets), float(seconds), mode == "paced"))))
        return 0
    print(json.dumps(measure(args.tree, args.targets, args.seconds, args.profile), indent=1))
    return 0


def measure(tree: Path, targets: int, seconds: float, profile: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        replay = Replay(PAYLOAD, Path(tmp))
        try:
            floor = floor_run(replay, targets, seconds)
            tight = floor_run(replay, 1, seconds / 4, paced=False)
            exporter = exporter_run(tree, replay, targets, seconds, False, Path(tmp))
            per_poll = float(exporter["ms_per_poll"])  # type: ignore[arg-type]
            result: dict[str, object] = {
                "floor": floor,
                "floor_back_to_back": tight,
                "exporter": exporter,
                "ratio": per_poll / floor["ms_per_poll"],
                "ratio_back_to_back": per_poll / tight["ms_per_poll"],
            }
            if profile:
                result["profile"] = exporter_run(tree, replay, targets, seconds, True, Path(tmp))["stages"]
        finally:
            replay.stop()
    return result


if __name__ == "__main__":
    sys.exit(main())
