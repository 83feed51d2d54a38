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

Router mode (`llama-server --models-dir ...`, no model): /metrics without ?model= answers 400 "model name is
missing"; while the server answers so, `LlamaCppRouter` (llamacpp_router.py) polls it, with the metrics,
/slots and /props helpers below; when it stops answering as a router, this class polls it as one model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

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
from ..procinfo import command_line, environment
from .base import HttpFetcher, HttpSource, Response, SharedContext, expect_status, parse_json, parse_metrics
from .llamacpp_router import (
    MAX_ROUTER_MODELS,
    PROPS_REFRESH_POLLS,
    LlamaCppRouter,
    NotARouter,
    is_loading,
    is_router,
)
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
SINGLE_STATES = (ModelState.LOADED, ModelState.LOADING, ModelState.SLEEPING)
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
class LlamaCppMetrics:
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
        self.router: LlamaCppRouter | None = None  # router mode's own state, while the server is a router
        self.props: dict[str, Any] = {}
        self.polls_since_props = PROPS_REFRESH_POLLS
        self.instance: str | None = None
        # The KV cache's layout (from the engine's command line): how much context the slots share
        self.kv_layout: KvLayout | None = None
        self.layouts: dict[int, KvLayout | None] = {}  # engine (or router child) pid → its layout
        self.argvs: dict[int, tuple[str, ...]] = {}  # ... and its command line
        self.argv_model = ""  # the model the engine process was started with (its command line), if known

    async def collect(self) -> Observation:
        notices: list[str] = []
        if self.router is not None:
            try:
                return await self.router.collect()
            except NotARouter as why:
                response = await self.http.get("/metrics")
                if is_router(response):  # still a router: /models failed this poll, its state is kept
                    raise PollError(Reason.HTTP_STATUS, str(why)) from None
                await self.router.close()
                self.router = None
                notices.append(f"no longer a router ({why}): polling a single-model server")
                return await self._collect_single(response, notices)
        return await self._collect_single(await self.http.get("/metrics"), notices)

    async def close(self) -> None:
        if self.router is not None:
            await self.router.close()
        await super().close()

    async def _collect_single(self, response: Response, notices: list[str]) -> Observation:
        http = self.http
        if is_loading(response):
            return self._loading(notices)
        if is_router(response):
            self.router = LlamaCppRouter(self)
            notices.append("router mode (several models): polling /models and each loaded model's /metrics")
            try:
                observation = await self.router.collect()
            except NotARouter as why:  # answers of a router and of a single server in one poll: a restart
                raise PollError(Reason.HTTP_STATUS, str(why)) from None
            observation.notices = tuple(notices) + observation.notices
            return observation
        metrics: LlamaCppMetrics | None = None
        if response.status == 501:
            if self.metrics_enabled:
                notices.append(
                    "/metrics is disabled on this server (start llama-server with --metrics); "
                    "reading /health and /props only (never /slots, which would keep the server awake)"
                )
            self.metrics_enabled = False
            health = await http.get("/health")
            if is_loading(health):
                return self._loading(notices)
            expect_status(health, "/health")
        else:
            expect_status(response, "/metrics")
            self.metrics_enabled = True
            metrics = self.map_metrics(response)

        slots = None
        if metrics is not None and metrics.busy:
            slots = await self.read_slots(http, "/slots", notices)
        if (
            metrics is None
            or not metrics.busy
            or self.polls_since_props >= PROPS_REFRESH_POLLS
            or (metrics.ready_header != self.instance)
        ):
            props = await self.read_props(http, "/props")
            if props is not None:
                self.props, self.polls_since_props = props, 0
        self.polls_since_props += 1

        sleeping = (metrics is None or not metrics.busy) and self.props.get("is_sleeping") is True
        observation = Observation(
            Readiness.READY,
            endpoints=self.endpoints_enabled(),
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
        self.fill_from_props(self.props, sample)
        if metrics is not None:
            self.map_slots(slots, metrics, sample, self.kv_layout)
            if self.slots_enabled:  # without /slots no task is ever counted: no estimate at all
                observation.queue_probes[model_name] = self.probe(sample, slots)
            await self.add_passthrough(observation, metrics.text)
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
            Readiness.LOADING, endpoints=self.endpoints_enabled(), notices=tuple(notices), model_states=SINGLE_STATES
        )
        self._timing(observation, None)
        observation.lifecycle[""] = ModelStatus(
            ModelState.LOADING,
            model=self._model_name(),
            process_start=observation.process_start_time,
            pid=observation.process_pid,
        )
        return observation

    # ------------------------------------------------------------------ endpoints

    def map_metrics(self, response: Response) -> LlamaCppMetrics:
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
        return LlamaCppMetrics(sample, misses, response.headers.get("Process-Start-Time-Unix"), text)

    async def read_slots(self, http: HttpFetcher, path: str, notices: list[str]) -> list[dict[str, Any]] | None:
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

    async def read_props(self, http: HttpFetcher, path: str) -> dict[str, Any] | None:
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
    def fill_from_props(props: dict[str, Any], sample: ModelSample) -> None:
        slots = _number(props.get("total_slots"))
        if slots is not None and slots > 0:
            sample.set("slots_total", slots)
        settings = props.get("default_generation_settings")
        n_ctx = _number(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if n_ctx is not None and n_ctx > 0:
            sample.set("context_size_tokens", n_ctx)

    @staticmethod
    def probe(sample: ModelSample, slots: list[dict[str, Any]] | None) -> QueueProbe:
        if slots is None:
            return QueueProbe(sample.get("requests_waiting") or 0.0, None)
        return QueueProbe(
            sample.get("requests_waiting") or 0.0,
            tuple((s["id"], s.get("id_task")) for s in slots),
            frozenset(s["id"] for s in slots if s.get("is_processing") is True),
        )

    @staticmethod
    def map_slots(
        slots: list[dict[str, Any]] | None,
        metrics: LlamaCppMetrics,
        sample: ModelSample,
        layout: KvLayout | None = None,
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

    def endpoints_enabled(self) -> dict[str, bool]:
        return {"metrics": self.metrics_enabled, "slots": self.slots_enabled}

    def _props_info(self, model: str) -> list[InfoSample]:
        build = self.props.get("build_info")
        labels = (
            ("model", model),
            ("build", str(build)[:100] if build is not None else ""),
            ("model_path", str(self.props.get("model_path", ""))[:200]),
        )
        return [InfoSample("engine_info", labels)]

    def ready_time(self, ready_header: str | None) -> float | None:
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
            ready = self.ready_time(ready_header)
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
        self.kv_layout = self.layout_of(observation.process_pid)
        argv = self.argvs.get(observation.process_pid) if observation.process_pid is not None else None
        self.argv_model = argv_model(argv) if argv else ""

    def layout_of(self, pid: int | None) -> KvLayout | None:
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
