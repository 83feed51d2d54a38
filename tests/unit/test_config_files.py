"""Each invalid config in tests/fixtures/config is one operator mistake, paired with the exact message the
exporter gives (blackbox_exporter's config_test.go and testdata/ pattern). A message changes only on
purpose: here."""

from __future__ import annotations

import pytest

from exporter.config import ConfigError, load_config
from exporter.sources import engine_specs
from tests.conftest import FIXTURES

CONFIGS = FIXTURES / "config"
EXPECTED = {
    "bad-credentials-in-url.yaml": (
        "{path}:4: targets[0].url: credentials in the URL are not allowed; use headers with ${{ENV}} instead"
    ),
    "bad-duplicate-names.yaml": "{path}:4: targets[1].name: duplicate target name 'gpu' (first at targets[0])",
    "bad-engine-typo.yaml": (
        "{path}:3: targets[0].engine: unknown engine 'llamacp' (did you mean 'llamacpp'?); known engines: auto, "
        "llamacpp, lmdeploy, nvml, ollama, sglang, tgi, trtllm, vllm"
    ),
    "bad-not-a-list.yaml": "{path}:1: targets: expected a list of targets, got a mapping",
    "bad-nvml-with-url.yaml": (
        "{path}:4: targets[0].url: url is not used by engine nvml (it polls no HTTP endpoint): remove it"
    ),
    "bad-reserved-label.yaml": "{path}:5: targets[0].labels: label name 'model' is reserved",
    "bad-timeout-over-interval.yaml": (
        "{path}:6: targets[0].timeout: timeout (10s) must not exceed interval (5s): polls of one target never overlap"
    ),
    "bad-unknown-key.yaml": "{path}:5: targets[0].intervall: unknown key 'intervall' (did you mean 'interval'?)",
    "bad-url-endpoint.yaml": (
        "{path}:4: targets[0].url: the URL ends in the endpoint /metrics ('http://127.0.0.1:8000/metrics'): give "
        "the server's base URL ('http://127.0.0.1:8000'), the exporter adds each endpoint's path"
    ),
    "bad-yaml-syntax.yaml": "{path}:4: invalid YAML: expected ',' or ']', but got '<stream end>'",
}


def test_every_bad_config_file_has_its_expected_message():
    assert sorted(p.name for p in CONFIGS.glob("bad-*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_bad_config_file_gets_its_exact_message(name):
    path = CONFIGS / name
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), engines=engine_specs())
    assert str(caught.value) == EXPECTED[name].format(path=path)
    assert "hunter2" not in str(caught.value)  # no secret from the file ever shows
