"""Renders the generated parts of docs/metrics.md from the catalogue and the sources' mapping tables.

    python -m exporter.docgen            # rewrite docs/metrics.md in place
    python -m exporter.docgen --check    # exit 1 when docs/metrics.md is stale (used by the tests)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .catalogue import (DERIVED_METRICS, ENGINE_METRICS, EXPORTER_METRICS, GPU_METRICS, INFO_METRICS,
                        TARGET_METRICS, MetricSpec, exposed_names)
from .sources import vllm

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
BLOCK_RE = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+) -->\n).*?(<!-- END GENERATED -->)", re.S)


def _row(spec: MetricSpec, base_labels: str) -> str:
    labels = ", ".join(filter(None, [base_labels, ", ".join(spec.labels)]))
    names = " ".join(f"`{n}`" for n in exposed_names("llm", spec))
    return f"| {names} | {spec.type} | {labels} | {spec.help} |"


def _table(specs: tuple[MetricSpec, ...], base_labels: str) -> str:
    head = "| metric | type | labels | meaning |\n|---|---|---|---|"
    return "\n".join([head, *(_row(spec, base_labels) for spec in specs)])


def _vllm_mapping() -> str:
    rows = ["| unified key | vLLM families, most preferred first (chosen by presence) | combined over `engine` by |",
            "|---|---|---|"]
    for table, how in ((vllm.GAUGES, "sum"), (vllm.COUNTERS, "sum"), (vllm.MEAN_GAUGES, "mean")):
        for key, families in table.items():
            rows.append(f"| `{key}` | {', '.join(f'`{f}`' for f in families)} | {how} |")
    for key, families in vllm.HISTOGRAMS.items():
        rows.append(f"| `{key}` | {', '.join(f'`{f}` (histogram)' for f in families)} | bucket-wise sum |")
    for hits, queries, unit in vllm.PREFIX_CACHE:
        unit_text = unit or "read from HELP: blocks before 0.9.0, tokens after; nothing when it says neither"
        rows.append(f"| `kv_cache_hit_*` / `kv_cache_query_*` | `{hits}` / `{queries}` (unit: {unit_text}) | sum |")
    rows.append(f"| `kv_cache_lifetime_hit_ratio` | `{vllm.LIFETIME_HIT_RATE}` (V0; −1 = disabled → nothing) | mean |")
    rows.append(f"| `requests_finished{{reason}}` | `{vllm.FINISHED}` by `finished_reason` | sum |")
    rows.append(f"| `kv_cache_config_info` | `vllm:cache_config_info` keys {', '.join(vllm.CACHE_CONFIG_KEYS)} | first |")
    return "\n".join(rows)


def blocks() -> dict[str, str]:
    return {
        "engine-metrics": _table(ENGINE_METRICS, "target, engine, model"),
        "derived-metrics": _table(DERIVED_METRICS, "target, engine, model"),
        "target-metrics": _table(TARGET_METRICS, "target, engine"),
        "gpu-metrics": _table(GPU_METRICS, "target, engine"),
        "info-metrics": _table(INFO_METRICS, "target, engine"),
        "exporter-metrics": _table(EXPORTER_METRICS, ""),
        "vllm-mapping": _vllm_mapping(),
    }


def render(text: str) -> str:
    generated = blocks()

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in generated:
            raise KeyError(f"docs/metrics.md has an unknown generated block {name!r}")
        return f"{match.group(1)}{generated[name]}\n{match.group(3)}"

    return BLOCK_RE.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("docs/metrics.md is stale: run `python -m exporter.docgen`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
