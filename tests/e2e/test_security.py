"""Security: the exporter's endpoint behind TLS (with client certificates) and bcrypt basic auth, targets
behind TLS and bearer tokens, and no secret anywhere it could leak."""

import base64
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import bcrypt
import pytest

from exporter.sources.base import HttpFetcher
from tests.conftest import FIXTURES
from tests.support.certs import make_pki
from tests.support.net import ExporterProcess, free_port, wait_until
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

IDLE = (FIXTURES / "vllm-real" / "v0.32.0-metrics-idle.prom").read_text()
PASSWORD = "s3cr3t-scrape-pass"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki, with_cert=True, max_version=None):
    context = ssl.create_default_context(cafile=str(pki["ca_crt"]))
    if with_cert:
        context.load_cert_chain(str(pki["client_crt"]), str(pki["client_key"]))
    if max_version is not None:
        context.maximum_version = max_version
    return context


def get(url, context, user=None, password=None):
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=context) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.fixture
def secured_exporter(tmp_path, pki):
    port = free_port()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode().replace("$2b$", "$2y$", 1)
    web = tmp_path / "web.yml"
    web.write_text(f"""
tls_server_config:
  cert_file: {pki["server_crt"]}
  key_file: {pki["server_key"]}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki["ca_crt"]}
  min_version: TLS13
http_server_config:
  headers: {{X-Content-Type-Options: nosniff}}
basic_auth_users:
  prometheus: '{hashed}'
""")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ntargets:\n  - {{name: v, engine: vllm, url: 'http://127.0.0.1:{free_port()}'}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(config), "--web.config.file", str(web)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"https://127.0.0.1:{port}"
    wait_until(lambda: get(base + "/healthz", client_context(pki))[0] == 200, 15, what="TLS exporter")
    yield base
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert PASSWORD not in out


def test_tls_client_certs_and_basic_auth(secured_exporter, pki):
    base = secured_exporter
    status, headers, body = get(base + "/metrics", client_context(pki), "prometheus", PASSWORD)
    assert status == 200 and "llm_up{" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(base + "/metrics", client_context(pki), "prometheus", "wrong")[0] == 401
    assert get(base + "/metrics", client_context(pki))[0] == 401
    assert get(base + "/metrics", client_context(pki), "nobody", PASSWORD)[0] == 401
    assert get(base + "/healthz", client_context(pki))[0] == 200  # liveness probes need no password
    assert get(base + "/readyz", client_context(pki))[0] in (200, 503)  # nor readiness probes
    assert get(base + "/", client_context(pki))[0] == 401  # the landing page shows targets: password
    # the bcrypt check is cached: repeated scrapes do not pay ~50 ms each
    started = time.perf_counter()
    for _ in range(10):
        assert get(base + "/metrics", client_context(pki), "prometheus", PASSWORD)[0] == 200
    assert (time.perf_counter() - started) / 10 < 0.5


def test_tls_rejects_missing_client_cert_and_old_versions(secured_exporter, pki):
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(secured_exporter + "/healthz", client_context(pki, with_cert=False))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(secured_exporter + "/healthz", client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to a TLS port
        urllib.request.urlopen(secured_exporter.replace("https", "http") + "/healthz", timeout=5)


def test_bad_web_config_exits_2(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: plaintext\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(web), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "bcrypt" in out.stderr
    web.write_text("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(web), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "cannot load certificate" in out.stderr


# ---------------------------------------------------------------- targets behind TLS and tokens


@pytest.fixture
async def tls_target(pki):
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(IDLE)})
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki["server_crt"]), str(pki["server_key"]))
    await srv.start(ssl_context=context)
    yield srv
    await srv.stop()


async def poll(url, **extra):
    pipe = Pipeline("vllm", url, **extra)
    await pipe.poll()
    await pipe.close()
    return pipe.state


async def test_target_tls_verified_with_custom_ca(tls_target, pki):
    url = f"https://127.0.0.1:{tls_target.port}"
    assert (await poll(url, tls=f"{{ca_file: '{pki['ca_crt']}'}}")).health.up
    state = await poll(url)  # the system CAs do not know the test CA
    assert not state.health.up and state.health.last_error[0].value == "tls"
    assert (await poll(url, tls="{insecure_skip_verify: true}")).health.up  # explicit opt-out


async def test_bearer_token_file_sent_and_never_exposed(tmp_path):
    token = "tok-" + "x7" * 20
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(IDLE)})
    srv.required_authorization = f"Bearer {token}"
    await srv.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", bearer_token_file=str(token_file))
        await pipe.poll()
        assert pipe.state.health.up
        assert token not in pipe.exposition() and token not in repr(pipe.target)
        await pipe.close()
        # a token file that disappears after the config was loaded: the target goes down, saying why
        gone = tmp_path / "gone"
        gone.write_text(token)
        pipe = Pipeline("vllm", f"http://127.0.0.1:{srv.port}", bearer_token_file=str(gone))
        gone.unlink()
        pipe.source.http = HttpFetcher(pipe.session, pipe.target)  # re-read, as on a reload
        await pipe.poll()
        await pipe.close()
        assert not pipe.state.health.up and "bearer_token_file" in pipe.state.health.last_error[1]
        assert token not in pipe.state.health.last_error[1]
        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        refused = await poll(f"http://127.0.0.1:{srv.port}", bearer_token_file=str(wrong))
        error = refused.health.last_error
        assert not refused.health.up and error[0].value == "http_status" and "nope" not in error[1]
    finally:
        await srv.stop()


def test_token_file_reread_on_reload_and_secrets_nowhere(tmp_path):
    """Real exporter process: a rotated token is picked up by SIGHUP; no secret in logs, page or metrics."""
    import asyncio
    import threading

    token_a, token_b = "tok-AAAA-" + "a" * 24, "tok-BBBB-" + "b" * 24
    srv = ReplayServer({"/health": Reply(200), "/metrics": Reply.text(IDLE)})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10)
    srv.required_authorization = f"Bearer {token_a}"
    token_file = tmp_path / "token"
    token_file.write_text(token_a)
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ntargets:\n  - {{name: v, engine: vllm, interval: 200ms, "
        f"timeout: 150ms, url: 'http://127.0.0.1:{srv.port}', bearer_token_file: '{token_file}'}}\n"
    )
    proc = ExporterProcess(config, port)
    try:
        wait_until(lambda: 'llm_up{engine="vllm",target="v"} 1.0' in proc.metrics(), 10, what="up with token A")
        token_file.write_text(token_b)
        srv.required_authorization = f"Bearer {token_b}"
        wait_until(lambda: 'llm_up{engine="vllm",target="v"} 0.0' in proc.metrics(), 10, what="down: rotated")
        proc.signal(signal.SIGHUP)
        wait_until(lambda: 'llm_up{engine="vllm",target="v"} 1.0' in proc.metrics(), 10, what="up with token B")
        texts = [proc.metrics(), proc.get("/")[1]]
    finally:
        proc.stop()
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    texts.append(proc.logs())
    for text in texts:
        assert token_a not in text and token_b not in text and "tok-" not in text


def test_debug_view_is_behind_auth_and_shows_no_secret(tmp_path, pki):
    """/debug/targets/<name>: what the exporter saw, behind the same password as /metrics; a header's
    value (an API key) never appears."""
    import json as _json

    secret = "sk-" + "9" * 30
    srv_port, port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
targets:
  - name: v
    engine: vllm
    url: http://127.0.0.1:{srv_port}
    headers: {{Authorization: "Bearer {secret}"}}
""")
    web = tmp_path / "web.yaml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = ExporterProcess(config, port, extra_args=("--web.config.file", str(web)))
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/debug/targets/v", None)[0] == 401
        wait_until(
            lambda: (
                _json.loads(get(base + "/debug/targets/v", None, "prometheus", PASSWORD)[2])["health"]["polls"] >= 1
            ),
            10,
            what="a first poll",
        )
        status, _, body = get(base + "/debug/targets/v", None, "prometheus", PASSWORD)
        assert status == 200 and secret not in body
        view = _json.loads(body)
        assert view["target"]["headers"] == {"Authorization": "<redacted>"}
        assert view["health"]["last_error"]["reason"] == "connect"
        assert any("down: connect" in e["event"] for e in view["events"])
        assert get(base + "/debug/targets/nope", None, "prometheus", PASSWORD)[0] == 404
    finally:
        exporter.stop()
