"""--web.config.file as exporter-toolkit does it: bcrypt off the event loop and in constant time for unknown
users, outcomes cached, rate_limit, reload without a restart, and TLS options honoured or refused."""

import asyncio
import base64
import socket
import ssl
import time

import bcrypt
import pytest
from aiohttp import web

from exporter import server
from exporter.app import Exporter
from exporter.config import ConfigError, load_config_text
from exporter.sources import engine_specs
from exporter.state import TargetState
from exporter.webconfig import WebConfigHolder, load_web_config
from tests.support.certs import make_pki

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(10)).decode()


def holder_for(tmp_path, text: str) -> WebConfigHolder:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return WebConfigHolder(str(path), load_web_config(str(path)))


async def serve(holder: WebConfigHolder) -> tuple[web.AppRunner, int]:
    exporter = Exporter(
        load_config_text("targets:\n  - {name: v, engine: vllm, url: 'http://h:1'}\n", "t", {}, engines=engine_specs()),
        None,
    )
    exporter.states = {t.name: TargetState(t) for t in exporter.config.targets}
    runner = await server.start_runner(server.build_app(exporter, web_config=holder))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=holder.ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def basic(user: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


def status(port: int, path: str = "/metrics", auth: str | None = None) -> tuple[int, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if auth:
            head += f"Authorization: {auth}\r\n"
        sock.sendall(head.encode() + b"\r\n")
        data = sock.recv(64)
    return int(data.split()[1]), time.monotonic() - started


async def test_wrong_password_flood_never_stalls_the_loop(tmp_path):
    """30 concurrent wrong passwords for a real user: bcrypt runs in one worker thread, so the event loop
    (here a 10 ms timer, /healthz and a cached good login) keeps answering at once."""
    holder = holder_for(tmp_path, f"basic_auth_users: {{prom: '{HASH}'}}\n")
    runner, port = await serve(holder)
    loop = asyncio.get_running_loop()
    try:
        assert (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "s3cret")))[0] == 200
        lags: list[float] = []

        async def watch() -> None:
            while True:
                asked = time.monotonic() + 0.01
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - asked)

        watcher = asyncio.create_task(watch())
        flood = [loop.run_in_executor(None, status, port, "/metrics", basic("prom", f"wrong{i}")) for i in range(30)]
        await asyncio.sleep(0.2)
        health = await loop.run_in_executor(None, status, port, "/healthz")
        good = await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "s3cret"))
        results = await asyncio.gather(*flood)
        watcher.cancel()
        assert {code for code, _ in results} == {401}
        assert health[0] == 200 and health[1] < 0.2
        assert good[0] == 200 and good[1] < 0.2  # a cached success skips the bcrypt queue
        assert max(lags) < 0.1, max(lags)
    finally:
        await runner.cleanup()


async def test_unknown_users_cost_a_check_and_odd_credentials_are_401(tmp_path):
    """An unknown user is checked against a dummy hash (no user enumeration by timing); a > 72-byte password
    is a 401 (not a 500); `basic` in lower case is accepted (RFC 7617); failures are cached briefly."""
    holder = holder_for(tmp_path, f"basic_auth_users: {{prom: '{HASH}'}}\n")
    runner, port = await serve(holder)
    loop = asyncio.get_running_loop()
    try:
        known = [(await loop.run_in_executor(None, status, port, "/metrics", basic("prom", f"w{i}"))) for i in range(3)]
        unknown = [
            (await loop.run_in_executor(None, status, port, "/metrics", basic(f"eve{i}", "w"))) for i in range(3)
        ]
        assert {c for c, _ in known + unknown} == {401}
        k, u = sorted(t for _, t in known)[1], sorted(t for _, t in unknown)[1]
        assert 0.5 < u / k < 2.0, (k, u)  # medians alike: both cost one bcrypt check
        assert (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "a" * 100)))[0] == 401
        assert (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "s3cret", scheme="basic")))[
            0
        ] == 200
        again = await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "w0"))
        assert again[0] == 401 and again[1] < k / 2  # the failure was cached
    finally:
        await runner.cleanup()


async def test_rate_limit_and_reload_take_effect_without_restart(tmp_path):
    holder = holder_for(tmp_path, f"basic_auth_users: {{prom: '{HASH}'}}\nrate_limit: {{interval: 1s, burst: 3}}\n")
    runner, port = await serve(holder)
    loop = asyncio.get_running_loop()
    try:
        codes = [
            (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "s3cret")))[0] for _ in range(5)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        assert (await loop.run_in_executor(None, status, port, "/healthz"))[0] == 200  # probes are exempt
        new_hash = bcrypt.hashpw(b"n3w", bcrypt.gensalt(4)).decode()
        (tmp_path / "web.yml").write_text(f"basic_auth_users: {{prom: '{new_hash}'}}\n")
        assert holder.reload(load_web_config(str(tmp_path / "web.yml"))) is None
        assert (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "s3cret")))[0] == 401
        assert (await loop.run_in_executor(None, status, port, "/metrics", basic("prom", "n3w")))[0] == 200
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(pki, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki['server_crt']}\n  key_file: {pki['server_key']}\n{extra}"


def handshake(port: int, ciphers: str | None = None, **versions: ssl.TLSVersion) -> str:
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for attr, version in versions.items():
        setattr(context, attr, version)
    if ciphers:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as sock:
        return sock.cipher()[0]


async def test_cipher_suites_are_honoured_with_a_real_tls_client(tmp_path, pki):
    holder = holder_for(
        tmp_path, tls_config(pki, "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n")
    )
    runner, port = await serve(holder)
    loop = asyncio.get_running_loop()
    try:
        assert await loop.run_in_executor(None, handshake, port) == "ECDHE-ECDSA-AES256-GCM-SHA384"
        for other in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
            with pytest.raises(ssl.SSLError):
                await loop.run_in_executor(
                    None, lambda o=other: handshake(port, o, maximum_version=ssl.TLSVersion.TLSv1_2)
                )
    finally:
        await runner.cleanup()


async def test_curve_preference_is_honoured(tmp_path, pki):
    # TLS 1.3: the key-exchange group is negotiated apart from the (P-256 ECDSA) certificate's signature
    holder = holder_for(tmp_path, tls_config(pki, "  min_version: TLS13\n  curve_preferences: [CurveP384]\n"))
    runner, port = await serve(holder)
    loop = asyncio.get_running_loop()

    def with_curve(curve: str) -> str:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_ecdh_curve(curve)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as sock:
            return sock.version() or ""

    try:
        assert await loop.run_in_executor(None, with_curve, "secp384r1") == "TLSv1.3"
        with pytest.raises(ssl.SSLError):
            await loop.run_in_executor(None, with_curve, "prime256v1")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "extra, message",
    [
        ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "not configurable"),
        ("  cipher_suites: [NOPE]\n", "unknown or not configurable"),
        ("  curve_preferences: [CurveP256, CurveP384]\n", "exactly one curve"),
        ("  curve_preferences: [Curve1]\n", "unknown curve"),
        ("  client_ca_file: CA\n", "client_auth_type is not"),
    ],
)
def test_tls_options_refused_with_a_clear_error(tmp_path, pki, extra, message):
    path = tmp_path / "web.yml"
    path.write_text(tls_config(pki, extra.replace("CA", str(pki["ca_crt"]))))
    with pytest.raises(ConfigError, match=message):
        load_web_config(str(path))
