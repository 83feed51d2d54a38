"""`--web.config.file`: TLS and basic auth for the exporter's own endpoint, in the format of the
Prometheus exporter-toolkit, so operators reuse what they have for node_exporter:

    tls_server_config:
      cert_file: /etc/llm-exporter/tls.crt
      key_file: /etc/llm-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), RequestClientCert, ...
      client_ca_file: /etc/llm-exporter/ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
      cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]   # Go's names; TLS 1.2 and older
      curve_preferences: [CurveP384]                  # one curve (Python sets one)
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
    rate_limit: {interval: 100ms, burst: 10}          # requests; more get HTTP 429

As exporter-toolkit does it: bcrypt (slow on purpose, ~50 ms a check) runs in a worker thread, one check at
a time, so it never stalls the event loop; an unknown user is checked against a fixed dummy hash, so timing
does not tell which users exist; outcomes, failures too, are cached for a short time (SHA-256 digests of
user, password and hash, never the password). The file is read again on SIGHUP (`WebConfigHolder.reload`):
a rotated password or certificate takes effect without a restart. /healthz and /readyz stay open for probes
(and are not rate-limited).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .config import HEADER_NAME_RE, ConfigError, Document, Validator, parse_duration, read_small_file

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's cipher suite names (what exporter-toolkit takes) → OpenSSL's. Go configures TLS 1.2 and older
# suites only (TLS 1.3's are fixed), and so does this.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# Open without a password: the kubelet's (and systemd's) liveness and readiness probes send none, and
# these answer only "ok" / "ready". TLS (with client certificates, if configured) still applies.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
AUTH_CACHE_SIZE = 256
FAILURE_TTL = 10.0  # seconds a wrong password's outcome is remembered
MAX_WAITING_CHECKS = 16  # bcrypt checks queued beyond this are answered 401 at once (a flood)
BCRYPT_MAX_PASSWORD = 72  # bytes; bcrypt 5 refuses longer ones, exporter-toolkit answers 401
# A fixed hash that no password matches: unknown users are checked against it, so they cost the same.
DUMMY_HASH = b"$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV3nZ2KtYmdmDKo5/1e"


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two tokens
    burst: int


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit: RateLimit | None = None
    client_allowed_sans: tuple[str, ...] = ()
    tls_settings: tuple[dict[str, Any], Document] | None = field(default=None, repr=False)


def load_web_config(path: str) -> WebConfig:
    try:
        text = read_small_file(path, 256 * 1024).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read web config: {exc.strerror or exc}", source=path) from None
    except UnicodeDecodeError:
        raise ConfigError("web config is not valid UTF-8", source=path) from None
    doc = Document(text, path, {})
    v = Validator(doc)
    top = v.mapping(doc.data, (), ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"))
    config = WebConfig()
    tls = v.mapping(
        top.get("tls_server_config"),
        ("tls_server_config",),
        (
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "min_version",
            "max_version",
            "cipher_suites",
            "curve_preferences",
            "prefer_server_cipher_suites",
            "client_allowed_sans",
        ),
    )
    if tls:
        config.ssl_context = _ssl_context(tls, doc)
        config.tls_settings = (tls, doc)
        sans = tls.get("client_allowed_sans") or []
        if not isinstance(sans, list) or not all(isinstance(x, str) for x in sans):
            raise doc.error("expected a list of names", ("tls_server_config", "client_allowed_sans"))
        if sans and config.ssl_context.verify_mode == ssl.CERT_NONE:
            raise doc.error(
                "client_allowed_sans needs client certificates (client_auth_type)",
                ("tls_server_config", "client_allowed_sans"),
            )
        config.client_allowed_sans = tuple(sans)
    http = v.mapping(top.get("http_server_config"), ("http_server_config",), ("headers", "http2"))
    headers = http.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and HEADER_NAME_RE.match(k) and isinstance(x, str) for k, x in headers.items()
    ):
        raise doc.error("expected a mapping of header names to strings", ("http_server_config", "headers"))
    config.headers = dict(headers)
    users = top.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise doc.error("expected a mapping of user names to bcrypt hashes", ("basic_auth_users",))
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise doc.error("expected a bcrypt hash ($2y$...)", ("basic_auth_users", user))
        config.users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    limit = v.mapping(top.get("rate_limit"), ("rate_limit",), ("interval", "burst"))
    if limit:
        try:
            interval = parse_duration(limit.get("interval"))
        except ValueError as exc:
            raise doc.error(str(exc), ("rate_limit", "interval")) from None
        burst = limit.get("burst")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise doc.error("expected a whole number of requests, at least 1", ("rate_limit", "burst"))
        config.rate_limit = RateLimit(interval, burst)
    return config


def _ssl_context(tls: dict[str, Any], doc: Document) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    configure_tls(context, tls, doc)
    return context


def configure_tls(context: ssl.SSLContext, tls: dict[str, Any], doc: Document) -> None:
    """Apply tls_server_config to a context (a new one at load; the live one on reload, after the same
    settings were checked on a new one)."""
    path = ("tls_server_config",)
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            raise doc.error(f"missing required key {key!r}", path)
    try:
        context.load_cert_chain(tls["cert_file"], tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise doc.error(f"cannot load certificate/key: {exc}", path + ("cert_file",)) from None
    if tls.get("client_ca_file") and "client_auth_type" not in tls:
        # exporter-toolkit refuses this too: a CA with no policy would silently ask for no certificate.
        raise doc.error(
            "client_ca_file is set but client_auth_type is not: say which client certificates to "
            "require (e.g. RequireAndVerifyClientCert)",
            path + ("client_ca_file",),
        )
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise doc.error(
            f"unknown client_auth_type {auth!r}; one of {', '.join(CLIENT_AUTH)}", path + ("client_auth_type",)
        )
    context.verify_mode = CLIENT_AUTH[auth]
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not tls.get("client_ca_file"):
        raise doc.error(f"client_auth_type {auth} needs client_ca_file", path)
    if tls.get("client_ca_file"):
        try:
            context.load_verify_locations(tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise doc.error(f"cannot load client CA: {exc}", path + ("client_ca_file",)) from None
        if not context.get_ca_certs():
            raise doc.error("client_ca_file holds no certificate", path + ("client_ca_file",))
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if tls.get(key):
            if tls[key] not in TLS_VERSIONS:
                raise doc.error(f"unknown TLS version {tls[key]!r}; one of {', '.join(TLS_VERSIONS)}", path + (key,))
            setattr(context, attr, TLS_VERSIONS[tls[key]])
    if "min_version" not in tls:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    suites = tls.get("cipher_suites")
    if suites is not None:
        if not isinstance(suites, list) or not suites or not all(isinstance(x, str) for x in suites):
            raise doc.error("expected a list of cipher suite names", path + ("cipher_suites",))
        unknown = [x for x in suites if x not in CIPHER_SUITES]
        if unknown:
            raise doc.error(
                f"unknown or not configurable cipher suite {unknown[0]!r} (TLS 1.3 suites are fixed, "
                f"as in Go); one of {', '.join(CIPHER_SUITES)}",
                path + ("cipher_suites",),
            )
        try:
            context.set_ciphers(":".join(CIPHER_SUITES[x] for x in suites))
        except ssl.SSLError as exc:
            raise doc.error(
                f"this OpenSSL supports none of these cipher suites: {exc}", path + ("cipher_suites",)
            ) from None
    curves = tls.get("curve_preferences")
    if curves is not None:
        if not isinstance(curves, list) or not all(isinstance(x, str) for x in curves) or len(curves) != 1:
            raise doc.error(
                "give exactly one curve (Python's ssl module sets one key-exchange group)",
                path + ("curve_preferences",),
            )
        if curves[0] not in CURVES:
            raise doc.error(f"unknown curve {curves[0]!r}; one of {', '.join(CURVES)}", path + ("curve_preferences",))
        try:
            context.set_ecdh_curve(CURVES[curves[0]])
        except (ValueError, ssl.SSLError) as exc:
            raise doc.error(f"cannot use curve {curves[0]}: {exc}", path + ("curve_preferences",)) from None
    if tls.get("prefer_server_cipher_suites"):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


class BasicAuth:
    """bcrypt off the event loop, one check at a time; unknown users cost a check against DUMMY_HASH;
    outcomes cached (successes until evicted, failures for FAILURE_TTL)."""

    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self.outcomes: OrderedDict[bytes, tuple[bool, float]] = OrderedDict()
        self.pool = ThreadPoolExecutor(1, "bcrypt")
        self.waiting = 0

    def _credentials(self, header: str | None) -> tuple[str, bytes] | None:
        if not header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":  # RFC 7617: the scheme is case-insensitive
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return (user, password.encode()) if sep else None

    async def check(self, header: str | None) -> bool:
        credentials = self._credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        digest = hashlib.sha256((hashed or DUMMY_HASH) + b"\0" + user.encode() + b"\0" + password).digest()
        known = self.outcomes.get(digest)
        now = time.monotonic()
        if known is not None and (known[0] or now - known[1] < FAILURE_TTL):
            self.outcomes.move_to_end(digest)
            return known[0]
        if self.waiting >= MAX_WAITING_CHECKS:
            return False  # a flood: answered without a check (a cached success still gets through above)
        self.waiting += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self.pool, _bcrypt_check, password, hashed or DUMMY_HASH
            )
        finally:
            self.waiting -= 1
        ok = ok and hashed is not None
        self.outcomes[digest] = (ok, time.monotonic())
        self.outcomes.move_to_end(digest)
        while len(self.outcomes) > AUTH_CACHE_SIZE:
            self.outcomes.popitem(last=False)
        return ok

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    if len(password) > BCRYPT_MAX_PASSWORD:
        bcrypt.checkpw(b"", hashed)  # the same cost as any other check; such a password never matches
        return False
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


class TokenBucket:
    def __init__(self, limit: RateLimit):
        self.limit = limit
        self.tokens = float(limit.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.limit.burst, self.tokens + (now - self.stamp) / self.limit.interval)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class WebConfigHolder:
    """The web config in force, swapped whole on reload (`reload()` on SIGHUP). TLS certificates and CA are
    loaded into the listening socket's SSL context in place, so new connections use them; turning TLS on or
    off needs a restart (said in the log)."""

    def __init__(self, path: str, config: WebConfig):
        self.path = path
        self.config = config
        self.auth = BasicAuth(config.users) if config.users else None
        self.bucket = TokenBucket(config.rate_limit) if config.rate_limit else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.config.ssl_context

    def reload(self, new: WebConfig) -> str | None:
        """Take a freshly loaded config; returns why it was refused (None when it took effect)."""
        if (new.ssl_context is None) != (self.config.ssl_context is None):
            return "turning TLS on or off needs a restart"
        if new.ssl_context is not None and self.config.ssl_context is not None and new.tls_settings is not None:
            # New connections handshake with the new certificate, CA, ciphers and client policy (a CA that
            # was removed from the file stays trusted until a restart: OpenSSL only adds to a store).
            configure_tls(self.config.ssl_context, *new.tls_settings)
            new.ssl_context = self.config.ssl_context
        old = self.auth
        self.auth = BasicAuth(new.users) if new.users else None
        if old is not None:
            old.close()
        self.bucket = TokenBucket(new.rate_limit) if new.rate_limit else None
        self.config = new
        return None


def install(app: web.Application, holder: WebConfigHolder) -> None:
    """Basic auth and the rate limit (a middleware) and configured response headers (set as each response
    starts); both read the holder at each request, so a reload applies at once."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if holder.bucket is not None and not holder.bucket.take():
            return web.Response(status=429, text="too many requests\n")
        if holder.config.client_allowed_sans and not _san_allowed(request, holder.config.client_allowed_sans):
            return web.Response(status=403, text="client certificate not allowed\n")
        if holder.auth is not None and not await holder.auth.check(request.headers.get("Authorization")):
            return web.Response(
                status=401, text="unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="llm-exporter"'}
            )
        return await handler(request)

    app.middlewares.append(guard)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in holder.config.headers.items():
            response.headers[name] = value

    app.on_response_prepare.append(add_headers)


def _san_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's client_allowed_sans: the verified client certificate names one of them."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return False
    names = {value for _, value in cert.get("subjectAltName", ())}
    return bool(names & set(allowed))
