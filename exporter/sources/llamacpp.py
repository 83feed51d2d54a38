"""llama.cpp's llama-server: /metrics, /slots, /props, /health, and /models in router mode.

What llama-server hides and how this source recovers it:
- readiness: /metrics (or /health) answers 503 {"error":{"message":"Loading model"}} while
  loading, and refuses connections before it listens;
- the moment loading finished: the /metrics header `Process-Start-Time-Unix` is, despite
  its name, CLOCK_MONOTONIC microseconds at that moment (same host only);
- queue wait: not reported at all; `requests_deferred` plus each slot's `id_task` feed the
  estimator in derive/queue_estimate.py;
- KV-cache hits: `prompt_tokens_cached_total` (hits) and `prompt_tokens_total` (misses).

Never wake, never keep awake (tools/server/README.md, "Sleeping on Idle"): GET /health, /props,
/models and /metrics do not count as tasks and do not reset the idle timer; GET /slots does. So
/slots is read only while /metrics shows work in flight (processing or deferred > 0): then the
server is busy anyway. Idle, the source reads /props instead (its `is_sleeping` is the sleep
state). Without /metrics (--metrics off) it never reads /slots.

Router mode (`llama-server --models-dir ...`, no model): /metrics without ?model= answers 400
"model name is missing". The source then lists models with GET /models (status per model:
loaded, loading, sleeping, unloaded, failed, downloading) and reads each loaded model's
`/metrics?model=<id>&autoload=false` (autoload=false: a request for a model that is not running
is refused, never loads it). Each loaded model is its own child process, whose argv the router
lists in /models: the source finds it in /proc (same host) for its start time and PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .. import clock
from ..config import TargetConfig
from ..observation import (
    InfoSample,
    ModelSample,
    ModelState,
    ModelStatus,
    Observation,
    PollError,
    QueueProbe,
    Readiness,
    Reason,
)
from ..procinfo import ProcessInfo, command_line, environment, find_by_argv, still_running
from .base import HttpFetcher, HttpSource, Response, SharedContext, expect_status, parse_json, parse_metrics
from .mapping import Feed, Upstream, apply

U = Upstream
# /metrics → unified (one model per server). The query counter is derived: cached + processed.
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("llamacpp:requests_processing", "b2000-b11434+"),)),
    Feed("requests_waiting", "gauge", (U("llamacpp:requests_deferred", "b2000-b11434+"),)),
    Feed("generation_tokens", "counter", (U("llamacpp:tokens_predicted_total", "b2000-b11434+"),)),
    Feed("kv_cache_hit_tokens", "counter", (U("llamacpp:prompt_tokens_cached_total", "recent builds"),)),
    Feed(
        "kv_cache_usage_ratio", "gauge", (U("llamacpp:kv_cache_usage_ratio", "older builds (removed)"),), required=False
    ),
)
METRICS_PREFIXES = ("llamacpp:",)
COMPUTED_PROMPT_TOKENS = "llamacpp:prompt_tokens_total"  # computed only: prompt_tokens = this + cached
PROPS_REFRESH_POLLS = 600  # re-read the router's /props now and then (build info)
SINGLE_STATES = (ModelState.LOADED, ModelState.LOADING, ModelState.SLEEPING)
ROUTER_STATES = tuple(ModelState)
MAX_ROUTER_MODELS = 1000
EVENTS_KEPT = 16  # status changes remembered per router model (the stream's exact transition times)
MAX_SLOTS = 4096  # llama-server's -np; a /slots longer than this is refused (parse error) before any mapping
DOCS = """\
Beyond the table: `llm_prompt_tokens_total` and `llm_kv_cache_query_tokens_total` are both
`prompt_tokens_cached_total` + `prompt_tokens_total` (llama.cpp's `prompt_tokens_total` counts only the
computed tokens, "excluding cached tokens": every prompt token a client was billed is the two together;
absent when the build lacks the cached counter); `llm_kv_cache_usage_ratio` falls back to the `/slots`
context fill (above),
0 when nothing is in flight; `llm_slots` and `llm_context_size_tokens` come from `/props` (from
`/slots` while it is read); `llm_token_queue_latency_seconds` is the estimate above;
`llm_engine_info{build, model_path}` comes from `/props` (`model` = `--alias` or the model file
name). `llamacpp:prompt_tokens_total` counts tokens actually computed, and
`tokens_predicted_total` moves when a request finishes. Without `/metrics` (`--metrics` off) only
readiness and `/props` facts are shown: `/slots` is never read then, since it would keep a
sleeping-enabled server awake.

The throughput gauges llama.cpp exports (`llamacpp:prompt_tokens_seconds`,
`llamacpp:predicted_tokens_seconds`) are reset by every `/metrics` read, so two readers of one server
each see a different, shorter window: nothing is derived from them, and rates come from the counters
(`rate(llm_generation_tokens_total[1m])`). To see the engine's own families, do not scrape the engine
beside the exporter; set `passthrough: true` on the target and read them through the exporter
(`llm_llamacpp_predicted_tokens_seconds`, one reader, the exporter's poll interval as its window). In router mode
(`--models-dir`) every series carries the router's model id as `model`."""
ROUTER_STATUS = {
    "loaded": ModelState.LOADED,
    "loading": ModelState.LOADING,
    "sleeping": ModelState.SLEEPING,
    "unloaded": ModelState.UNLOADED,
    "downloading": ModelState.DOWNLOADING,
    "downloaded": ModelState.UNLOADED,
}


def _error_message(response: Response) -> str:
    error = response.json_object(limit=4096).get("error")
    return str(error.get("message", ""))[:200].lower() if isinstance(error, dict) else ""


def _is_loading(response: Response) -> bool:
    # "no slot available" is also a 503 unavailable_error: only the message tells loading apart.
    return response.status == 503 and "loading" in _error_message(response)


def _is_router(response: Response) -> bool:
    return response.status == 400 and "model name is missing" in _error_message(response)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    """A finite number, or None (a 400-digit integer does not fit a float: None, not OverflowError)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class RouterEvents:
    """A llama.cpp router's `GET /models/sse`, read in the background: the exact time of each model's status
    change (`model_status` when a load starts, `status_change` to loaded, sleeping or unloaded), as this
    exporter received it. The stream loads and wakes nothing (a GET to the router, never to a child). A dropped
    stream reconnects after 1, 2, 4 ... 30 s; a build without it (404) is not asked again. Bounded: lines of
    64 KiB, the last EVENTS_KEPT transitions per model, MAX_ROUTER_MODELS models."""

    def __init__(self, http: HttpFetcher):
        self.http = http
        self.transitions: dict[str, list[tuple[float, str]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.supported: bool | None = None  # None until the first answer
        self.connects = 0
        self.backoff = 1.0

    def start(self) -> None:
        if self.task is None and self.supported is not False and self.http.session is not None:
            self.task = asyncio.create_task(self._run(), name="llamacpp:models/sse")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    def last(self, model: str, status: str, since: float | None = None) -> float | None:
        """When `model` last changed to `status` (after `since`), by the stream."""
        times = [t for t, s in self.transitions.get(model, ()) if s == status and (since is None or t >= since)]
        return times[-1] if times else None

    async def _run(self) -> None:
        import aiohttp

        while True:
            try:
                await self._read(aiohttp)
                self.backoff = 1.0 if self.connects else self.backoff
            except asyncio.CancelledError:
                raise
            except Exception:  # refused, reset, a line too long, bad JSON: reconnect after a pause
                pass
            if self.supported is False:
                return
            await asyncio.sleep(self.backoff)
            self.backoff = min(30.0, self.backoff * 2)

    async def _read(self, aiohttp: Any) -> None:
        http = self.http
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        async with http.session.get(
            http.base_url + "/models/sse",
            headers=http.headers,
            ssl=http.ssl,
            allow_redirects=False,
            timeout=timeout,
            read_bufsize=65536,
        ) as response:
            if response.status == 404:
                self.supported = False
                return
            if response.status != 200:
                return
            self.supported = True
            self.connects += 1
            self.backoff = 1.0
            async for raw in response.content:  # one line each; longer than the buffer raises: reconnect
                self._event(raw)

    def _event(self, raw: bytes) -> None:
        if not raw.startswith(b"data:"):
            return
        try:
            event = json.loads(raw[5:].decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return
        if not isinstance(event, dict) or event.get("event") not in ("model_status", "status_change"):
            return
        model, data = event.get("model"), event.get("data")
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(model, str) or not model or not isinstance(status, str):
            return
        if model not in self.transitions and len(self.transitions) >= MAX_ROUTER_MODELS:
            return
        kept = self.transitions.setdefault(model[:200], [])
        kept.append((clock.now(), status[:20]))
        del kept[:-EVENTS_KEPT]


def held_tokens(slot: dict[str, Any]) -> float:
    """The tokens a busy slot holds in the KV cache. b11434's /slots counts the generated tokens in
    `n_prompt_tokens` (494 = 468 cached + 17 processed + 9 decoded in tests/fixtures/llamacpp/b11434-slots-busy.json);
    a build whose `n_prompt_tokens` is the prompt alone (cached + processed) holds the decoded ones on top: the
    larger of the two readings is the one that counts every token once. Builds without the cached/processed
    fields: prompt plus decoded."""
    prompt = _number(slot.get("n_prompt_tokens"))
    if prompt is None or prompt < 0:
        return 0.0
    tokens = slot.get("next_token")
    decoded = (
        sum(_number(t.get("n_decoded", 0)) or 0.0 for t in tokens if isinstance(t, dict))
        if isinstance(tokens, list)
        else 0.0
    )
    cached, processed = _number(slot.get("n_prompt_tokens_cache")), _number(slot.get("n_prompt_tokens_processed"))
    if cached is not None and processed is not None:
        return max(prompt, cached + processed + decoded)
    return prompt + decoded


def argv_model(argv: tuple[str, ...]) -> str:
    """The model a llama-server command line serves, named as /props names it: `-a`/`--alias`, else the
    `-m`/`--model` file's name; "" when neither is given (`-hf` downloads: /props names it once ready)."""
    alias = model = ""
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-a", "--alias"):
            alias = following
        elif arg.startswith("--alias="):
            alias = arg[8:]
        elif arg in ("-m", "--model"):
            model = following
        elif arg.startswith("--model="):
            model = arg[8:]
    return (alias or os.path.basename(model))[:200]


@dataclass(frozen=True)
class KvLayout:
    """How llama-server lays out its KV cache, from its command line (and environment, where readable)."""

    unified: bool  # one pool shared by every slot: each slot reports the whole pool as its n_ctx


def kv_layout(argv: tuple[str, ...], env: dict[str, str] | None) -> KvLayout | None:
    """llama-server's rules (tools/server/server.cpp, common/arg.cpp at b11434): `-np`/`--parallel` defaults to
    auto (-1), which means 4 slots sharing one unified pool; `-kvu`/`--kv-unified` and `-no-kvu` set it; each has
    an environment variable (LLAMA_ARG_N_PARALLEL, LLAMA_ARG_KV_UNIFIED). None when it cannot be known: a flag
    left to an environment this user may not read, or `--kv-unified-per-slot` (slots then report a capped
    context, not the pool)."""

    def flag(*names: str) -> str | None:
        value = None
        for i, arg in enumerate(argv):
            for name in names:
                if arg == name and i + 1 < len(argv):
                    value = argv[i + 1]
                elif arg.startswith(name + "="):
                    value = arg[len(name) + 1 :]
        return value

    if flag("--kv-unified-per-slot") is not None or (env is not None and env.get("LLAMA_ARG_KV_UNIFIED_PER_SLOT")):
        return None
    unified: bool | None = None
    for arg in argv:
        if arg in ("-kvu", "--kv-unified"):
            unified = True
        elif arg in ("-no-kvu", "--no-kv-unified"):
            unified = False
    parallel = flag("-np", "--parallel")
    if parallel is None and env is not None:
        parallel = env.get("LLAMA_ARG_N_PARALLEL")
    if unified is None and env is not None and "LLAMA_ARG_KV_UNIFIED" in env:
        unified = env["LLAMA_ARG_KV_UNIFIED"].lower() in ("1", "true", "on", "yes", "enabled")
    if parallel is None and env is None:
        return None  # not on the command line; the environment (which could set it) is not readable
    try:
        auto = parallel is None or int(parallel) < 0
    except ValueError:
        return None
    if unified is None:
        if env is None and not auto:
            return None  # -np given: unified only if LLAMA_ARG_KV_UNIFIED says so, and it cannot be read
        unified = auto  # auto parallel means 4 slots and a unified pool
    return KvLayout(unified=unified)


@dataclass
class _Metrics:
    """One server's (or one router child's) /metrics, mapped."""

    sample: ModelSample
    misses: list[str]
    ready_header: str | None
    text: str

    @property
    def busy(self) -> bool:
        return (self.sample.get("requests_running") or 0) > 0 or (self.sample.get("requests_waiting") or 0) > 0


class LlamaCppSource(HttpSource):
    engine = "llamacpp"
    title = "llama.cpp"
    mapping = MAPPING
    metrics_prefix = "llamacpp:"
    detect_probe = ("/props", "default_generation_settings")
    endpoints = ("/props", "/slots", "/models")

    docs = DOCS
    process_programs = ("llama-server",)
    default_port = 8080

    @classmethod
    def recognises(cls, metrics: Response) -> bool:
        """llama-server's error envelope on /metrics: 501 not_supported_error without --metrics, 503
        unavailable_error while loading."""
        error = metrics.json_object(limit=65536).get("error")
        return isinstance(error, dict) and error.get("type") in ("not_supported_error", "unavailable_error")

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.labels = self.shared.label_cache(self.engine)
        self.metrics_enabled = True
        self.slots_enabled = True
        self.router = False
        self.model_props: dict[str, dict[str, Any]] = {}  # router: each loaded model's /props
        self.props: dict[str, Any] = {}
        self.polls_since_props = PROPS_REFRESH_POLLS
        self.instance: str | None = None
        # router model → ((argv, state) when looked up, its child process or None when not visible)
        self.children: dict[str, tuple[tuple[tuple[str, ...], ModelState], ProcessInfo | None]] = {}
        self.events = RouterEvents(self.http)  # router mode: /models/sse, started when a router is seen
        self.router_states: dict[str, ModelState] = {}  # each router model's state at the previous poll
        # The KV cache's layout (from the engine's command line): how much context the slots share
        self.kv_layout: KvLayout | None = None
        self.layouts: dict[int, KvLayout | None] = {}  # engine (or router child) pid → its layout
        self.argvs: dict[int, tuple[str, ...]] = {}  # ... and its command line
        self.argv_model = ""  # the model the engine process was started with (its command line), if known

    async def collect(self) -> Observation:
        http = self.http
        if self.router:
            return await self._collect_router(http)
        notices: list[str] = []
        response = await http.get("/metrics")
        if _is_loading(response):
            return self._loading(notices)
        if _is_router(response):
            self.router = True
            notices.append("router mode (several models): polling /models and each loaded model's /metrics")
            observation = await self._collect_router(http)
            observation.notices = tuple(notices) + observation.notices
            return observation
        metrics: _Metrics | None = None
        if response.status == 501:
            if self.metrics_enabled:
                notices.append(
                    "/metrics is disabled on this server (start llama-server with --metrics); "
                    "reading /health and /props only (never /slots, which would keep the server awake)"
                )
            self.metrics_enabled = False
            health = await http.get("/health")
            if _is_loading(health):
                return self._loading(notices)
            expect_status(health, "/health")
        else:
            expect_status(response, "/metrics")
            self.metrics_enabled = True
            metrics = self._map_metrics(response)

        slots = None
        if metrics is not None and metrics.busy:
            slots = await self._slots(http, "/slots", notices)
        if (
            metrics is None
            or not metrics.busy
            or self.polls_since_props >= PROPS_REFRESH_POLLS
            or (metrics.ready_header != self.instance)
        ):
            props = await self._props(http, "/props")
            if props is not None:
                self.props, self.polls_since_props = props, 0
        self.polls_since_props += 1

        sleeping = (metrics is None or not metrics.busy) and self.props.get("is_sleeping") is True
        observation = Observation(
            Readiness.READY,
            endpoints=self._endpoints(),
            notices=tuple(notices),
            mapping_misses=tuple(metrics.misses) if metrics else (),
            model_states=SINGLE_STATES,
        )
        # The process first: the model its command line names (and its KV layout) are this process's, not
        # the previous one's (a restart with another model may be seen first when it is already ready).
        self._timing(observation, metrics.ready_header if metrics else None)
        model_name = self._model_name()
        sample = metrics.sample if metrics is not None else ModelSample()
        observation.models = {model_name: sample}
        observation.info = self._props_info(model_name)
        self._fill_from_props(self.props, sample)
        if metrics is not None:
            self._map_slots(slots, metrics, sample, self.kv_layout)
            if self.slots_enabled:  # without /slots no task is ever counted: no estimate at all
                observation.queue_probes[model_name] = self._probe(sample, slots)
            self.add_passthrough(observation, metrics.text)
        observation.lifecycle[""] = ModelStatus(
            ModelState.SLEEPING if sleeping else ModelState.LOADED,
            model=model_name,
            process_start=observation.process_start_time,
            ready_time=observation.engine_ready_time,
            ready_exact=observation.engine_ready_exact,
            pid=observation.process_pid,
        )
        return observation

    def _loading(self, notices: list[str]) -> Observation:
        observation = Observation(
            Readiness.LOADING, endpoints=self._endpoints(), notices=tuple(notices), model_states=SINGLE_STATES
        )
        self._timing(observation, None)
        observation.lifecycle[""] = ModelStatus(
            ModelState.LOADING,
            model=self._model_name(),
            process_start=observation.process_start_time,
            pid=observation.process_pid,
        )
        return observation

    # ------------------------------------------------------------------ router mode

    async def close(self) -> None:
        await self.events.stop()
        await super().close()

    async def _collect_router(self, http: HttpFetcher) -> Observation:
        self.events.start()
        response = await http.get("/models")
        expect_status(response, "/models")
        listing = parse_json(response, "/models")
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise PollError(Reason.PARSE, "/models: expected an object with a data list")
        if self.polls_since_props >= PROPS_REFRESH_POLLS:
            props = await self._props(http, "/props")
            if props is not None:
                self.props, self.polls_since_props = props, 0
        self.polls_since_props += 1
        observation = Observation(Readiness.READY, endpoints=self._endpoints(), model_states=ROUTER_STATES)
        router = self.process_by_port() if self.same_host else None
        if router is not None:  # the router's own life: a new process is a restart (its children are apart)
            observation.instance_id = f"router:{router.pid}:{router.start_since_boot:.2f}"
        loaded: list[str] = []
        paths: dict[str, str] = {}
        for entry in entries[:MAX_ROUTER_MODELS]:
            parsed = self._router_entry(entry)
            if parsed is None:
                continue
            model, state, argv, path = parsed
            paths[model] = path
            child = (
                self._child(model, argv, state)
                if state in (ModelState.LOADING, ModelState.LOADED, ModelState.SLEEPING)
                else None
            )
            if child is None:
                self.children.pop(model, None)
            if state is not ModelState.LOADED:
                self.model_props.pop(model, None)
            started = self.events.last(model, "loading")
            observation.lifecycle[model] = ModelStatus(
                state,
                model=model,
                process_start=child.start_time if child else None,
                reports_loading=True,
                pid=child.pid if child else None,
                load_started=started,
                ready_time=self.events.last(model, "loaded", started) if state is ModelState.LOADED else None,
                ready_exact=state is ModelState.LOADED and self.events.last(model, "loaded", started) is not None,
            )
            if state is ModelState.LOADED:
                loaded.append(model)
        self._unload_reasons(observation)
        # Models no longer listed are forgotten (a router that lists fresh ids every poll grows nothing).
        for table in (self.children, self.model_props):
            for gone in [m for m in table if m not in paths]:
                del table[gone]
        results = await asyncio.gather(*(self._router_model(http, model) for model in loaded))
        notices: list[str] = []
        misses: set[str] = set()
        for model, result in zip(loaded, results, strict=True):
            if result is None:
                continue  # unloaded between /models and its /metrics: state only this poll
            metrics, slots = result
            sample = metrics.sample
            child_pid = observation.lifecycle[model].pid
            self._map_slots(slots, metrics, sample, self._layout_of(child_pid))
            observation.models[model] = sample
            if self.slots_enabled:
                observation.queue_probes[model] = self._probe(sample, slots)
            misses.update(metrics.misses)
            observation.info.append(
                InfoSample(
                    "engine_info",
                    (
                        ("model", model),
                        ("build", str(self.props.get("build_info", ""))[:100]),
                        ("model_path", paths.get(model, "")),
                    ),
                )
            )
            status = observation.lifecycle[model]
            ready = self._ready_time(metrics.ready_header)
            if ready is not None:
                observation.lifecycle[model] = dataclasses.replace(status, ready_time=ready, ready_exact=True)
        observation.mapping_misses = tuple(sorted(misses))
        observation.notices = tuple(notices)
        return observation

    def _unload_reasons(self, observation: Observation) -> None:
        """A model that left loaded (or sleeping) for unloaded: `evicted` when another model started loading
        since the previous poll (the router made room: --models-max), else `requested` (POST /models/unload,
        or its idle unload). The router's answers tell no more; a failed child shows as `failed`, a failure."""
        now = {model: status.state for model, status in observation.lifecycle.items()}
        before = self.router_states
        busy = (ModelState.LOADING, ModelState.LOADED)
        arriving = any(
            state is ModelState.LOADING or (state is ModelState.LOADED and before.get(model) not in busy)
            for model, state in now.items()
        )
        for model, state in now.items():
            if state is ModelState.UNLOADED and before.get(model) in (ModelState.LOADED, ModelState.SLEEPING):
                observation.lifecycle[model] = dataclasses.replace(
                    observation.lifecycle[model], unload_reason="evicted" if arriving else "requested"
                )
        self.router_states = now

    @staticmethod
    def _router_entry(entry: Any) -> tuple[str, ModelState, tuple[str, ...], str] | None:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            return None
        status = entry.get("status")
        if not isinstance(status, dict) or status.get("value") not in ROUTER_STATUS:
            return None
        state = ROUTER_STATUS[status["value"]]
        if state is ModelState.UNLOADED and status.get("failed") is True:
            state = ModelState.FAILED
        args = status.get("args")
        argv = tuple(a for a in args if isinstance(a, str)) if isinstance(args, list) else ()
        path = entry.get("path")
        return entry["id"][:200], state, argv, str(path)[:200] if isinstance(path, str) else ""

    def _child(self, model: str, argv: tuple[str, ...], state: ModelState) -> ProcessInfo | None:
        """The child process serving `model` (same host only): its argv is the one /models lists. /proc is
        scanned again only when the model's argv or state changes, or the process went away."""
        if not self.same_host or not argv:
            return None
        known = self.children.get(model)
        if known is not None and known[0] == (argv, state):
            if known[1] is None:
                return None  # not visible from here (another PID namespace): not looked for every poll
            if still_running(known[1]):
                return known[1]
        info = find_by_argv(argv)
        self.children[model] = ((argv, state), info)
        return info

    async def _router_model(self, http: HttpFetcher, model: str) -> tuple[_Metrics, list[dict[str, Any]] | None] | None:
        query = f"?model={quote(model, safe='')}&autoload=false"
        response = await http.get("/metrics" + query)
        if response.status == 400 or _is_loading(response):
            return None  # "model is not loaded": it went away since /models
        expect_status(response, "/metrics" + query)
        metrics = self._map_metrics(response)
        slots = await self._slots(http, "/slots" + query, []) if metrics.busy else None
        if model not in self.model_props:  # read once per load (exempt from the idle timer)
            props = await self._props(http, "/props" + query)
            if props is not None:  # only what is used is kept (a /props can be large)
                settings = props.get("default_generation_settings")
                self.model_props[model] = {
                    "total_slots": props.get("total_slots"),
                    "default_generation_settings": {"n_ctx": settings.get("n_ctx")}
                    if isinstance(settings, dict)
                    else None,
                }
        self._fill_from_props(self.model_props.get(model, {}), metrics.sample)
        return metrics, slots

    # ------------------------------------------------------------------ endpoints

    def _map_metrics(self, response: Response) -> _Metrics:
        text = response.text()
        payload = parse_metrics(text, METRICS_PREFIXES, self.labels)
        if not payload.samples:
            raise PollError(Reason.PARSE, "/metrics has no llamacpp: series (not a llama.cpp server?)")
        mapped, misses = apply(payload, MAPPING, "", chosen_by_key=self.fed_by)
        sample = mapped.get("", ModelSample())
        # llamacpp:prompt_tokens_total counts computed tokens only ("excluding cached tokens"): every prompt
        # token of the requests served (what clients get as usage.prompt_tokens) is computed + cached, which
        # is also what the cache was queried for. Without the cached counter neither is known: both absent.
        computed = next((v for _, v in payload.get(COMPUTED_PROMPT_TOKENS)), None)
        cached = sample.get("kv_cache_hit_tokens")
        if cached is not None and computed is not None:
            sample.set("kv_cache_query_tokens", cached + computed)
            sample.set("prompt_tokens", cached + computed)
            self.fed_by["prompt_tokens"] = f"{COMPUTED_PROMPT_TOKENS} + llamacpp:prompt_tokens_cached_total"
        return _Metrics(sample, misses, response.headers.get("Process-Start-Time-Unix"), text)

    async def _slots(self, http: HttpFetcher, path: str, notices: list[str]) -> list[dict[str, Any]] | None:
        response = await http.get(path)
        if response.status == 501:
            if self.slots_enabled:
                notices.append(
                    "/slots is disabled on this server (start llama-server with --slots); "
                    "queue-latency estimate and slot details unavailable"
                )
            self.slots_enabled = False
            return None
        if response.status in (400, 503):
            return None  # all slots busy ("no slot available"), or a router child that just went away
        expect_status(response, path)
        self.slots_enabled = True
        slots = parse_json(response, "/slots")
        if isinstance(slots, list) and len(slots) > MAX_SLOTS:
            raise PollError(Reason.PARSE, f"/slots: {len(slots)} slots (more than {MAX_SLOTS}): not a llama-server")
        if not isinstance(slots, list) or not all(isinstance(s, dict) and _int(s.get("id")) for s in slots):
            raise PollError(Reason.PARSE, "/slots: expected a list of slot objects with integer ids")
        if not all(s.get("id_task") is None or _int(s.get("id_task")) for s in slots):
            raise PollError(Reason.PARSE, "/slots: id_task is not an integer")
        return slots

    async def _props(self, http: HttpFetcher, path: str) -> dict[str, Any] | None:
        try:
            response = await http.get(path)
        except PollError:
            return None
        if response.status != 200:
            return None
        return response.json_object() or None

    # ------------------------------------------------------------------ mapping

    def _model_name(self) -> str:
        """The name clients use for the model: the process's own `--alias` or `-m` file name when its command line
        is known (right from its start, while it loads), else /props' (known once it is ready)."""
        if self.argv_model:
            return self.argv_model
        alias, path = self.props.get("model_alias"), self.props.get("model_path")
        if isinstance(alias, str) and alias and alias != path:
            return alias[:200]  # set with --alias (or -hf's repo name)
        return os.path.basename(path)[:200] if isinstance(path, str) else ""

    @staticmethod
    def _fill_from_props(props: dict[str, Any], sample: ModelSample) -> None:
        slots = _number(props.get("total_slots"))
        if slots is not None and slots > 0:
            sample.set("slots_total", slots)
        settings = props.get("default_generation_settings")
        n_ctx = _number(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if n_ctx is not None and n_ctx > 0:
            sample.set("context_size_tokens", n_ctx)

    @staticmethod
    def _probe(sample: ModelSample, slots: list[dict[str, Any]] | None) -> QueueProbe:
        if slots is None:
            return QueueProbe(sample.get("requests_waiting") or 0.0, None)
        return QueueProbe(
            sample.get("requests_waiting") or 0.0,
            tuple((s["id"], s.get("id_task")) for s in slots),
            frozenset(s["id"] for s in slots if s.get("is_processing") is True),
        )

    @staticmethod
    def _map_slots(
        slots: list[dict[str, Any]] | None, metrics: _Metrics, sample: ModelSample, layout: KvLayout | None = None
    ) -> None:
        if slots is None:
            if not metrics.busy and sample.get("kv_cache_usage_ratio") is None:
                sample.set("kv_cache_usage_ratio", 0.0)  # nothing in flight: no busy slot holds context
            return
        busy = [s for s in slots if s.get("is_processing") is True]
        sample.set("slots_total", float(len(slots)))
        contexts = [n for n in (_number(s.get("n_ctx")) for s in slots) if n is not None and n > 0]
        if contexts:
            sample.set("context_size_tokens", float(max(contexts)))
        if (
            sample.get("kv_cache_usage_ratio") is None
            and contexts
            and len(contexts) == len(slots)
            and layout is not None
        ):
            # Tokens the busy slots hold in the KV cache, over its cells: one pool when unified (every slot
            # reports the whole pool as n_ctx), else one pool per slot. Unknown layout: no ratio at all.
            used = sum(min(held_tokens(slot), _number(slot["n_ctx"]) or 0.0) for slot in busy)
            capacity = max(contexts) if layout.unified else float(sum(contexts))
            sample.set("kv_cache_usage_ratio", min(used, capacity) / capacity)

    def _endpoints(self) -> dict[str, bool]:
        return {"metrics": self.metrics_enabled, "slots": self.slots_enabled}

    def _props_info(self, model: str) -> list[InfoSample]:
        build = self.props.get("build_info")
        labels = (
            ("model", model),
            ("build", str(build)[:100] if build is not None else ""),
            ("model_path", str(self.props.get("model_path", ""))[:200]),
        )
        return [InfoSample("engine_info", labels)]

    def _ready_time(self, ready_header: str | None) -> float | None:
        """The header's CLOCK_MONOTONIC microseconds at ready, as Unix time (same host only)."""
        if ready_header is None or not self.same_host:
            return None
        try:
            ready_monotonic = int(ready_header) / 1e6
        except ValueError:
            return None
        if not 0 < ready_monotonic <= time.monotonic():
            return None
        return clock.now() - (time.monotonic() - ready_monotonic)

    def _timing(self, observation: Observation, ready_header: str | None) -> None:
        """Engine life identity, exact ready time and process start time."""
        if ready_header is not None:
            if ready_header != self.instance:
                self.rescan_by_port()  # a new engine process: find it now, whatever the scan throttle
            observation.instance_id = ready_header
            self.instance = ready_header
            ready = self._ready_time(ready_header)
            if ready is not None:
                observation.engine_ready_time = ready
                observation.engine_ready_exact = True
        self.locate_process(observation)
        if observation.process_pid is None and self.same_host:
            info = self.process_by_port()
            if info is not None:
                observation.process_pid = info.pid
                if observation.process_start_time is None:
                    observation.process_start_time = info.start_time
                    observation.process_start_basis = "proc"
        self.kv_layout = self._layout_of(observation.process_pid)
        argv = self.argvs.get(observation.process_pid) if observation.process_pid is not None else None
        self.argv_model = argv_model(argv) if argv else ""

    def _layout_of(self, pid: int | None) -> KvLayout | None:
        """The KV layout of an engine process (read once per process: its command line and environment)."""
        if pid is None:
            return None
        if pid not in self.layouts:
            if len(self.layouts) >= MAX_ROUTER_MODELS:
                self.layouts.clear()
                self.argvs.clear()
            argv = command_line(pid)
            self.argvs[pid] = argv or ()
            self.layouts[pid] = kv_layout(argv, environment(pid)) if argv else None
        return self.layouts[pid]
