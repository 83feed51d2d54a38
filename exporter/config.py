"""Configuration: YAML → typed, validated dataclasses.

Every error names the file, the line and the key path, and near-miss keys get a
"did you mean" hint. `${VAR}` and `${VAR:-default}` in string values expand from
the environment (after YAML parsing, so a secret containing YAML syntax cannot
change the document's structure).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import yaml

RESERVED_LABELS = frozenset({"target", "engine", "model", "job", "instance", "le", "quantile"})
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
NAMESPACE_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
DEFAULT_LISTEN = "0.0.0.0:9787"
DEFAULT_PORT = 9787


class ConfigError(Exception):
    """A configuration problem, with where it is."""

    def __init__(self, message: str, *, source: str = "<config>", line: int | None = None, key: str | None = None):
        self.source, self.line, self.key = source, line, key
        where = source + (f":{line}" if line else "")
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


class ConfigErrors(ConfigError):
    """Every problem found in one config, in file order (reported together, not one per try)."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        first = errors[0]
        self.source, self.line, self.key = first.source, first.line, first.key
        Exception.__init__(self, f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors))


# --------------------------------------------------------------------------- parsing helpers


def parse_duration(value: Any) -> float:
    """ "500ms", "5s", "1m", "1.5h" → seconds. A bare number is refused: `5` could mean seconds or
    milliseconds, so the unit is required."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {value!r}")
    if isinstance(value, (int, float)):
        raise ValueError(f"a duration needs a unit (500ms, 5s, 1m), got {value!r}")
    match = DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {value!r}")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds > 0 or seconds != seconds or seconds > 86400:
        raise ValueError(f"duration must be between 0 and 24h, got {value!r}")
    return seconds


MIN_INTERVAL = 0.1  # seconds: a poll every 100 ms is already 10 requests a second to one engine


def parse_interval(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < MIN_INTERVAL:
        raise ValueError(f"interval must be at least {MIN_INTERVAL * 1000:g}ms, got {value!r}")
    return seconds


def redact_url(value: str) -> str:
    """A URL as errors and logs may show it: user info, query and fragment replaced (they carry tokens)."""
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "<redacted>@" + authority.rpartition("@")[2]
    for mark in ("?", "#"):
        if mark in path:
            path = path.split(mark, 1)[0] + mark + "<redacted>"
        if mark in authority:
            authority = authority.split(mark, 1)[0] + mark + "<redacted>"
    return f"{scheme}{sep}{authority}{slash}{path}"


FILE_READ_LIMIT = 1024 * 1024


def read_small_file(path: str, limit: int = FILE_READ_LIMIT) -> bytes:
    """Read a file a config names (token, key, config) without ever blocking on it: opened non-blocking
    (a FIFO or a device would wait for a writer), refused unless it is a regular file, read up to `limit`.
    A hung network mount can still block open(): callers on the event loop use read_off_loop()."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


async def read_off_loop(call: Callable[[], Any], limit_s: float, what: str) -> Any:
    """Run blocking file work (a config reload, a token read) in a daemon thread, waiting at most `limit_s`:
    a hung mount fails it with a clear error instead of hanging the reload, later reloads and shutdown (a
    daemon thread is never joined at exit, unlike the default executor's)."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, call())
        except BaseException as exc:  # handed to the waiting coroutine
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone (the exporter stopped): nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=f"read:{what}", daemon=True).start()
    try:
        async with asyncio.timeout(limit_s):
            return await future
    except TimeoutError:
        raise ConfigError(
            f"reading {what} did not finish within {limit_s:g}s (a hung mount or a FIFO?)", source=what
        ) from None


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 8MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = SIZE_RE.match(str(value))
        if not match:
            raise ValueError(f"expected a size like 65536, 512KiB or 8MiB, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size < 1024 or size > 1024**3:
        raise ValueError(f"size must be between 1KiB and 1GiB, got {value!r}")
    return size


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port (e.g. 0.0.0.0:{DEFAULT_PORT}), got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True)
class EngineSpec:
    """What validation needs to know of one engine. The code that wires the exporter hands these in
    (`sources.engine_specs()`): config imports nothing from the rest of the package."""

    needs_url: bool = True  # False: it polls no HTTP endpoint (nvml)
    endpoints: tuple[str, ...] = ()  # the paths it requests: a target URL ending in one of them is refused


def validate_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {redact_url(value)!r}")
    if "@" in parts.netloc:
        raise ValueError("credentials in the URL are not allowed; use headers with ${ENV} instead")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError as exc:
        raise ValueError(f"bad port in URL {redact_url(value)!r}: {exc}") from None
    if parts.query or parts.fragment:
        raise ValueError(
            f"the URL must not carry a query or fragment ({redact_url(value)!r}): give the server's "
            "base URL, the exporter adds each endpoint's path"
        )
    return value.rstrip("/")


def check_base_url(value: str, endpoints: Sequence[str]) -> None:
    """A target's URL is the server's base: refuse one that ends in a path an engine requests (a common
    slip: `http://h:8000/metrics`, `/v1`), which would make every poll ask for `/metrics/metrics`."""
    path = urlsplit(value).path.rstrip("/")
    endpoint = next((e for e in sorted(endpoints, key=len, reverse=True) if path == e or path.endswith(e)), None)
    if endpoint is not None:
        base = value[: value.rstrip("/").rfind(endpoint)]
        raise ValueError(
            f"the URL ends in the endpoint {endpoint} ({value!r}): give the server's base URL "
            f"({base or value!r}), the exporter adds each endpoint's path"
        )


def expand_env(text: str, environ: dict[str, str] | os._Environ[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise KeyError(name)

    return ENV_RE.sub(repl, text)


# --------------------------------------------------------------------------- YAML with positions

MAX_NODES, MAX_DEPTH = 100_000, 64  # YAML aliases can expand exponentially ("billion laughs")


class Document:
    """A YAML document converted to plain Python, remembering each key path's line."""

    def __init__(self, text: str, source: str, environ: dict[str, str] | os._Environ[str]):
        self.source = source
        self.lines: dict[tuple[Any, ...], int] = {}
        self.environ = environ
        self.nodes = 0
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except RecursionError:
            raise ConfigError("invalid YAML: nested too deeply", source=source) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(
                f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                source=source,
                line=mark.line + 1 if mark else None,
            ) from None
        self.data = self._convert(node, ()) if node is not None else {}

    def _convert(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(path) > MAX_DEPTH:
            raise self.error(
                "config too large or too deeply nested (recursive or exploding YAML aliases?)", path[:MAX_DEPTH], node
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.error("mapping keys must be plain strings", path, key_node)
                key = key_node.value
                if key in out:
                    raise self.error(f"duplicate key {key!r}", path + (key,), key_node)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self._convert(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, path + (i,)) for i, item in enumerate(node.value)]
        style = node.style if isinstance(node, yaml.ScalarNode) else None
        if node.tag == "tag:yaml.org,2002:str" or style in ("'", '"', "|", ">"):
            return self._expand(node.value, path)
        if "${" in node.value:
            return self._expand(node.value, path)
        try:
            return yaml.SafeLoader(node.value).construct_object(node)  # ints, floats, bools, null
        except yaml.YAMLError as exc:
            raise self.error(f"cannot read value: {exc}", path, node) from None

    def _expand(self, value: str, path: tuple[Any, ...]) -> str:
        try:
            return expand_env(value, self.environ)
        except KeyError as missing:
            raise ConfigError(
                f"environment variable ${{{missing.args[0]}}} is not set and has no "
                f"default (write ${{{missing.args[0]}:-default}} to give one)",
                source=self.source,
                line=self.lines.get(path),
                key=_dotted(path),
            ) from None

    def error(self, message: str, path: tuple[Any, ...], node: yaml.Node | None = None) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else self.line(path)
        return ConfigError(message, source=self.source, line=line, key=_dotted(path) or None)

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- validation


class Validator:
    def __init__(self, doc: Document):
        self.doc = doc

    def mapping(self, value: Any, path: tuple[Any, ...], allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.doc.error(f"expected a mapping, got {_kind(value)}", path)
        for key in value:
            if key not in allowed:
                hint = _close_match(key, allowed, 0.6)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(allowed)})"
                raise self.doc.error(f"unknown key {key!r}{suggestion}", path + (key,))
        return value

    def field(
        self,
        mapping: dict[str, Any],
        key: str,
        path: tuple[Any, ...],
        convert: Callable[[Any], Any],
        default: Any = None,
        required: bool = False,
    ) -> Any:
        if key not in mapping or mapping[key] is None:
            if required:
                raise self.doc.error(f"missing required key {key!r}", path)
            return default
        try:
            return convert(mapping[key])
        except (ValueError, TypeError) as exc:
            raise self.doc.error(str(exc), path + (key,)) from None

    def values(
        self, cls: type, mapping: dict[str, Any], path: tuple[Any, ...], inherited: Any = None
    ) -> dict[str, Any]:
        """The values of a section's plain keys, parsed as its fields say; a missing key takes its default,
        or the `defaults:` entry it inherits (from `inherited`)."""
        out: dict[str, Any] = {}
        for spec in fields(cls):
            meta = spec.metadata
            if meta.get("parse") is None:
                continue
            default = getattr(inherited, meta["inherit"]) if meta.get("inherit") and inherited else spec.default
            out[spec.name] = self.field(mapping, spec.name, path, meta["parse"], default, meta["required"])
        return out

    def section(self, cls: type, raw: Any, path: tuple[Any, ...]) -> dict[str, Any]:
        """A nested section (process:, tls:): only its own keys, each parsed as its field says."""
        return self.values(cls, self.mapping(raw, path, config_keys(cls)), path)


def _close_match(word: str, choices: Sequence[str], cutoff: float) -> list[str]:
    import difflib  # only on the error path: keeps the sidecar's resident memory down

    return difflib.get_close_matches(word, choices, n=1, cutoff=cutoff)


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def _string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {_kind(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        raise ValueError(f"expected a whole number, got {value!r}")
    if not 1 <= number <= 10_000_000:
        raise ValueError(f"expected a number between 1 and 10000000, got {number}")
    return number


def _engine(value: Any, engines: Mapping[str, EngineSpec]) -> str:
    engine = _string(value)
    if engine not in engines:
        names = sorted(engines)
        hint = _close_match(engine, names, 0.5)
        raise ValueError(
            f"unknown engine {engine!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known engines: {', '.join(names)}"
        )
    return engine


def _str_map(
    value: Any, what: str, name_re: re.Pattern[str], reserved: frozenset[str] = frozenset()
) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of {what}, got {_kind(value)}")
    out = []
    for key, item in value.items():
        if not name_re.match(key):
            raise ValueError(f"invalid {what[:-1]} name {key!r}")
        if key in reserved or key.startswith("__"):
            raise ValueError(f"label name {key!r} is reserved")
        text = _string(item)
        if "\n" in text or "\r" in text:
            raise ValueError(f"{what[:-1]} {key!r} must not contain a newline")
        out.append((key, text))
    return tuple(out)


def _namespace(value: Any) -> str:
    text = _string(value)
    if not NAMESPACE_RE.match(text):
        raise ValueError(f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {text!r}")
    return text


def _listen(value: Any) -> str:
    text = _string(value)
    parse_listen(text)
    return text


def _regex(value: Any) -> str:
    text = _string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    return text


# --------------------------------------------------------------------------- schema
# Each key is stated once: a dataclass field whose metadata says how its YAML value is parsed. The
# allowed keys, their defaults, their parsing and the "did you mean" suggestions all come from here
# (`Validator.values`); docs/config's example is checked against the same fields (tests/unit/test_config.py).


def key(
    parse: Callable[[Any], Any] | None,
    default: Any = None,
    *,
    required: bool = False,
    inherit: str = "",
    repr: bool = True,
) -> Any:
    """A config key: `parse` turns its YAML value into the field's value (None: a nested section or a
    rule of build_config); `inherit` names the `defaults:` entry that is its default."""
    return field(default=default, repr=repr, metadata={"parse": parse, "required": required, "inherit": inherit})


def _labels(value: Any) -> tuple[tuple[str, str], ...]:
    return _str_map(value, "labels", LABEL_NAME_RE, RESERVED_LABELS)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = _str_map(value, "headers", HEADER_NAME_RE)
    for name, text in pairs:
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
            raise ValueError(f"header {name} has a control character in its value (not shown: it may be a secret)")
    return pairs


def _url(value: Any) -> str:
    return validate_url(_string(value))


def _passthrough(value: Any) -> str:
    if value is True or value == "own":
        return "own"
    if value is False:
        return ""
    if value == "all":
        return "all"
    raise ValueError(
        f"expected true (the engine's own families), all (every family of its payload) or false, got {value!r}"
    )


def _target_name(value: Any) -> str:
    name = _string(value)
    if not 0 < len(name) <= 128 or not name.isprintable():
        raise ValueError("target name must be 1-128 printable characters")
    return name


@dataclass(frozen=True)
class ProcessMatch:
    """How to find a target's engine process on this host (or a shared PID namespace)."""

    pid_file: str | None = key(_string)
    name: str | None = key(_string)  # exact /proc/<pid>/comm
    cmdline: str | None = key(_regex)  # regular expression searched in the command line


@dataclass(frozen=True)
class TargetTLS:
    ca_file: str | None = key(_string)
    cert_file: str | None = key(_string)
    key_file: str | None = key(_string)
    insecure_skip_verify: bool = key(_bool, False)


@dataclass(frozen=True)
class Defaults:
    interval: float = key(parse_interval, 5.0)
    timeout: float = key(parse_duration, 3.0)
    window: float = key(parse_duration, 60.0)
    max_body_bytes: int = key(parse_size, 8 * 1024 * 1024)
    max_series: int = key(_int, 10_000)


@dataclass(frozen=True)
class TargetConfig:
    name: str = key(_target_name, "", required=True)
    engine: str = key(None, "", required=True)  # checked against the registered sources
    url: str = key(_url, "")  # required unless the engine polls no HTTP endpoint
    interval: float = key(parse_interval, 0.0, inherit="interval")
    timeout: float = key(parse_duration, 0.0, inherit="timeout")  # also at most the interval
    window: float = key(parse_duration, 0.0, inherit="window")
    max_body_bytes: int = key(parse_size, 0, inherit="max_body_bytes")
    max_series: int = key(_int, 0, inherit="max_series")
    labels: tuple[tuple[str, str], ...] = key(_labels, ())
    headers: tuple[tuple[str, str], ...] = key(_headers, (), repr=False)
    process: ProcessMatch | None = key(None)
    tls: TargetTLS | None = key(None)
    bearer_token_file: str | None = key(_string)
    passthrough: str = key(_passthrough, "")  # "": off; "own": the engine's own families; "all": everything
    optional: bool = key(_bool, False)  # may not exist on this host: llm_target_absent instead of an alert
    gpu_profiling: bool = key(_bool, True)  # nvml targets: GPM profiling counters (Hopper and newer)

    @property
    def identity(self) -> tuple[str, str]:
        """State survives a reload when this does not change."""
        return (self.name, self.engine)

    def same_poller(self, other: TargetConfig | None) -> bool:
        """A reload keeps this target's running poller: nothing changed, and it names no file (a token or
        certificate file may have been rotated, and a reload is how it is read again)."""
        return other == self and not self.bearer_token_file and self.tls is None


@dataclass(frozen=True)
class Config:
    listen: str = key(_listen, DEFAULT_LISTEN)
    namespace: str = key(_namespace, "llm")
    defaults: Defaults = key(None, Defaults())
    targets: tuple[TargetConfig, ...] = key(None, ())
    source: str = field(default="<config>", metadata={})  # where it was read from; not a key

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def config_keys(cls: type) -> tuple[str, ...]:
    """The YAML keys of a config section, in their documented order."""
    return tuple(f.name for f in fields(cls) if "parse" in f.metadata)


def build_config(data: Any, doc: Document, engines: Mapping[str, EngineSpec], check_files: bool = True) -> Config:
    """`engines`: the engines a target may name (`sources.engine_specs()`); `check_files`: whether the
    files a target names (TLS, bearer token) must be readable here (False only to check a config meant
    for another host, like the shipped examples)."""
    v = Validator(doc)
    top = v.mapping(data, (), config_keys(Config))
    values = v.values(Config, top, ())
    defaults = Defaults(
        **v.values(Defaults, v.mapping(top.get("defaults"), ("defaults",), config_keys(Defaults)), ("defaults",))
    )
    raw_targets = top.get("targets") or []
    if not isinstance(raw_targets, list):
        raise doc.error(f"expected a list of targets, got {_kind(raw_targets)}", ("targets",))
    if not raw_targets:
        raise doc.error(
            "the config defines no targets (an empty file, or one with comments only?): "
            "the exporter would monitor nothing",
            ("targets",),
        )
    targets: list[TargetConfig] = []
    seen: dict[str, int] = {}
    errors: list[ConfigError] = []
    for index, raw in enumerate(raw_targets):
        try:
            targets.append(_target(v, raw, ("targets", index), defaults, engines, seen, check_files))
        except ConfigError as exc:  # keep going: every broken target is reported at once
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return Config(**values, defaults=defaults, targets=tuple(targets), source=doc.source)


def _target(
    v: Validator,
    raw: Any,
    path: tuple[Any, ...],
    defaults: Defaults,
    engines: Mapping[str, EngineSpec],
    seen: dict[str, int],
    check_files: bool,
) -> TargetConfig:
    """One target: its keys from the schema, then the rules that tie keys together."""
    doc = v.doc
    t = v.mapping(raw, path, config_keys(TargetConfig))
    if not t:
        raise doc.error("a target needs at least name and engine", path)
    values = v.values(TargetConfig, t, path, inherited=defaults)
    name = values["name"]
    if name in seen:
        raise doc.error(f"duplicate target name {name!r} (first at targets[{seen[name]}])", path + ("name",))
    seen[name] = int(path[-1])
    engine = values["engine"] = v.field(t, "engine", path, lambda x: _engine(x, engines), required=True)
    if not engines[engine].needs_url and t.get("url") is not None:
        raise doc.error(f"url is not used by engine {engine} (it polls no HTTP endpoint): remove it", path + ("url",))
    if engines[engine].needs_url and not values["url"]:
        raise doc.error("missing required key 'url'", path)
    if values["url"]:
        try:
            check_base_url(values["url"], [e for spec in engines.values() for e in spec.endpoints])
        except ValueError as exc:
            raise doc.error(str(exc), path + ("url",)) from None
    interval = values["interval"]
    if t.get("timeout") is None:
        values["timeout"] = min(defaults.timeout, interval)  # the default timeout never exceeds the interval
    if values["timeout"] > interval:
        raise doc.error(
            f"timeout ({values['timeout']:g}s) must not exceed interval ({interval:g}s): "
            "polls of one target never overlap",
            path + ("timeout",),
        )
    if values["window"] < 2 * interval:
        raise doc.error(
            f"window ({values['window']:g}s) must cover at least two polls (interval {interval:g}s)", path + ("window",)
        )
    if t.get("process") is not None:
        process = ProcessMatch(**v.section(ProcessMatch, t["process"], path + ("process",)))
        if not (process.pid_file or process.name or process.cmdline):
            raise doc.error("process needs one of pid_file, name, cmdline", path + ("process",))
        values["process"] = process
    if t.get("tls") is not None:
        tls = TargetTLS(**v.section(TargetTLS, t["tls"], path + ("tls",)))
        if bool(tls.cert_file) != bool(tls.key_file):
            raise doc.error("cert_file and key_file go together", path + ("tls",))
        values["tls"] = tls
    if values["bearer_token_file"] and any(k.lower() == "authorization" for k, _ in values["headers"]):
        raise doc.error(
            "give either bearer_token_file or an Authorization header, not both", path + ("bearer_token_file",)
        )
    files: list[tuple[tuple[str, ...], str | None]] = [(("bearer_token_file",), values["bearer_token_file"])]
    if values.get("tls") is not None:
        files += [(("tls", key), getattr(values["tls"], key)) for key in ("ca_file", "cert_file", "key_file")]
    for where, file in files if check_files else ():
        problem = _unreadable(file, certificates=where == ("tls", "ca_file")) if file else None
        if problem:
            raise doc.error(f"cannot read {file}: {problem}", path + where)
    return TargetConfig(**values)


def _unreadable(path: str, certificates: bool = False) -> str | None:
    """Why a file the config names cannot be read (None when it can): checked at load and on every reload,
    so --check-config catches it, and a running exporter keeps its old config. `certificates`: the file
    must hold at least one PEM certificate (a CA file)."""
    try:
        data = read_small_file(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if certificates and b"-----BEGIN CERTIFICATE-----" not in data:
        return "it holds no PEM certificate"
    return None


def load_config_text(
    text: str,
    source: str = "<config>",
    environ: dict[str, str] | os._Environ[str] | None = None,
    *,
    engines: Mapping[str, EngineSpec],
    check_files: bool = True,
) -> Config:
    doc = Document(text, source, os.environ if environ is None else environ)
    return build_config(doc.data, doc, engines, check_files=check_files)


def load_config(
    path: str | None,
    environ: dict[str, str] | os._Environ[str] | None = None,
    *,
    engines: Mapping[str, EngineSpec],
    check_files: bool = True,
) -> Config:
    """Load FILE, or the embedded default config when path is None."""
    if path is None:
        from importlib import resources  # only for the embedded default

        text = resources.files("exporter").joinpath("default_config.yaml").read_text(encoding="utf-8")
        return load_config_text(text, "<embedded default config>", environ, engines=engines)
    try:
        text = read_small_file(path).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", source=path) from None
    except UnicodeDecodeError:
        raise ConfigError("config is not valid UTF-8", source=path) from None
    if len(text) > 1024 * 1024:
        raise ConfigError("config is larger than 1 MiB", source=path)
    return load_config_text(text, path, environ, engines=engines, check_files=check_files)
