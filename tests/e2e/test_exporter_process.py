"""The real `llm-exporter` process: HTTP endpoints, SIGHUP reloads, SIGTERM, --once."""

import gzip
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.support.net import ExporterProcess, free_port, http_get, value, wait_until

VLLM_IDLE = FIXTURES / "vllm-real" / "v0.32.0-metrics-after-prefix.prom"


@pytest.fixture
def replay(tmp_path):
    """A replay server process standing in for vLLM (healthy) on loopback."""
    port = free_port()
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "/health": {"status": 200},
                "/metrics": {"file": str(VLLM_IDLE)},
                "/hang/health": {"status": 200},
                "/hang/metrics": {"status": 200, "fault": "hang"},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "tests/support/replay.py", "--port", str(port), "--spec", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 10, what="replay server")
    yield port
    proc.terminate()
    proc.wait(5)


def write_config(path, listen_port, replay_port, extra_targets="", interval="300ms"):
    path.write_text(f"""
listen: 127.0.0.1:{listen_port}
defaults: {{interval: {interval}, timeout: 250ms, window: 30s}}
targets:
  - name: good
    engine: vllm
    url: http://127.0.0.1:{replay_port}
    labels: {{cluster: test}}
{extra_targets}""")
    return path


@pytest.fixture
def exporter(tmp_path, replay):
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml",
        port,
        replay,
        extra_targets=f"""
  - name: hanging
    engine: vllm
    url: http://127.0.0.1:{replay}/hang
  - name: absent
    engine: llamacpp
    url: http://127.0.0.1:{free_port()}
""",
    )
    proc = ExporterProcess(config, port)
    yield proc
    proc.stop()


def test_serves_unified_metrics_with_sick_targets_alongside(exporter):
    body = wait_until(
        lambda: (
            lambda b: (
                b
                if value(b, "llm_up", target="good") == 1
                and value(b, "llm_exporter_poll_errors_total", target="hanging", reason="timeout")
                else None
            )
        )(exporter.metrics()),
        10,
        what="first polls",
    )
    assert value(body, "llm_up", target="hanging") == 0
    assert value(body, "llm_requests_running", target="good", model="tiny-llama", cluster="test") == 0
    assert value(body, "llm_kv_cache_hit_tokens_total", target="good") == 1280
    assert value(body, "llm_exporter_poll_errors_total", target="hanging", reason="timeout") >= 1
    assert value(body, "llm_exporter_poll_errors_total", target="absent", reason="connect") >= 1
    assert value(body, "llm_exporter_build_info") == 1
    # the exporter explains itself: how late its event loop (a 0.5 s timer) and its polls run
    wait_until(
        lambda: (
            lambda b: (
                value(b, "llm_exporter_event_loop_lag_seconds_count") >= 1
                and value(b, "llm_exporter_poll_delay_seconds_count") >= 1
            )
        )(exporter.metrics()),
        10,
        what="the lag and delay histograms to fill",
    )
    assert value(body, "llm_exporter_config_last_reload_successful") == 1
    status, page = exporter.get("/")
    assert status == 200 and "hanging" in page and "timeout" in page
    assert "down, down" not in page and "<td>down</td>" in page and "<td>up, ready</td>" in page
    assert exporter.get("/healthz")[0] == 200
    assert exporter.get("/readyz")[0] == 200


def test_openmetrics_and_gzip(exporter):
    wait_until(lambda: value(exporter.metrics(), "llm_up", target="good") == 1, 10)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    req = urllib.request.Request(
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(resp.read()).decode()
    assert text.rstrip().endswith("# EOF")
    assert "llm_up{" in text


def test_sighup_reload_good_then_bad_config(exporter, tmp_path, replay):
    wait_until(lambda: value(exporter.metrics(), "llm_up", target="good") == 1, 10)
    before = value(exporter.metrics(), "llm_exporter_config_last_reload_success_timestamp_seconds")
    # good: drop two targets, add one; "good" keeps its state (same name and engine)
    write_config(
        exporter.config_path,
        exporter.port,
        replay,
        extra_targets=f"""
  - name: second
    engine: vllm
    url: http://127.0.0.1:{replay}
""",
    )
    restarts_before = value(exporter.metrics(), "llm_exporter_poll_errors_total", target="good", reason="connect")
    exporter.signal(signal.SIGHUP)
    body = wait_until(
        lambda: (lambda b: b if value(b, "llm_up", target="second") == 1 else None)(exporter.metrics()),
        10,
        what="reloaded target",
    )
    assert value(body, "llm_up", target="hanging") is None  # removed targets vanish
    assert value(body, "llm_exporter_config_last_reload_success_timestamp_seconds") > before
    assert value(body, "llm_exporter_poll_errors_total", target="good", reason="connect") == restarts_before
    # bad: rejected, old config keeps running, the gauge says so, the log says why
    exporter.config_path.write_text("targets:\n  - {name: x, engine: vlm, url: 'http://h:1'}\n")
    exporter.signal(signal.SIGHUP)
    body = wait_until(
        lambda: (lambda b: b if value(b, "llm_exporter_config_last_reload_successful") == 0 else None)(
            exporter.metrics()
        ),
        10,
        what="failed reload",
    )
    assert value(body, "llm_up", target="second") == 1
    assert "config reload rejected" in exporter.logs() and "did you mean 'vllm'" in exporter.logs()
    assert exporter.proc.poll() is None


def test_sighup_storm_and_sigterm_during_polls(exporter):
    wait_until(lambda: value(exporter.metrics(), "llm_up", target="good") == 1, 10)
    polls_before = value(exporter.metrics(), "llm_exporter_polls_total", target="good")
    started = time.monotonic()
    for _ in range(50):  # 50 SIGHUPs 20 ms apart: the unchanged config restarts no poller
        exporter.signal(signal.SIGHUP)
        time.sleep(0.02)
    time.sleep(1.0)
    assert exporter.proc.poll() is None
    polls = value(exporter.metrics(), "llm_exporter_polls_total", target="good") - polls_before
    interval = 0.3  # the fixture's interval for `good`
    assert polls <= (time.monotonic() - started) / interval + 2  # no burst of polls after each reload
    assert exporter.logs().count("config reloaded") <= 4  # coalesced, and at least 1 s apart
    body = wait_until(lambda: (lambda b: b if value(b, "llm_up", target="good") == 1 else None)(exporter.metrics()), 10)
    assert value(body, "llm_exporter_config_last_reload_successful") == 1
    # SIGTERM while the hanging target's poll is in flight: exit 0 within 2 s
    started = time.monotonic()
    exporter.signal(signal.SIGTERM)
    code = exporter.proc.wait(5)
    assert code == 0 and time.monotonic() - started < 2.0


def test_once_prints_exposition_and_exits(tmp_path, replay):
    config = write_config(tmp_path / "once.yaml", free_port(), replay)
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert value(out.stdout, "llm_up", target="good") == 1
    assert value(out.stdout, "llm_kv_cache_query_tokens_total", target="good") == 2524


def test_json_logs_one_line_per_event_and_no_secrets(tmp_path, replay):
    port = free_port()
    config = tmp_path / "secret.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
targets:
  - name: with-token
    engine: vllm
    url: http://127.0.0.1:{free_port()}
    interval: 200ms
    timeout: 150ms
    headers: {{Authorization: "Bearer ${{SECRET_TOKEN}}"}}
""")
    env = {**__import__("os").environ, "SECRET_TOKEN": "tok-5up3r-s3cr3t"}
    proc = ExporterProcess(config, port, ("--log-format", "json"), env=env)
    try:
        time.sleep(1.0)
        body = proc.metrics()
        _status, page = proc.get("/")
    finally:
        proc.stop()
    logs = proc.logs()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["msg"] for line in lines)
    assert sum("with-token" in line and "down" in line for line in lines) == 1  # once, not every poll
    for text in (logs, body, page):
        assert "tok-5up3r-s3cr3t" not in text


def test_bad_config_exits_2_and_default_config_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\ntargets: 7\n")
    out = subprocess.run([sys.executable, "-m", "exporter", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "expected a list of targets" in out.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body = wait_until(
            lambda: (lambda r: r[1] if r[0] == 200 and "llm_up{" in r[1] and 'target="vllm"' in r[1] else None)(
                http_get(f"http://127.0.0.1:{port}/metrics")
            ),
            15,
        )
        assert 'llm_up{engine="llamacpp",target="llamacpp"}' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_once_polls_each_target_exactly_once_and_shows_no_windowed_values(tmp_path):
    """--once: one poll per target; rates and ratios need two polls, so they are absent (never 0.0)."""
    import subprocess
    import sys

    port = free_port()
    spec = tmp_path / "replay.json"
    spec.write_text(
        '{"/health": {"status": 200}, "/metrics": {"file": "tests/fixtures/vllm-real/v0.32.0-metrics-after-load.prom"}}'
    )
    replay = subprocess.Popen(
        [sys.executable, "tests/support/replay.py", "--port", str(port), "--spec", str(spec)], cwd=ROOT
    )
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 10, what="replay")
        config = tmp_path / "once.yaml"
        config.write_text(f"targets:\n  - {{name: v, engine: vllm, url: 'http://127.0.0.1:{port}'}}\n")
        out = subprocess.run(
            [sys.executable, "-m", "exporter", "--once", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert value(out.stdout, "llm_exporter_polls_total", target="v") == 1
        assert value(out.stdout, "llm_up", target="v") == 1
        assert value(out.stdout, "llm_generation_tokens_per_second") is None
        assert value(out.stdout, "llm_kv_cache_hit_ratio") is None
        assert value(out.stdout, "llm_requests_running", model="tiny-llama") is not None
    finally:
        replay.kill()
        replay.wait()


def test_healthcheck_follows_the_listen_address(tmp_path):
    import os
    import subprocess
    import sys

    port = free_port()
    config = tmp_path / "h.yaml"
    config.write_text("targets:\n  - {name: v, engine: vllm, url: 'http://127.0.0.1:9'}\n")
    env = {**os.environ, "LLM_EXPORTER_LISTEN": f"127.0.0.1:{port}"}
    check = [sys.executable, "-m", "exporter", "--config", str(config), "--healthcheck"]
    assert subprocess.run(check, env=env, capture_output=True, cwd=ROOT, timeout=30).returncode == 1  # not up
    proc = ExporterProcess(config, port, env=env)  # $LLM_EXPORTER_LISTEN chose the port
    try:
        assert subprocess.run(check, env=env, capture_output=True, cwd=ROOT, timeout=30).returncode == 0
    finally:
        proc.stop()


def test_healthcheck_probes_what_the_running_exporter_serves(tmp_path):
    """The config file on disk changed since start (another listen port, not applied until a restart):
    --healthcheck with the same --config still probes the running exporter, via the address it announced."""
    import os
    import subprocess
    import sys

    port, other = free_port(), free_port()
    config = tmp_path / "h.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\ntargets:\n  - {{name: v, engine: vllm, url: 'http://127.0.0.1:9'}}\n")
    env = {k: v for k, v in os.environ.items() if k != "LLM_EXPORTER_LISTEN"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    check = [sys.executable, "-m", "exporter", "--config", str(config), "--healthcheck"]
    proc = ExporterProcess(config, port, env=env)
    try:
        config.write_text(config.read_text().replace(str(port), str(other)))
        assert subprocess.run(check, env=env, capture_output=True, cwd=ROOT, timeout=30).returncode == 0
    finally:
        proc.stop()
    assert not list(tmp_path.glob("llm-exporter-*.json"))  # removed at exit
    assert subprocess.run(check, env=env, capture_output=True, cwd=ROOT, timeout=30).returncode == 1


def test_cli_rejects_zero_scrapes_and_reports_config_errors_as_json(tmp_path):
    import json
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("targets:\n  - {name: v, engine: vllm, url: 'http://127.0.0.1:9'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(config), "--web.max-requests", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 2 and "must be at least 1" in out.stderr
    config.write_text(
        "targets:\n  - {name: a, engine: vllm, url: 'http://h:1', intervl: 1s}\n"
        "  - {name: b, engine: vlm, url: 'http://h:1'}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    record = json.loads(line)  # one JSON log line, not plain text
    assert record["level"] == "error" and "2 errors" in record["msg"]
    assert "did you mean 'interval'" in record["msg"] and "did you mean 'vllm'" in record["msg"]


def test_sighup_keeps_the_listen_flag_without_warning(tmp_path):
    import signal as _signal

    port, file_port = free_port(), free_port()
    config = tmp_path / "l.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{file_port}\ntargets:\n  - {{name: v, engine: vllm, url: 'http://127.0.0.1:9'}}\n"
    )
    proc = ExporterProcess(config, port, extra_args=("--listen", f"127.0.0.1:{port}"))
    try:
        proc.signal(_signal.SIGHUP)
        wait_until(lambda: "config reloaded" in proc.logs(), 10, what="the reload")
        assert "listen changed" not in proc.logs()  # --listen still wins: nothing to warn about
        assert proc.get("/healthz")[0] == 200
    finally:
        proc.stop()
