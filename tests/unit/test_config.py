import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.config import (
    ConfigError,
    EngineSpec,
    load_config,
    load_config_text,
    parse_duration,
    parse_size,
)
from exporter.sources import engine_specs

GOOD = """
listen: 127.0.0.1:9999
namespace: llm
defaults:
  interval: 2s
  timeout: 1s
  window: 1m
targets:
  - name: a
    engine: vllm
    url: http://127.0.0.1:8000/
    labels: {cluster: prod}
    headers: {Authorization: "Bearer ${TOKEN:-none}"}
  - name: b
    engine: llamacpp
    url: https://example.internal:8443
    interval: 500ms
    timeout: 400ms
    window: 30s
    process: {cmdline: "llama-server.*--port 8443"}
"""


def load(text: str, env: dict | None = None):
    return load_config_text(textwrap.dedent(text), "test.yaml", env or {}, engines=engine_specs())


def error_of(text: str, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return info.value


def test_good_config_parses_into_typed_targets():
    config = load(GOOD, {"TOKEN": "s3cret"})
    assert config.host_port == ("127.0.0.1", 9999)
    a, b = config.targets
    assert a.url == "http://127.0.0.1:8000"  # trailing slash removed
    assert (a.interval, a.timeout, a.window) == (2.0, 1.0, 60.0)
    assert dict(a.labels) == {"cluster": "prod"}
    assert dict(a.headers) == {"Authorization": "Bearer s3cret"}
    assert (b.interval, b.timeout, b.window) == (0.5, 0.4, 30.0)
    assert b.process is not None and b.process.cmdline == "llama-server.*--port 8443"


def test_secrets_do_not_appear_in_repr():
    config = load(GOOD, {"TOKEN": "s3cret"})
    assert "s3cret" not in repr(config)


def test_env_default_used_when_variable_missing():
    config = load(GOOD)
    assert dict(config.targets[0].headers) == {"Authorization": "Bearer none"}


def test_missing_env_without_default_names_variable_line_and_key():
    err = error_of("""
        targets:
          - name: a
            engine: vllm
            url: http://h:1
            headers: {X-Key: "${API_KEY}"}
        """)
    assert "API_KEY" in str(err) and err.line == 6 and "headers.X-Key" in str(err)


def test_env_value_cannot_inject_yaml_structure():
    config = load(
        """
        targets:
          - name: "${NAME}"
            engine: vllm
            url: http://h:1
        """,
        {"NAME": "a: b"},
    )
    # Expansion happens after parsing: the value stays one string.
    assert config.targets[0].name == "a: b"
    err = error_of("targets:\n  - {name: '${NAME}', engine: vllm, url: 'http://h:1'}\n", {"NAME": "x\ny"})
    assert "printable" in str(err)


def test_unknown_key_gets_did_you_mean_and_line():
    err = error_of("""
        targets:
          - name: a
            engine: vllm
            url: http://h:1
            intervall: 5s
        """)
    assert err.line == 6
    assert "did you mean 'interval'" in str(err)
    assert str(err).startswith("test.yaml:6:")


def test_unknown_top_level_key():
    err = error_of("listn: 0.0.0.0:1\n")
    assert "did you mean 'listen'" in str(err) and err.line == 1


@pytest.mark.parametrize(
    "snippet, message",
    [
        ("interval: 5 seconds", "expected a duration"),
        ("interval: -1s", "expected a duration"),
        ("interval: true", "expected a duration"),
        ("interval: 5", "needs a unit"),
        ("interval: 1ms", "at least 100ms"),
        ('headers: {Authorization: "Bearer a\\x01b"}', "control character"),
        ("timeout: 10s", "must not exceed interval"),
        ("window: 6s", "at least two polls"),
        ("labels: [a, b]", "expected a mapping"),
        ("labels: {target: x}", "reserved"),
        ("labels: {'bad-name': x}", "invalid label name"),
        ("max_series: lots", "whole number"),
        ("max_body_bytes: 1", "between 1KiB"),
        ("engine: vlm", "did you mean 'vllm'"),
        ("url: ftp://h/x", "http:// or https://"),
        ("url: http://user:pw@h:1", "credentials in the URL"),
        ("url: 'http://h:99999'", "bad port"),
        ("process: {}", "needs one of"),
        ("url: 'http://h:8000/metrics'", "ends in the endpoint /metrics"),
        ("url: 'http://h:8000/v1'", "ends in the endpoint /v1"),
        # each engine's own paths, declared on its source and handed to config (Ollama, TensorRT-LLM)
        ("url: 'http://h:11434/api/ps'", "ends in the endpoint /api/ps"),
        ("url: 'http://h:8000/prometheus/metrics'", "ends in the endpoint /prometheus/metrics"),
        ("url: 'http://h:8000?x=1'", "must not carry a query"),
        ("bearer_token_file: /nonexistent/token", "cannot read /nonexistent/token"),
        ("tls: {ca_file: /nonexistent/ca.crt}", "cannot read /nonexistent/ca.crt"),
        ("process: {cmdline: '('}", "invalid regular expression"),
    ],
)
def test_each_error_class_names_the_key(snippet, message):
    base = {"name": "a", "engine": "vllm", "url": "http://h:1", "interval": "5s"}
    key = snippet.split(":")[0]
    base.pop(key, None)
    lines = "\n".join(f"    {k}: {v}" for k, v in base.items())
    err = error_of(f"targets:\n  -\n{lines}\n    {snippet}\n")
    assert message in str(err), str(err)
    assert key in str(err)
    assert err.line is not None


def test_duplicate_names_rejected():
    err = error_of("""
        targets:
          - {name: a, engine: vllm, url: "http://h:1"}
          - {name: a, engine: llamacpp, url: "http://h:2"}
        """)
    assert "duplicate target name 'a'" in str(err) and err.line == 4


def test_missing_required_keys():
    assert "missing required key 'engine'" in str(error_of("targets:\n  - {name: a, url: 'http://h:1'}\n"))
    assert "missing required key 'url'" in str(error_of("targets:\n  - {name: a, engine: vllm}\n"))


def test_nvml_needs_no_url():
    config = load("targets:\n  - {name: gpus, engine: nvml}\n")
    assert config.targets[0].url == ""


def test_yaml_syntax_error_has_line():
    err = error_of("targets:\n  - name: a\n   engine: [\n")
    assert "invalid YAML" in str(err) and err.line is not None


def test_wrong_types():
    assert "expected a list of targets" in str(error_of("targets: {a: 1}\n"))
    assert "expected a mapping" in str(error_of("defaults: 5\n"))
    assert "host:port" in str(error_of("listen: nowhere\n"))
    assert "namespace must match" in str(error_of("namespace: 'llm-x'\n"))


def test_durations_and_sizes():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60
    assert parse_size("8MiB") == 8 * 1024 * 1024
    with pytest.raises(ValueError):
        parse_duration("5")
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(3)  # seconds or milliseconds? a bare number is refused


def test_embedded_default_config_polls_llamacpp_and_vllm():
    config = load_config(None, engines=engine_specs())
    engines = {t.engine: t.url for t in config.targets}
    assert engines["llamacpp"] == "http://127.0.0.1:8080"
    assert engines["vllm"] == "http://127.0.0.1:8000"


def test_shipped_configs_are_valid():
    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "config").glob("*.yaml"))
    assert files
    for path in files:
        # the files it names (TLS, tokens) exist on the host it is meant for, not here
        load_config(str(path), {"VLLM_API_KEY": "x", "LLAMA_API_KEY": "x"}, check_files=False, engines=engine_specs())


@pytest.mark.tools
def test_check_config_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  - {name: a, engine: vllm, url: 'http://h:1', intervl: 1s}\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert f"{bad}:2" in out.stderr and "did you mean 'interval'" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("targets:\n  - {name: a, engine: vllm, url: 'http://h:1'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(good)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "cannot read config" in missing.stderr


def test_example_config_documents_every_key_of_the_schema():
    """config/example.yaml shows every key the schema (config.py's dataclass fields) accepts."""
    import re

    from exporter.config import Config, Defaults, ProcessMatch, TargetConfig, TargetTLS, config_keys

    example = (Path(__file__).resolve().parents[2] / "config" / "example.yaml").read_text()
    missing = [
        f"{cls.__name__}.{name}"
        for cls in (Config, Defaults, TargetConfig, ProcessMatch, TargetTLS)
        for name in config_keys(cls)
        if not re.search(rf"(^|[\s{{,-]){name}:", example, re.M)
    ]
    assert not missing, missing


def test_a_proxy_prefix_is_kept_and_shown():
    config = load("targets:\n  - {name: a, engine: vllm, url: 'http://h:1/engines/a/'}\n")
    assert config.targets[0].url == "http://h:1/engines/a"


def test_empty_or_comments_only_config_is_an_error():
    for text in ("", "# nothing here\n", "targets: []\n", "listen: 0.0.0.0:1\n"):
        assert "defines no targets" in str(error_of(text))


def test_every_broken_target_is_reported_at_once():
    err = error_of("""
        targets:
          - {name: a, engine: vllm, url: 'http://h:1', intervl: 1s}
          - {name: b, engine: vllm, url: 'http://h:1'}
          - {name: c, engine: vlm, url: 'http://h:1'}
        """)
    text = str(err)
    assert text.startswith("2 errors:") and "test.yaml:3:" in text and "test.yaml:5:" in text
    assert "did you mean 'interval'" in text and "did you mean 'vllm'" in text


def test_url_is_not_for_engines_without_http():
    assert "url is not used by engine nvml" in str(
        error_of("targets:\n  - {name: g, engine: nvml, url: 'http://h:1'}\n")
    )


def test_files_are_read_without_blocking_and_must_be_what_they_claim(tmp_path):
    """A FIFO (or device) named as a token would block a reading thread for ever: refused at once, as is
    a CA file that holds no certificate (it would fail every poll later)."""
    import os
    import time

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    started = time.monotonic()
    err = error_of(f"targets:\n  - {{name: a, engine: vllm, url: 'http://h:1', bearer_token_file: '{fifo}'}}\n")
    assert time.monotonic() - started < 2
    assert "not a regular file" in str(err) and err.line == 2
    empty_ca = tmp_path / "ca.crt"
    empty_ca.write_text("# no certificate here\n")
    err = error_of(
        f"targets:\n  - name: a\n    engine: vllm\n    url: 'https://h:1'\n    tls: {{ca_file: '{empty_ca}'}}\n"
    )
    assert "holds no PEM certificate" in str(err) and str(empty_ca) in str(err) and err.line == 5


@pytest.mark.parametrize(
    "url, secret",
    [
        ("http://127.0.0.1:8000/?api_key=SECRET1", "SECRET1"),
        ("http://admin:SECRET2@127.0.0.1:99999", "SECRET2"),
        ("htp://admin:SECRET3@127.0.0.1:1", "SECRET3"),
        ("http://127.0.0.1:99999/x#SECRET4", "SECRET4"),
    ],
)
def test_url_errors_never_show_secrets(url, secret):
    err = error_of("targets:\n  - {name: a, engine: vllm, url: '${URL}'}\n", env={"URL": url})
    assert secret not in str(err), str(err)
    assert "url" in str(err)


async def test_blocking_file_work_is_abandoned_after_its_limit():
    """A reload reading a file on a hung mount: read_off_loop gives up with a clear error after its limit, in
    a daemon thread that never holds up the process's exit."""
    import threading
    import time

    from exporter.config import read_off_loop

    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"did not finish within 0\.2s"):
        await read_off_loop(lambda: release.wait(30), 0.2, "/mnt/hung/token")
    assert time.monotonic() - started < 1
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("read:"))
    release.set()
    assert await read_off_loop(lambda: 42, 1, "x") == 42


def test_config_knows_only_the_engines_it_is_handed():
    """config imports nothing from the package: the engine list and their endpoints come from its caller."""
    toy = {"toy": EngineSpec(needs_url=True, endpoints=("/stats",))}
    text = "targets:\n  - {name: a, engine: toy, url: 'http://h:1'}\n"
    assert load_config_text(text, "t", {}, engines=toy).targets[0].engine == "toy"
    with pytest.raises(ConfigError, match="known engines: toy"):
        load_config_text(text.replace("toy", "vllm"), "t", {}, engines=toy)
    with pytest.raises(ConfigError, match="ends in the endpoint /stats"):
        load_config_text(text.replace("h:1", "h:1/stats"), "t", {}, engines=toy)
