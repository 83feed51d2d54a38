"""Regression check between two checkouts: the same live runs of bench/run.py, interleaved, on this host.

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/compare.py /tmp/base --rounds 2 --write    # writes bench/refactor-check.md

Each round runs scale-1000 (1,000 replayed vLLM targets at 5 s), sidecar-10Hz and sidecar-5s for the base
checkout, then for this one; interleaving spreads the host's drift over both. The table shows the median
of the rounds for each, and the ratio now / base (1.00 = unchanged; CPU and memory lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402

RUNS = {"scale-1000": (1000, "5s", 150.0), "sidecar-10Hz": (1, "100ms", 75.0), "sidecar-5s": (1, "5s", 75.0)}
FIGURES = (  # (key, heading, format)
    ("cpu_pct", "CPU % of a core", "{:.2f}"),
    ("cpu_ms_per_poll", "CPU ms per poll", "{:.3f}"),
    ("hwm_mib", "peak RSS MiB", "{:.1f}"),
    ("scrape_p99_ms", "/metrics p99 ms", "{:.1f}"),
    ("render_p99_ms", "render p99 ms", "{:.2f}"),
)


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path, help="a checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 s runs (a smoke check, not a figure)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    trees = {"base": args.base, "now": ROOT}
    figures: dict[str, dict[str, list[dict]]] = {side: {name: [] for name in RUNS} for side in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for side, tree in trees.items():
                for name, (targets, interval, seconds) in RUNS.items():
                    print(f"round {round_ + 1}: {side} {name} ...", file=sys.stderr)
                    span = 20.0 if args.quick else seconds
                    figures[side][name].append(run.live_run(Path(tmp), targets, interval, span, tree=tree))
    lines = [
        f"## Regression check: {commit(ROOT)} against {commit(args.base)} (same host, interleaved)",
        "",
        f"`bench/compare.py <checkout of {commit(args.base)}> --rounds {args.rounds}`: the median of {args.rounds} "
        "interleaved rounds per checkout; ratio = now / base.",
        "",
        "| run | " + " | ".join(heading for _, heading, _ in FIGURES) + " |",
        "|---|" + "---|" * len(FIGURES),
    ]
    for name in RUNS:
        cells = []
        for key, _, fmt in FIGURES:
            base = statistics.median(r[key] for r in figures["base"][name])
            now = statistics.median(r[key] for r in figures["now"][name])
            ratio = f"{now / base:.2f}×" if base else "n/a"
            cells.append(f"{fmt.format(base)} → {fmt.format(now)} ({ratio})")
        schedule = min(r["on_schedule"] for side in figures for r in figures[side][name])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if schedule < 1.0:
            lines.append(f"| {name}: polls on schedule | {100 * schedule:.0f} % of targets (worst round) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        (ROOT / "bench" / "refactor-check.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
