"""A fast parser for the Prometheus text format that inference engines emit.

Covers text format 0.0.4 and the OpenMetrics subset that prometheus_client
produces: HELP/TYPE comments, escaped label values, +Inf/-Inf/NaN, exponents,
`_created` series, blank lines, other comments, a missing trailing newline and
optional timestamps. It yields the same samples as `prometheus_client.parser`
(tests/unit/test_promparse.py checks that on every fixture and on
generated payloads) and raises only `PromParseError` on malformed input.

Speed comes from three things: lines whose name does not start with a wanted
prefix are skipped before any parsing; the label block of a line is parsed once
and cached by its exact text (engines repeat the same label strings on every
poll); and the common case is handled with C-level string methods.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

Labels = Mapping[str, str]
EMPTY_LABELS: Labels = MappingProxyType({})

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_PAIR_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\Z)', re.S)
_ESCAPE_RE = re.compile(r'\\[\\n"]')
_FAMILY_COMMENTS = ("# HELP ", "# TYPE ")
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
MAX_LABEL_BLOCK = 16 * 1024  # characters between { and } of one sample: engines' are well under 1 KiB


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
    dropped: int = 0  # sample lines past `max_samples`, not parsed

    def get(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])

    def has(self, name: str) -> bool:
        return name in self.samples

    def series_count(self) -> int:
        return sum(len(v) for v in self.samples.values())


class LabelCache:
    """Label-block text → parsed labels, bounded in entries and in bytes so a hostile target cannot grow it
    (unique 1 MB label values every poll once grew it by 15 MiB a poll): a block longer than
    MAX_CACHED_BLOCK is parsed and not kept, and the cache starts over when it holds `max_bytes`."""

    MAX_CACHED_BLOCK = 512  # characters; engines' real label blocks are well under this
    MAX_NAMES = 20_000  # sample names remembered as wanted or not, per prefix set

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 8 * 1024 * 1024):
        self.entries: dict[str, Labels] = {}
        self.wanted: dict[str, bool] = {}  # sample name → valid and kept (no prefix filter)
        self._wanted_by_prefixes: dict[tuple[str, ...], dict[str, bool]] = {}
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # an estimate of what an entry holds: the key, the parsed strings, a small dict

    def wanted_for(self, prefixes: tuple[str, ...]) -> dict[str, bool]:
        table = self._wanted_by_prefixes.get(prefixes)
        if table is None:
            if len(self._wanted_by_prefixes) > 8:
                self._wanted_by_prefixes.clear()
            table = self._wanted_by_prefixes[prefixes] = {}
        return table

    def parse(self, block: str, text: str, line: str) -> Labels:
        labels = _parse_labels(block, text, line)
        if len(block) > self.MAX_CACHED_BLOCK:
            return labels
        cost = 3 * len(block) + 400
        if len(self.entries) >= self.max_entries or self.bytes + cost > self.max_bytes:
            self.entries.clear()
            self.bytes = 0
        self.entries[block] = labels
        self.bytes += cost
        return labels


def _parse_labels(block: str, text: str, line: str) -> Labels:
    if not block.strip():
        return EMPTY_LABELS
    out: dict[str, str] = {}
    pos, end = 0, len(block)
    while pos < end:
        match = _LABEL_PAIR_RE.match(block, pos)
        if match is None:
            raise _error(text, line, "invalid label set")
        name, value, comma = match.group(1), match.group(2), match.group(3)
        if name in out:
            raise _error(text, line, f"duplicate label {name!r}")
        if "\\" in value:
            value = _unescape(value, text, line)
        out[name] = value
        pos = match.end()
        if not comma:
            break
    if pos < end and block[pos:].strip():
        raise _error(text, line, "invalid label set")
    if "__name__" in out:
        raise _error(text, line, "__name__ inside labels is not supported")
    return MappingProxyType(out)


def _unescape(value: str, text: str, line: str) -> str:
    # Reject a lone backslash before anything but \\, \n, \" the way the Go parser does,
    # while keeping prometheus_client's result for valid escapes.
    rest = _ESCAPE_RE.sub("", value)
    if "\\" in rest:
        raise _error(text, line, "invalid escape in label value")
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value)


def _wanted_blocks(text: str, prefixes: tuple[str, ...]) -> list[str]:
    """Lines of the family blocks a source wants. A block runs from a HELP/TYPE comment to the
    next comment line (the text format puts a family's samples there); unwanted blocks are jumped
    over with one str.find each, so big histograms a source does not use cost next to nothing.
    Lines of wanted blocks are still checked one by one in parse()."""
    lines: list[str] = []
    pos, size = 0, len(text)
    find, startswith = text.find, text.startswith
    while pos < size:
        if startswith(_FAMILY_COMMENTS, pos) and not startswith(prefixes, pos + 7):
            following = find("\n#", pos)
            # a HELP line is usually followed by the same family's TYPE line: skip both at once
            if following >= 0 and startswith("# TYPE ", following + 1) and not startswith(prefixes, following + 8):
                following = find("\n#", following + 1)
            pos = size if following < 0 else following + 1
            continue
        following = find("\n#", pos + 1)
        block_end = size if following < 0 else following
        lines.extend(text[pos:block_end].split("\n"))
        pos = block_end + 1
    return lines


def parse(
    text: str,
    prefixes: tuple[str, ...] | None = None,
    label_cache: LabelCache | None = None,
    max_samples: int | None = None,
) -> Payload:
    """Parse a /metrics payload.

    prefixes: keep only families whose name starts with one of these; the blocks of other
    families are skipped without being looked at. None keeps everything.
    label_cache: reuse parsed label blocks and name checks across polls of one target.
    max_samples: keep at most this many samples (the target's max_series); lines past it are counted in
    `Payload.dropped` and not parsed (115k series cost no 115k label sets).
    """
    if label_cache is None:
        label_cache = LabelCache()
    payload = Payload()
    samples = payload.samples
    counter_families: set[str] = set()
    wanted = label_cache.wanted if prefixes is None else label_cache.wanted_for(tuple(prefixes))
    labels_cache = label_cache.entries
    lines = text.split("\n") if prefixes is None else _wanted_blocks(text, tuple(prefixes))
    room = max_samples if max_samples is not None else -1

    for raw in lines:
        line = raw if raw and raw[0] not in " \t" and raw[-1] not in " \t\r" else raw.strip()
        if not line:
            continue
        if line[0] == "#":
            # In filtered mode a comment only gets here if the block selector matched its family.
            _comment(line, raw, text, payload, counter_families)
            continue
        if room == 0:
            payload.dropped += 1
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            if close < brace:
                raise _error(text, raw, "unterminated label set")
            name = line[:brace].rstrip()
            block = line[brace + 1 : close]
            labels = labels_cache.get(block)
            if labels is None:
                if len(block) > MAX_LABEL_BLOCK:
                    # Prometheus' label_value_length_limit fails such a scrape too; parsing a megabyte of
                    # label text would also cost the regex engine hundreds of megabytes.
                    raise _error(text, raw, f"label set longer than {MAX_LABEL_BLOCK} characters")
                labels = label_cache.parse(block, text, raw)
            rest = line[close + 2 :]
            if line[close + 1 : close + 2] == " " and " " not in rest and "\t" not in rest and rest:
                fields = [rest]  # the common case: exactly "} value"
            else:
                rest = line[close + 1 :]
                if rest and rest[0] not in " \t":
                    raise _error(text, raw, "missing space after labels")
                fields = rest.split()
        else:
            fields = line.split()
            if not fields:
                raise _error(text, raw, "not a sample line")
            name = fields.pop(0)
            labels = EMPTY_LABELS
        if name in counter_families:
            name += "_total"  # prometheus_client's convention for counters named without _total
        keep = wanted.get(name)
        if keep is None:
            if not _METRIC_NAME_RE.match(name):
                raise _error(text, raw, f"invalid metric name {name!r}")
            keep = prefixes is None or name.startswith(prefixes)
            if len(wanted) < label_cache.MAX_NAMES and len(name) <= label_cache.MAX_CACHED_BLOCK:
                wanted[name] = keep
        if not keep:
            continue  # a stray line of another family inside a wanted block
        if not fields or len(fields) > 2:
            raise _error(text, raw, "expected a value and an optional timestamp")
        number = fields[0]
        try:
            value = float(number)
        except ValueError:
            raise _error(text, raw, f"invalid number {number!r}") from None
        if "_" in number:
            raise _error(text, raw, f"invalid number {number!r}")
        bucket = samples.get(name)
        if bucket is None:
            bucket = samples[name] = []
        if len(fields) == 2:
            stamp = fields[1]
            try:
                payload.timestamps[(name, len(bucket))] = float(stamp) / 1000.0
            except ValueError:
                raise _error(text, raw, f"invalid timestamp {stamp!r}") from None
            if "_" in stamp:
                raise _error(text, raw, f"invalid timestamp {stamp!r}")
        bucket.append((labels, value))
        room -= 1
    return payload


def _comment(line: str, raw: str, text: str, payload: Payload, counter_families: set[str]) -> None:
    if line.startswith("# HELP "):
        parts = line.split(None, 3)
        if len(parts) >= 3:
            payload.helps[parts[2]] = parts[3] if len(parts) == 4 else ""
    elif line.startswith("# TYPE ") or line.startswith("#\tTYPE"):
        parts = line.split(None, 3)
        if len(parts) < 4:
            raise _error(text, raw, "TYPE line without a type")
        family, kind = parts[2], parts[3].strip()
        if not _METRIC_NAME_RE.match(family):
            raise _error(text, raw, f"invalid metric name {family!r}")
        payload.types[family] = kind
        if kind == "counter" and not family.endswith("_total"):
            counter_families.add(family)


def _error(text: str, line: str, message: str) -> PromParseError:
    """The error, with the line number (found only now: errors are rare, lines are many)."""
    offset = text.find(line)
    return PromParseError(text.count("\n", 0, offset) + 1 if offset >= 0 else 0, message, line)


def family_of(sample_name: str, types: Mapping[str, str]) -> str:
    """The family a sample name belongs to, given the TYPE declarations."""
    if sample_name in types:
        return sample_name
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in types:
            return sample_name[: -len(suffix)]
    return sample_name
