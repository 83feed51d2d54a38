"""Optional raw pass-through (`passthrough: true` on a target): the engine's own families re-exposed
under the namespace with colons replaced (`vllm:num_requests_running` → `llm_vllm_num_requests_running`),
with the target's labels added, for users who want one scrape per pod. Sources turn the payload's text
into families here (in a worker thread when it is large); samples.py's one sample stream exposes them (text format
and OpenMetrics alike).

Upstream labels that collide with the exporter's (`target`, `engine`, configured labels) are kept as
`exported_<name>`, as Prometheus does with honor_labels: false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .promparse import family_of, parse

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}
MAX_LABEL_VALUE = 200  # characters, as the unified `model` label; a longer value drops the series (counted)


@dataclass(frozen=True)
class RawFamily:
    name: str  # sanitised family name, without namespace
    kind: str
    help: str
    samples: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]  # (sanitised sample name, labels, value)


def sanitise(name: str) -> str:
    return _INVALID.sub("_", name)


def families(text: str, prefix: str, reserved: frozenset[str], max_series: int) -> tuple[list[RawFamily], int]:
    """The engine's own families in a payload (those named with its `prefix`: `vllm:`, not the process_*,
    python_gc_* or http_* families of the client library it uses), ready to re-expose; and how many series
    were dropped by the cap. `*_created` samples (when a counter or histogram was created) are left out:
    re-exposed they would be gauge families of their own, which OpenMetrics forbids beside their parent.
    Raises PromParseError on a payload that does not parse (the source reports it)."""
    payload = parse(text, (prefix,) if prefix else None)
    grouped: dict[str, list[tuple[str, tuple[tuple[str, str], ...], float]]] = {}
    budget, dropped = max_series, 0
    for name, samples in payload.samples.items():
        if name.endswith("_created"):
            continue
        family = family_of(name, payload.types)
        for labels, value in samples:
            if budget <= 0 or any(len(v) > MAX_LABEL_VALUE for v in labels.values()):
                dropped += 1  # over the cap, or a label value longer than the unified labels may be
                continue
            budget -= 1
            pairs = tuple((f"exported_{k}" if k in reserved else k, v) for k, v in labels.items())
            grouped.setdefault(family, []).append((sanitise(name), pairs, value))
    out = []
    for family, kept in grouped.items():
        kind = payload.types.get(family, "untyped")
        out.append(
            RawFamily(
                sanitise(family), kind if kind in KINDS else "untyped", payload.helps.get(family, ""), tuple(kept)
            )
        )
    return out, dropped
