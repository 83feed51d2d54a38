"""A fast parser for the Prometheus text format that inference engines emit.

Covers text format 0.0.4 and the OpenMetrics subset that prometheus_client
produces: HELP/TYPE comments, escaped label values, +Inf/-Inf/NaN, exponents,
`_created` series, blank lines, other comments, a missing trailing newline and
optional timestamps. It yields the same samples as `prometheus_client.parser`
(tests/unit/test_promparse_differential.py checks that on every fixture and on
generated payloads) and raises only `PromParseError` on malformed input.

Speed comes from three things: lines whose name does not start with a wanted
prefix are skipped before any parsing; the label block of a line is parsed once
and cached by its exact text (engines repeat the same label strings on every
poll); and the common case is handled with C-level string methods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

Labels = Mapping[str, str]
EMPTY_LABELS: Labels = MappingProxyType({})

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_PAIR_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\Z)', re.S)
_ESCAPE_RE = re.compile(r'\\[\\n"]')
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
_SUMMARY_SUFFIXES = ("_count", "_sum", "")


class PromParseError(ValueError):
    """The payload is not valid Prometheus text format."""

    def __init__(self, line_no: int, message: str, line: str = ""):
        snippet = line if len(line) <= 120 else line[:117] + "..."
        super().__init__(f"line {line_no}: {message}" + (f": {snippet!r}" if snippet else ""))
        self.line_no = line_no


@dataclass
class Payload:
    """Samples by sample name, in payload order, plus each family's declared TYPE."""

    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    timestamps: dict[tuple[str, int], float] = field(default_factory=dict)

    def get(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])

    def has(self, name: str) -> bool:
        return name in self.samples

    def series_count(self) -> int:
        return sum(len(v) for v in self.samples.values())


class LabelCache:
    """Label-block text → parsed labels; bounded so a hostile target cannot grow it forever."""

    def __init__(self, max_entries: int = 20_000):
        self.entries: dict[str, Labels] = {}
        self.max_entries = max_entries

    def parse(self, text: str, line_no: int, line: str) -> Labels:
        labels = self.entries.get(text)
        if labels is None:
            labels = _parse_labels(text, line_no, line)
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[text] = labels
        return labels


def _parse_labels(text: str, line_no: int, line: str) -> Labels:
    if not text.strip():
        return EMPTY_LABELS
    out: dict[str, str] = {}
    pos, end = 0, len(text)
    while pos < end:
        match = _LABEL_PAIR_RE.match(text, pos)
        if match is None:
            raise PromParseError(line_no, "invalid label set", line)
        name, value, comma = match.group(1), match.group(2), match.group(3)
        if name in out:
            raise PromParseError(line_no, f"duplicate label {name!r}", line)
        if "\\" in value:
            value = _unescape(value, line_no, line)
        out[name] = value
        pos = match.end()
        if not comma:
            break
    if pos < end and text[pos:].strip():
        raise PromParseError(line_no, "invalid label set", line)
    if "__name__" in out:
        raise PromParseError(line_no, "__name__ inside labels is not supported", line)
    return MappingProxyType(out)


def _unescape(value: str, line_no: int, line: str) -> str:
    # Reject a lone backslash before anything but \\, \n, \" the way the Go parser does,
    # while keeping prometheus_client's result for valid escapes.
    rest = _ESCAPE_RE.sub("", value)
    if "\\" in rest:
        raise PromParseError(line_no, "invalid escape in label value", line)
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value)


def _parse_number(text: str, line_no: int, line: str) -> float:
    if "_" in text:
        raise PromParseError(line_no, f"invalid number {text!r}", line)
    try:
        return float(text)
    except ValueError:
        raise PromParseError(line_no, f"invalid number {text!r}", line) from None


def parse(text: str, prefixes: tuple[str, ...] | None = None,
          label_cache: LabelCache | None = None) -> Payload:
    """Parse a /metrics payload.

    prefixes: keep only samples whose name starts with one of these (HELP/TYPE of
    other families are skipped too). None keeps everything.
    label_cache: reuse parsed label blocks across polls of one target.
    """
    if label_cache is None:
        label_cache = LabelCache()
    payload = Payload()
    samples = payload.samples
    types = payload.types
    counter_families: set[str] = set()
    parse_labels = label_cache.parse
    keep_all = prefixes is None
    for line_no, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            if line.startswith("# HELP "):
                parts = line.split(None, 3)
                if len(parts) >= 3 and (keep_all or parts[2].startswith(prefixes)):  # type: ignore[arg-type]
                    payload.helps[parts[2]] = parts[3] if len(parts) == 4 else ""
            elif line.startswith("# TYPE ") or line.startswith("#\tTYPE"):
                parts = line.split(None, 3)
                if len(parts) < 4:
                    raise PromParseError(line_no, "TYPE line without a type", raw)
                family, kind = parts[2], parts[3].strip()
                if not keep_all and not family.startswith(prefixes):  # type: ignore[arg-type]
                    continue
                if not _METRIC_NAME_RE.match(family):
                    raise PromParseError(line_no, f"invalid metric name {family!r}", raw)
                types[family] = kind
                if kind == "counter" and not family.endswith("_total"):
                    counter_families.add(family)
            continue
        if not keep_all and not line.startswith(prefixes):  # type: ignore[arg-type]
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            if close < brace:
                raise PromParseError(line_no, "unterminated label set", raw)
            name = line[:brace].rstrip()
            labels = parse_labels(line[brace + 1:close], line_no, raw)
            rest = line[close + 1:]
            if rest and rest[0] not in " \t":
                raise PromParseError(line_no, "missing space after labels", raw)
            fields = rest.split()
        else:
            fields = line.split()
            name = fields.pop(0)
            labels = EMPTY_LABELS
        if not _METRIC_NAME_RE.match(name):
            raise PromParseError(line_no, f"invalid metric name {name!r}", raw)
        if not fields or len(fields) > 2:
            raise PromParseError(line_no, "expected a value and an optional timestamp", raw)
        value = _parse_number(fields[0], line_no, raw)
        if name in counter_families:
            name += "_total"  # prometheus_client's convention for counters named without _total
        bucket = samples.get(name)
        if bucket is None:
            bucket = samples[name] = []
        if len(fields) == 2:
            payload.timestamps[(name, len(bucket))] = _parse_number(fields[1], line_no, raw) / 1000.0
        bucket.append((labels, value))
    return payload


def family_of(sample_name: str, types: Mapping[str, str]) -> str:
    """The family a sample name belongs to, given the TYPE declarations."""
    if sample_name in types:
        return sample_name
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in types:
            return sample_name[: -len(suffix)]
    return sample_name
