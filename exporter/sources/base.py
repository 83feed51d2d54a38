"""The source interface and the bounded HTTP fetcher that sources use.

A source turns one poll of a target into an `Observation`. It holds no
exposition logic and no derivation: only fetch + parse + map to unified keys.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp

from ..catalogue import BY_KEY
from ..config import EngineSpec, TargetConfig, read_small_file
from ..observation import ModelSample, ModelState, ModelStatus, Observation, PollError, Readiness, Reason
from ..passthrough import families as passthrough_families
from ..procinfo import ProcessFinder, ProcessInfo, find_by_port, still_running
from ..promparse import LabelCache, Payload, PromParseError, parse
from .mapping import Feed, apply, mapped_keys, prefixes


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    path: str = ""  # the path requested, with the URL's own prefix (for error messages)

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PollError(Reason.PARSE, f"response is not UTF-8 (byte {exc.start})") from None

    def json_object(self, limit: int = 1 << 20) -> dict[str, Any]:
        """The body as a JSON object, leniently: {} when it is not one (or longer than `limit`)."""
        if len(self.body) > limit:
            return {}
        try:
            value = json.loads(self.body.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}


class HttpFetcher:
    """GETs paths of one target with its headers, a size cap and the poll's deadline.

    Never follows redirects (a target must not send the exporter, with its
    credentials, elsewhere). Error messages carry the path, never headers.
    """

    def __init__(self, session: aiohttp.ClientSession, target: TargetConfig):
        self.session = session
        self.base_url = target.url
        self.base_path = urlsplit(target.url).path.rstrip("/")  # a reverse proxy's prefix: shown in errors
        self.headers = dict(target.headers)
        self.max_body = target.max_body_bytes
        self.setup_error: str | None = None  # reported by every poll, never a crash
        self.ssl: ssl.SSLContext | bool = True
        if target.tls is not None:
            try:
                self.ssl = _client_ssl(target)
            except (OSError, ssl.SSLError) as exc:
                files = ", ".join(f for f in (target.tls.ca_file, target.tls.cert_file, target.tls.key_file) if f)
                self.setup_error = f"cannot load the target's TLS files ({files}): {type(exc).__name__}: {exc}"
        if target.bearer_token_file:
            # Read when the poller is built: at start and on every reload (SIGHUP), as documented; opened
            # without blocking (a FIFO is refused, not waited on: this runs on the event loop).
            try:
                token = read_small_file(target.bearer_token_file, 16384).decode("utf-8").strip()
                if not token or "\n" in token or "\r" in token:
                    raise ValueError("empty or multi-line token")
                self.headers["Authorization"] = f"Bearer {token}"
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else str(exc)
                self.setup_error = f"cannot read bearer_token_file {target.bearer_token_file}: {detail}"

    async def get(self, path: str) -> Response:
        if self.setup_error is not None:
            raise PollError(Reason.OTHER, self.setup_error)
        url = self.base_url + path
        path = self.base_path + path  # errors name the path really requested
        try:
            async with self.session.get(url, headers=self.headers, allow_redirects=False, ssl=self.ssl) as resp:
                declared = resp.content_length
                if declared is not None and declared > self.max_body:
                    raise PollError(
                        Reason.TOO_LARGE,
                        f"GET {path}: body of {declared} bytes exceeds max_body_bytes ({self.max_body})",
                    )
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > self.max_body:
                        raise PollError(
                            Reason.TOO_LARGE, f"GET {path}: body exceeds max_body_bytes ({self.max_body}); read cut"
                        )
                return Response(resp.status, resp.headers, bytes(body), path)
        except PollError:
            raise
        except TimeoutError:
            raise PollError(Reason.TIMEOUT, f"GET {path}: timed out") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PollError(Reason.TLS, f"GET {path}: TLS certificate rejected: {exc.certificate_error}") from None
        except aiohttp.ClientConnectorSSLError as exc:
            raise PollError(Reason.TLS, f"GET {path}: TLS handshake failed: {_short(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ssl.SSLError):
                raise PollError(Reason.TLS, f"GET {path}: TLS handshake failed: {_short(exc.os_error)}") from None
            kind = "DNS lookup failed" if _is_dns_error(exc) else "cannot connect"
            raise PollError(Reason.CONNECT, f"GET {path}: {kind}: {_short(exc.os_error)}") from None
        except aiohttp.ClientSSLError as exc:
            raise PollError(Reason.TLS, f"GET {path}: TLS error: {_short(exc)}") from None
        except aiohttp.ClientPayloadError:
            # The connection dropped mid-body: worth another try within the poll's budget.
            raise TransientPollError(Reason.OTHER, f"GET {path}: truncated or malformed response body") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise TransientPollError(Reason.OTHER, f"GET {path}: connection lost: {_short(exc)}") from None
        except aiohttp.ClientResponseError as exc:
            raise PollError(Reason.OTHER, f"GET {path}: bad HTTP response: {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise PollError(Reason.OTHER, f"GET {path}: {type(exc).__name__}") from None
        except ssl.SSLError as exc:
            raise PollError(Reason.TLS, f"GET {path}: TLS error: {_short(exc)}") from None


def _client_ssl(target: TargetConfig) -> ssl.SSLContext:
    tls = target.tls
    assert tls is not None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TransientPollError(PollError):
    """A failure worth retrying within the same poll (connection reset, server closed keep-alive)."""


def _is_dns_error(exc: aiohttp.ClientConnectorError) -> bool:
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if dns_error is not None and isinstance(exc, dns_error):
        return True
    import socket

    return isinstance(exc.os_error, socket.gaierror)


def _short(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text if len(text) <= 200 else text[:197] + "..."


def parse_json(response: Response, path: str, want: type | None = None) -> Any:
    """A JSON body, or a `parse` error for this endpoint whatever it holds (200k-deep nesting raises
    RecursionError, a 5,000-digit number ValueError); `want`: the type the top level must have."""
    try:
        value = json.loads(response.text())
    except (ValueError, RecursionError) as exc:
        raise PollError(Reason.PARSE, f"{path}: invalid JSON: {str(exc)[:100]}") from None
    if want is not None and not isinstance(value, want):
        raise PollError(Reason.PARSE, f"{path}: expected a JSON {'object' if want is dict else want.__name__}")
    return value


def expect_status(response: Response, path: str, *ok: int) -> None:
    if response.status not in (ok or (200,)):
        raise PollError(Reason.HTTP_STATUS, f"GET {response.path or path}: HTTP {response.status}")


OFF_LOOP_BYTES = 256 * 1024  # /metrics bodies larger than this are parsed off the event loop
PASSTHROUGH_UNPARSED = (
    "pass-through: /metrics is not valid Prometheus text beyond the engine's own families; "
    "nothing is passed through while it is not"
)
PORT_SCAN_SECONDS = 5.0  # how often /proc is scanned for an engine not found by its port


T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class ResourceKey(Generic[T]):
    """Names one process-wide resource that targets share (aiohttp's AppKey pattern): the module that
    owns the resource declares the key and how the resource is closed; the base class knows no engine."""

    name: str
    close: Callable[[T], None]


@dataclass
class SharedContext:
    """What the exporter gives every source: the one HTTP client, process-wide resources (by typed key,
    created on first use, closed by their own hook when the exporter stops) and the parsed label blocks
    each engine's targets share."""

    session: aiohttp.ClientSession | None = None
    label_caches: dict[str, LabelCache] = field(default_factory=dict)
    resources: dict[ResourceKey[Any], Any] = field(default_factory=dict)

    def get(self, key: ResourceKey[T]) -> T | None:
        return cast("T | None", self.resources.get(key))

    def get_or_create(self, key: ResourceKey[T], create: Callable[[], T]) -> T:
        if key not in self.resources:
            self.resources[key] = create()
        return cast(T, self.resources[key])

    def label_cache(self, engine: str) -> LabelCache:
        cache = self.label_caches.get(engine)
        if cache is None:
            cache = self.label_caches[engine] = LabelCache(max_entries=200_000)
        return cache

    def close(self) -> None:
        """Close every shared resource, newest first, each by its key's hook (NVML: nvmlShutdown)."""
        while self.resources:
            key, value = self.resources.popitem()
            key.close(value)


def is_loopback_url(url: str) -> bool:
    """The URL names this host (localhost or a loopback address): the engine runs beside the exporter."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Every Source subclass that names an `engine` registers itself here when its class is defined (the
# node_exporter pattern: one file per collector, registered by name). sources/__init__.py imports every
# module of the package, so adding an engine is adding one file.
REGISTRY: dict[str, type[Source]] = {}


class Source(abc.ABC):
    """One engine kind: everything the exporter knows about that engine is declared on its class.

    Instances live as long as their target's config does.
    """

    engine: ClassVar[str]  # the `engine:` value in the config
    title: ClassVar[str] = ""  # its name in the docs
    needs_url: ClassVar[bool] = True  # False: it polls no HTTP endpoint (nvml)
    mapping: ClassVar[tuple[Feed, ...]] = ()  # upstream family → unified metric (docs are generated from it)
    model_label: ClassVar[str] = ""  # the upstream label naming the model; "" = one model per target
    metrics_prefix: ClassVar[str] = ""  # `engine: auto`: a /metrics family prefix only this engine uses
    detect_probe: ClassVar[tuple[str, str] | None] = None  # `engine: auto`: (path, JSON key) it answers with
    detect_priority: ClassVar[int] = 100  # `engine: auto`: probes are tried in this order (lower first)
    metrics_path: ClassVar[str] = "/metrics"  # where its Prometheus text is (TensorRT-LLM: /prometheus/metrics)
    docs: ClassVar[str] = ""  # markdown shown after its mapping table in docs/metrics.md
    endpoints: ClassVar[tuple[str, ...]] = ()  # paths it requests beyond metrics_path and detect_probe

    @classmethod
    def recognises(cls, metrics: Response) -> bool:
        """`engine: auto`: whether a non-200 answer to GET /metrics is this engine's own (an error envelope
        only it sends). The default: no."""
        return False

    @classmethod
    def spec(cls) -> EngineSpec:
        """What config validation needs of this engine (handed to config by the code that wires it)."""
        if not cls.needs_url:
            return EngineSpec(needs_url=False)
        paths = {path for klass in cls.__mro__ for path in vars(klass).get("endpoints", ())}
        paths.add(cls.metrics_path)
        if cls.detect_probe is not None:
            paths.add(cls.detect_probe[0])
        return EngineSpec(needs_url=True, endpoints=tuple(sorted(paths)))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(key for key in mapped_keys(cls.__dict__.get("mapping", ())) if key not in BY_KEY)
        if unknown:  # caught when the engine's module is imported, not as a silently missing series
            raise TypeError(
                f"{cls.__name__}.mapping feeds unified keys the catalogue does not know: "
                f"{', '.join(unknown)} (add them to exporter/catalogue.py)"
            )
        if "engine" in cls.__dict__:
            REGISTRY[cls.engine] = cls

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        self.target = target
        self.shared = shared or SharedContext()
        match = target.process
        self.finder = ProcessFinder(match.pid_file, match.name, match.cmdline) if match else None
        self.fed_by: dict[str, str] = {}  # unified key → the upstream family that fed it this poll (debug view)

    def locate_process(self, observation: Observation) -> None:
        """The engine process the target's `process:` names (same host, or a shared PID namespace): its
        PID, and its start time from /proc unless the engine already reported one."""
        info = self.finder.find() if self.finder is not None else None
        if info is None:
            return
        observation.process_pid = info.pid
        if observation.process_start_time is None:
            observation.process_start_time = info.start_time
            observation.process_start_basis = "proc"

    async def poll(self) -> Observation:
        """One poll: `collect()`, with which upstream family fed each unified key in this poll only."""
        self.fed_by = {}
        observation = await self.collect()
        observation.fed_by = self.fed_by
        return observation

    @abc.abstractmethod
    async def collect(self) -> Observation:
        """Poll the target once. Raise PollError for a failed poll."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing to release
        """Release resources held for this target."""


class HttpSource(Source):
    """A source that polls its target over HTTP: owns the target's bounded fetcher."""

    # The engine's program names in /proc (see is_engine_process) and the port it listens on without --port:
    # with them, the engine process beside the exporter is found by the port in its command line.
    process_programs: ClassVar[tuple[str, ...]] = ()
    default_port: ClassVar[int | None] = None
    # every HTTP engine: health checks, and the OpenAI API prefix (a URL ending in /v1 is a common slip)
    endpoints: ClassVar[tuple[str, ...]] = ("/metrics", "/health", "/healthz", "/v1")
    hint: ClassVar[str] = "not this engine?"  # what to check when /metrics has none of its families
    extra_families: ClassVar[tuple[str, ...]] = ()  # families read beyond the mapping's

    def is_engine_process(self, argv: tuple[str, ...]) -> bool:
        return bool(argv) and os.path.basename(argv[0]) in self.process_programs

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        if self.shared.session is None:
            raise ValueError("an HTTP source needs the exporter's HTTP client (SharedContext.session)")
        self.http = HttpFetcher(self.shared.session, target)
        self._families: tuple[str, ...] | None = None
        self._by_port: ProcessInfo | None = None
        self._port_scanned = -PORT_SCAN_SECONDS

    @property
    def same_host(self) -> bool:
        """The engine runs beside the exporter (a loopback URL, or a `process:` to find it by)."""
        return is_loopback_url(self.target.url) or self.target.process is not None

    def rescan_by_port(self) -> None:
        """The engine is a new process (its identity changed): look for it by port at the next call, not
        after the scan throttle (a restart within PORT_SCAN_SECONDS of the last scan would go unseen)."""
        self._by_port = None
        self._port_scanned = -PORT_SCAN_SECONDS
        if self.finder is not None:
            self.finder.rescan()

    def process_by_port(self) -> ProcessInfo | None:
        """The engine process beside the exporter, found by the port in its command line (no `process:`, no
        privileges: every user can read command lines); looked for again at most every PORT_SCAN_SECONDS while
        not found, and followed while it lives."""
        if not self.process_programs or not is_loopback_url(self.target.url):
            return None
        known = self._by_port
        if known is not None and still_running(known):
            return known
        now = time.monotonic()
        if known is None and now - self._port_scanned < PORT_SCAN_SECONDS:
            return None
        self._port_scanned = now
        port = urlsplit(self.target.url).port or (443 if self.target.url.startswith("https") else 80)
        self._by_port = find_by_port(port, self.is_engine_process, self.default_port)
        return self._by_port

    def families(self) -> tuple[str, ...]:
        """Family-name prefixes the parser keeps (it skips every other family's block unread)."""
        if self._families is None:
            self._families = prefixes(self.mapping, *self.extra_families)
        return self._families

    async def still_loading(self) -> bool:
        """GET /health: True on 503 (the engine is up but still loading), fine on 200, a failure else."""
        health = await self.http.get("/health")
        if health.status == 503:
            return True
        expect_status(health, "/health")
        return False

    async def read_metrics(self) -> tuple[Payload, str]:
        """GET `metrics_path` and parse the mapping's families and `extra_families`; a payload without any
        series named with `metrics_prefix` is not this engine's (a PARSE failure saying `hint`)."""
        families, marker = self.families(), self.metrics_prefix
        response = await self.http.get(self.metrics_path)
        expect_status(response, self.metrics_path)
        text = response.text()
        cache = self.shared.label_cache(self.engine)
        if len(text) > OFF_LOOP_BYTES:
            # A large payload is parsed in a worker thread: the parser is Python, so the interpreter switches
            # to the event loop every few milliseconds and other targets and scrapes stay on time (and the
            # poll's deadline can end the wait).
            payload = await asyncio.to_thread(parse_metrics, text, families, cache, self.target.max_series)
        else:
            payload = parse_metrics(text, families, cache, self.target.max_series)
        if not any(name.startswith(marker) for name in payload.samples):
            raise PollError(Reason.PARSE, f"/metrics has no {marker} series ({self.hint})")
        return payload, text

    async def add_passthrough(self, observation: Observation, text: str) -> None:
        """The engine's own families, when the target asked for `passthrough: true` (samples.py re-exposes
        them): all of them, or only those named with its prefix (`own`). A payload that does not parse as a
        whole (the mapping read only the engine's families) is a notice, and nothing is passed through."""
        if not self.target.passthrough:
            return
        prefix = self.metrics_prefix if self.target.passthrough == "own" else ""
        reserved = frozenset({"target", "engine", "model", *dict(self.target.labels)})
        args = (text, prefix, reserved, self.target.max_series)
        try:
            if len(text) > OFF_LOOP_BYTES:
                kept, dropped = await asyncio.to_thread(passthrough_families, *args)
            else:
                kept, dropped = passthrough_families(*args)
        except PromParseError:
            observation.notices += (PASSTHROUGH_UNPARSED,)
            return
        observation.passthrough, observation.passthrough_dropped = tuple(kept), dropped


def parse_metrics(
    text: str, prefixes: tuple[str, ...] | None, labels: LabelCache | None, max_samples: int | None = None
) -> Payload:
    """Parse a /metrics body; a malformed one is a PARSE failure."""
    try:
        return parse(text, prefixes, labels, max_samples)
    except PromParseError as exc:
        raise PollError(Reason.PARSE, f"/metrics: {exc}") from None


class PrometheusTextSource(HttpSource):
    """The template of an engine that serves Prometheus text, one poll in one place: not ready yet
    (`not_ready`), read `metrics_path`, map with `mapping`, `extend` with what only this engine has,
    pass-through, the served model's status (`model_status`). An engine with nothing more to it declares its
    table and identity and writes no method at all (TensorRT-LLM, LMDeploy); `hint` names what to check when
    the payload has none of the engine's families."""

    model_states: ClassVar[tuple[ModelState, ...]] = (ModelState.LOADED, ModelState.LOADING)

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.served_model = ""  # the model it served last (named while it loads again)

    async def collect(self) -> Observation:
        early = await self.not_ready()
        if early is not None:
            return early
        payload, text = await self.read_metrics()
        models, misses = self.map(payload)
        observation = Observation(
            Readiness.READY,
            models=models,
            mapping_misses=tuple(misses),
            dropped_series=payload.dropped,
            model_states=self.model_states,
        )
        await self.add_passthrough(observation, text)
        self.extend(observation, payload)
        self.served_model = self.model_name(models) or self.served_model
        observation.lifecycle[""] = self.model_status(observation, payload)
        return observation

    # --- hooks: the defaults fit an engine whose /health answers 503 while loading

    async def not_ready(self) -> Observation | None:
        """What to report instead of reading metrics (still loading, dead), or None to read them."""
        return self.loading() if await self.still_loading() else None

    def loading(self) -> Observation:
        """The engine answers but is still loading its model."""
        observation = Observation(Readiness.LOADING, model_states=self.model_states)
        observation.lifecycle[""] = ModelStatus(ModelState.LOADING, model=self.served_model)
        return observation

    def map(self, payload: Payload) -> tuple[dict[str, ModelSample], list[str]]:
        """Unified samples per model, and the required families the payload lacked."""
        return apply(payload, self.mapping, self.model_label, chosen_by_key=self.fed_by)

    def extend(self, observation: Observation, payload: Payload) -> None:
        """Add what only this engine reports (info, timings, extra series)."""

    def model_name(self, models: dict[str, ModelSample]) -> str:
        """The model this target serves (one per target); "" when the payload names none."""
        return min(models, default="")

    def model_status(self, observation: Observation, payload: Payload) -> ModelStatus:
        """The served model's lifecycle status once metrics were read."""
        return ModelStatus(ModelState.LOADED, model=self.served_model)
