"""`--web.config.file`: TLS and basic auth for the exporter's own endpoint, in the format of the
Prometheus exporter-toolkit, so operators reuse what they have for node_exporter:

    tls_server_config:
      cert_file: /etc/llm-exporter/tls.crt
      key_file: /etc/llm-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), RequestClientCert, ...
      client_ca_file: /etc/llm-exporter/ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

bcrypt is slow on purpose (~50 ms a check), so successful checks are cached (a bounded set of
SHA-256 digests of user:password, never the password). /healthz and /readyz stay open for probes.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .config import HEADER_NAME_RE, ConfigError, Document, Validator

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Open without a password: the kubelet's (and systemd's) liveness and readiness probes send none, and
# these answer only "ok" / "ready". TLS (with client certificates, if configured) still applies.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
AUTH_CACHE_SIZE = 256


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(256 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read web config: {exc.strerror or exc}", source=path) from None
    doc = Document(text, path, {})
    v = Validator(doc)
    top = v.mapping(doc.data, (), ("tls_server_config", "http_server_config", "basic_auth_users"))
    config = WebConfig()
    tls = v.mapping(top.get("tls_server_config"), ("tls_server_config",),
                    ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
                     "cipher_suites", "curve_preferences", "prefer_server_cipher_suites"))
    if tls:
        config.ssl_context = _ssl_context(tls, doc)
    http = v.mapping(top.get("http_server_config"), ("http_server_config",), ("headers", "http2"))
    headers = http.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and HEADER_NAME_RE.match(k) and isinstance(x, str)
                                                 for k, x in headers.items()):
        raise doc.error("expected a mapping of header names to strings", ("http_server_config", "headers"))
    config.headers = dict(headers)
    users = top.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise doc.error("expected a mapping of user names to bcrypt hashes", ("basic_auth_users",))
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise doc.error("expected a bcrypt hash ($2y$...)", ("basic_auth_users", user))
        config.users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return config


def _ssl_context(tls: dict[str, Any], doc: Document) -> ssl.SSLContext:
    path = ("tls_server_config",)
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            raise doc.error(f"missing required key {key!r}", path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls["cert_file"], tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise doc.error(f"cannot load certificate/key: {exc}", path + ("cert_file",)) from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise doc.error(f"unknown client_auth_type {auth!r}; one of {', '.join(CLIENT_AUTH)}",
                        path + ("client_auth_type",))
    context.verify_mode = CLIENT_AUTH[auth]
    if auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not tls.get("client_ca_file"):
        raise doc.error(f"client_auth_type {auth} needs client_ca_file", path)
    if tls.get("client_ca_file"):
        try:
            context.load_verify_locations(tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise doc.error(f"cannot load client CA: {exc}", path + ("client_ca_file",)) from None
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if tls.get(key):
            if tls[key] not in TLS_VERSIONS:
                raise doc.error(f"unknown TLS version {tls[key]!r}; one of {', '.join(TLS_VERSIONS)}", path + (key,))
            setattr(context, attr, TLS_VERSIONS[tls[key]])
    if "min_version" not in tls:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class BasicAuth:
    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self.accepted: OrderedDict[bytes, None] = OrderedDict()

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(hashed + b"\0" + user.encode() + b"\0" + password.encode()).digest()
        if digest in self.accepted:
            self.accepted.move_to_end(digest)
            return True
        import bcrypt

        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        self.accepted[digest] = None
        if len(self.accepted) > AUTH_CACHE_SIZE:
            self.accepted.popitem(last=False)
        return True


def install(app: web.Application, config: WebConfig) -> None:
    """Basic auth (a middleware) and configured response headers (set as each response starts)."""
    if config.users:
        auth = BasicAuth(config.users)

        @web.middleware
        async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            if request.path in OPEN_PATHS or auth.check(request.headers.get("Authorization")):
                return await handler(request)
            return web.Response(status=401, text="unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="llm-exporter"'})

        app.middlewares.append(guard)
    if config.headers:
        async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
            for name, value in config.headers.items():
                response.headers[name] = value

        app.on_response_prepare.append(add_headers)
