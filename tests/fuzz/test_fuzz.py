"""Fuzzing: only the typed parse/config errors may escape, whatever the input.

CI runs a short version; the long run is
    HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/fuzz -q
(200,000 inputs per test, 1,000,000+ in all; results in bench/FUZZ.md).
"""

import contextlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import ConfigError, load_config_text
from exporter.promparse import PromParseError, parse
from exporter.sources import engine_specs
from exporter.sources.vllm import METRICS_PREFIXES
from tests.conftest import FIXTURES

SEEDS = [p.read_text()[:4000] for p in sorted(FIXTURES.rglob("*.prom"))]
ALPHABET = string.printable + '{}="\\,#+-.eEInfNa_:\x00\xff\u00e9\u2028'


def parse_only_typed_error(text: str, prefixes=None) -> None:
    with contextlib.suppress(PromParseError):
        parse(text, prefixes)


@given(st.text(alphabet=ALPHABET, max_size=400))
def test_parser_random_text(text):
    parse_only_typed_error(text)
    parse_only_typed_error(text, METRICS_PREFIXES)


@given(st.sampled_from(SEEDS), st.integers(0, 3999), st.integers(0, 40), st.text(alphabet=ALPHABET, max_size=20))
def test_parser_mutated_real_payloads(seed, at, cut, insert):
    """Real engine payloads with a slice replaced: near-valid input where parsers break."""
    at = min(at, len(seed))
    text = seed[:at] + insert + seed[at + cut :]
    parse_only_typed_error(text)
    parse_only_typed_error(text, METRICS_PREFIXES)


@given(st.binary(max_size=300))
def test_parser_binary_garbage_decoded_leniently(data):
    parse_only_typed_error(data.decode("utf-8", "replace"))


VALID = """listen: 127.0.0.1:9787
defaults: {interval: 5s, timeout: 3s, window: 1m}
targets:
  - name: a
    engine: vllm
    url: http://127.0.0.1:8000
    labels: {cluster: x}
  - {name: b, engine: llamacpp, url: "http://h:1", interval: 500ms, timeout: 400ms}
"""


def load_only_typed_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        load_config_text(text, "fuzz.yaml", {"HOME": "/x"}, engines=engine_specs())


@given(st.integers(0, len(VALID)), st.integers(0, 30), st.text(alphabet=ALPHABET + ":-[]&*!|>'%@`", max_size=30))
def test_config_mutated(at, cut, insert):
    load_only_typed_error(VALID[:at] + insert + VALID[at + cut :])


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(st.sampled_from(["listen", "namespace", "defaults", "targets", "extra"]), yaml_values, max_size=5)
)
def test_config_structured(document):
    import yaml

    load_only_typed_error(yaml.safe_dump(document))


def test_config_alias_bomb_and_recursion_are_config_errors():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    with pytest.raises(ConfigError, match="too large"):
        load_config_text(bomb, "bomb.yaml", {}, engines=engine_specs())
    with pytest.raises(ConfigError):
        load_config_text("a: &a [*a]\n", "loop.yaml", {}, engines=engine_specs())
    with pytest.raises(ConfigError):
        load_config_text("[" * 10000 + "]" * 10000, "deep.yaml", {}, engines=engine_specs())
