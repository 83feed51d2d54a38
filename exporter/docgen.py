"""Renders the generated parts of docs/metrics.md from the catalogue and the sources' mapping tables.

python -m exporter.docgen            # rewrite docs/metrics.md in place
python -m exporter.docgen --check    # exit 1 when docs/metrics.md is stale (used by the tests)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .catalogue import (
    DERIVED_METRICS,
    ENGINE_METRICS,
    EXPORTER_METRICS,
    GPU_METRICS,
    INFO_METRICS,
    LIFECYCLE_METRICS,
    TARGET_METRICS,
    MetricSpec,
    exposed_names,
)
from .sources.base import REGISTRY
from .sources.mapping import Feed
from .text import PROCESS_FAMILIES

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
BLOCK_RE = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+) -->\n).*?(<!-- END GENERATED -->)", re.S)


def _row(spec: MetricSpec, base_labels: str) -> str:
    labels = ", ".join(filter(None, [base_labels, ", ".join(spec.labels)]))
    names = " ".join(f"`{n}`" for n in exposed_names("llm", spec))
    kind = "gauge (info: value 1)" if spec.type == "info" else spec.type  # exposed as a gauge
    return f"| {names} | {kind} | {labels} | {spec.help} |"


def _table(specs: tuple[MetricSpec, ...], base_labels: str) -> str:
    head = "| metric | type | labels | meaning |\n|---|---|---|---|"
    return "\n".join([head, *(_row(spec, base_labels) for spec in specs)])


def _mapping_table(table: tuple[Feed, ...], model_label: str) -> str:
    rows = [
        f"| unified | upstream, most preferred first (chosen by presence) | versions | unit | combined per "
        f"{f'`{model_label}`' if model_label else 'model (one per target)'} by | required |",
        "|---|---|---|---|---|---|",
    ]
    for feed in table:
        for index, upstream in enumerate(feed.upstream):
            unit = {"help": "tokens or blocks, from HELP", "": ""}.get(upstream.unit, upstream.unit)
            how = "bucket-wise sum" if feed.kind == "histogram" else upstream.combine
            extra = f" (`{feed.label}` → `{feed.label_as or feed.label}`)" if feed.label else ""
            if feed.const_labels:
                extra = " (" + ", ".join(f'{k}="{v}"' for k, v in feed.const_labels) + ")"
            key = f"`{feed.key}`{extra}" if index == 0 else "↳ else"
            rows.append(
                f"| {key} | `{upstream.name}` ({feed.kind}) | {upstream.versions} | {unit} | {how} | "
                f"{'yes' if feed.required and index == 0 else ''} |"
            )
    return "\n".join(rows)


def blocks() -> dict[str, str]:
    return {
        "engine-metrics": _table(ENGINE_METRICS, "target, engine, model"),
        "derived-metrics": _table(DERIVED_METRICS, "target, engine, model"),
        "lifecycle-metrics": _table(LIFECYCLE_METRICS, "target, engine, model"),
        "target-metrics": _table(TARGET_METRICS, "target, engine"),
        "gpu-metrics": _table(GPU_METRICS, "target, engine"),
        "info-metrics": _table(INFO_METRICS, "target, engine"),
        "exporter-metrics": _table(EXPORTER_METRICS, ""),
        "engine-list": _engine_list(),
        "process-metrics": "\n".join(
            ["| metric | type | labels | meaning |", "|---|---|---|---|"]
            + [f"| `{name}` | {kind} |  | {help_text} |" for name, kind, help_text in PROCESS_FAMILIES]
        ),
        "engine-mappings": _engine_sections(),
    }


def _engine_list() -> str:
    """One row per registered engine: its `engine:` value and what it needs."""
    rows = ["| `engine:` | engine | polls | auto-detected by |", "|---|---|---|---|"]
    for engine, source in sorted(REGISTRY.items()):
        polls = "HTTP (`url`)" if source.needs_url else "local (no `url`)"
        hints = [
            f"`{source.metrics_prefix}` families" if source.metrics_prefix else "",
            f"`{source.detect_probe[0]}` answering `{source.detect_probe[1]}`" if source.detect_probe else "",
        ]
        rows.append(f"| `{engine}` | {source.title or engine} | {polls} | {', '.join(h for h in hints if h) or '—'} |")
    return "\n".join(rows)


def _engine_sections() -> str:
    """For every registered engine that is polled over HTTP: its mapping table (when it has one; an engine
    without /metrics, like Ollama, has none) and its own notes (the source's `docs`)."""
    parts = []
    for engine, source in sorted(REGISTRY.items()):
        if not source.mapping and not (source.needs_url and source.docs):
            continue
        parts += [f"### {source.title or engine} (`engine: {engine}`)", ""]
        if source.mapping:
            parts += [_mapping_table(source.mapping, source.model_label), ""]
        if source.docs:
            parts += [source.docs, ""]
    return "\n".join(parts).rstrip("\n")


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
