"""Differential tests: our parser must yield exactly prometheus_client's samples."""

import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.promparse import LabelCache, PromParseError, parse
from tests.conftest import FIXTURES


def reference_samples(text: str):
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, tuple(sorted(s.labels.items())), _norm(float(s.value)), s.timestamp))
    return sorted(out, key=repr)


def our_samples(text: str):
    payload = parse(text)
    out = []
    for name, samples in payload.samples.items():
        for index, (labels, value) in enumerate(samples):
            ts = payload.timestamps.get((name, index))
            out.append((name, tuple(sorted(labels.items())), _norm(value), ts))
    return sorted(out, key=repr)


def _norm(value: float):
    return "NaN" if math.isnan(value) else value


def fixture_payloads():
    return list(_fixture_payloads())


def _fixture_payloads():
    for path in sorted(FIXTURES.rglob("*.prom")):
        yield pytest.param(path.read_text(), id=path.name)
    series = FIXTURES / "llamacpp" / "b11434-load-series.jsonl"
    for i, line in enumerate(series.open()):
        if i % 20 == 0:
            yield pytest.param(json.loads(line)["metrics"], id=f"{series.name}:{i}")


@pytest.mark.parametrize("text", fixture_payloads())
def test_same_samples_as_prometheus_client_on_fixtures(text):
    ours = our_samples(text)
    assert ours, "fixture parsed to nothing"
    assert ours == reference_samples(text)


def test_prefix_filter_keeps_only_wanted_families():
    text = (FIXTURES / "vllm-real" / "v0.32.0-metrics-after-load.prom").read_text()
    payload = parse(text, ("vllm:",))
    assert payload.samples and all(name.startswith("vllm:") for name in payload.samples)
    assert "python_gc_objects_collected_total" not in payload.samples
    assert payload.types["vllm:request_queue_time_seconds"] == "histogram"
    assert payload.helps["vllm:num_requests_waiting"] == "Number of requests waiting to be processed."


def test_label_cache_reuses_parsed_labels():
    cache = LabelCache()
    text = 'a{x="1"} 1\na{x="1"} 2\n'
    payload = parse(text, label_cache=cache)
    first, second = payload.get("a")
    assert first[0] is second[0]
    assert len(cache.entries) == 1


def test_escapes_specials_and_edge_cases():
    text = (
        "# HELP m help\n# TYPE m gauge\n"
        'm{a="quote\\"q",b="back\\\\slash",c="new\\nline",d="ünï},{"} +Inf\n'
        'm{a="x"} -Inf\nm{a="y"} NaN\nm{a="z"} 1.5e-3 1700000000000\n'
        "\n# a comment\nno_newline_at_end 7"
    )
    assert our_samples(text) == reference_samples(text)
    labels, value = parse(text).get("m")[0]
    assert labels["a"] == 'quote"q' and labels["b"] == "back\\slash" and labels["c"] == "new\nline"
    assert labels["d"] == "ünï},{" and value == math.inf


@pytest.mark.parametrize(
    "bad",
    [
        'm{a="1" 1\n',  # unterminated labels
        "m{a=1} 1\n",  # unquoted value
        'm{a="1",a="2"} 1\n',  # duplicate label
        "m one\n",  # bad value
        "m 1_000\n",  # underscores are not numbers here
        "9m 1\n",  # bad name
        "m\n",  # no value
        "m 1 2 3\n",  # too many fields
        'm{a="\\q"} 1\n',  # bad escape
        "# TYPE m\n",  # TYPE without type
    ],
)
def test_malformed_raises_typed_error(bad):
    with pytest.raises(PromParseError):
        parse(bad)


# ---------------------------------------------------------------- generated payloads

names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,10}", fullmatch=True)
label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


@st.composite
def payloads(draw):
    lines = []
    # The format allows each family once; prometheus_client merges repeated declarations oddly.
    for name in draw(st.lists(names, min_size=1, max_size=8, unique=True)):
        kind = draw(st.sampled_from(["gauge", "counter", "untyped", None]))
        if kind:
            lines.append(f"# HELP {name} some help")
            lines.append(f"# TYPE {name} {kind}")
        for _ in range(draw(st.integers(1, 4))):
            labels = draw(st.dictionaries(label_names, label_values, max_size=3))
            block = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            sample = name + (f"{{{block}}}" if labels or draw(st.booleans()) else "")
            lines.append(f"{sample} {_fmt(draw(numbers))}")
        if draw(st.booleans()):
            lines.append("")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@settings(max_examples=300, deadline=None)
@given(payloads())
def test_same_samples_as_prometheus_client_on_generated_payloads(text):
    try:
        expected = reference_samples(text)
    except Exception:
        with pytest.raises(PromParseError):
            parse(text)
        return
    assert our_samples(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_parse_error(text):
    with contextlib.suppress(PromParseError):
        parse(text)


@pytest.mark.parametrize("text", fixture_payloads())
def test_filtered_parse_equals_full_parse_restricted(text):
    """Skipping unwanted family blocks must not lose or invent a wanted sample."""
    from exporter.sources.vllm import METRICS_PREFIXES

    for prefixes in (METRICS_PREFIXES, ("llamacpp:",), ("vllm:num_requests", "process_")):
        full = parse(text)
        filtered = parse(text, prefixes)
        expected = {n: [(dict(lab), v) for lab, v in s] for n, s in full.samples.items() if n.startswith(prefixes)}
        assert {n: [(dict(lab), v) for lab, v in s] for n, s in filtered.samples.items()} == expected
