"""llama.cpp's router mode (`llama-server --models-dir ...`, no model): one loaded model per child process.

/metrics without ?model= answers 400 "model name is missing": that is how LlamaCppSource recognises a
router. Each poll lists models with GET /models (status per model: loaded, loading, sleeping, unloaded,
failed, downloading) and reads each loaded model's `/metrics?model=<id>&autoload=false` (autoload=false: a
request for a model that is not running is refused, never loads it). Each loaded model is its own child
process, whose argv the router lists in /models: it is found in /proc (same host) for its start time and
PID. GET /models/sse, read in the background, dates each status change exactly.

The mode is checked on every poll from the answers the poll already gets: a /models whose entries carry no
`status` (a single-model server lists its one model so), or a /models that fails while /metrics no longer
says "model name is missing", ends router mode (`NotARouter`) and the source polls a single-model server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .. import clock
from ..observation import InfoSample, ModelState, ModelStatus, Observation, PollError, Readiness, Reason
from ..procinfo import ProcessInfo, find_by_argv, still_running
from .base import HttpFetcher, Response, expect_status, parse_json

if TYPE_CHECKING:  # the router polls through its source's llama.cpp helpers (the source imports this module)
    from .llamacpp import LlamaCppMetrics, LlamaCppSource

PROPS_REFRESH_POLLS = 600  # re-read /props now and then (build info)
ROUTER_STATES = tuple(ModelState)
MAX_ROUTER_MODELS = 1000
EVENTS_KEPT = 16  # status changes remembered per router model (the stream's exact transition times)
ROUTER_STATUS = {
    "loaded": ModelState.LOADED,
    "loading": ModelState.LOADING,
    "sleeping": ModelState.SLEEPING,
    "unloaded": ModelState.UNLOADED,
    "downloading": ModelState.DOWNLOADING,
    "downloaded": ModelState.UNLOADED,
}


def error_message(response: Response) -> str:
    """The message of llama-server's error envelope ({"error": {"message": ...}}), lower case; "" if none."""
    error = response.json_object(limit=4096).get("error")
    return str(error.get("message", ""))[:200].lower() if isinstance(error, dict) else ""


def is_loading(response: Response) -> bool:
    # "no slot available" is also a 503 unavailable_error: only the message tells loading apart.
    return response.status == 503 and "loading" in error_message(response)


def is_router(response: Response) -> bool:
    """A /metrics answer without ?model= from a router."""
    return response.status == 400 and "model name is missing" in error_message(response)


class NotARouter(Exception):
    """The server at the URL answers as a router no longer (it was restarted without --models-dir, or
    /models fails): the source checks /metrics and polls it as what it is now."""


def router_entry(entry: Any) -> tuple[str, ModelState, tuple[str, ...], str] | None:
    """(model id, state, child argv, model path) of one /models entry; None for an entry that is not one."""
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


def router_entries(response: Response) -> list[Any]:
    """The entries of a router's /models; NotARouter when the answer is not a router's."""
    if response.status != 200:
        raise NotARouter(f"/models answered {response.status}")
    listing = parse_json(response, "/models")
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise PollError(Reason.PARSE, "/models: expected an object with a data list")
    if entries and not any(isinstance(e, dict) and isinstance(e.get("status"), dict) for e in entries):
        raise NotARouter("/models lists models without a status (a single-model server)")
    return entries


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


class LlamaCppRouter:
    """Router mode of one llama.cpp target: its own state (children, each model's /props, the previous
    states, the event stream), dropped when the server stops being a router."""

    def __init__(self, source: LlamaCppSource):
        self.source = source
        # router model → ((argv, state) when looked up, its child process or None when not visible)
        self.children: dict[str, tuple[tuple[tuple[str, ...], ModelState], ProcessInfo | None]] = {}
        self.model_props: dict[str, dict[str, Any]] = {}  # each loaded model's /props (what is used of it)
        self.router_states: dict[str, ModelState] = {}  # each model's state at the previous poll
        self.events = RouterEvents(source.http)
        self.polls_since_props = PROPS_REFRESH_POLLS

    async def close(self) -> None:
        await self.events.stop()

    async def collect(self) -> Observation:
        source, http = self.source, self.source.http
        self.events.start()
        entries = router_entries(await http.get("/models"))
        if self.polls_since_props >= PROPS_REFRESH_POLLS:
            props = await source.read_props(http, "/props")
            if props is not None:
                source.props, self.polls_since_props = props, 0
        self.polls_since_props += 1
        observation = Observation(Readiness.READY, endpoints=source.endpoints_enabled(), model_states=ROUTER_STATES)
        router = source.process_by_port() if source.same_host else None
        if router is not None:  # the router's own life: a new process is a restart (its children are apart)
            observation.instance_id = f"router:{router.pid}:{router.start_since_boot:.2f}"
        loaded: list[str] = []
        paths: dict[str, str] = {}
        for entry in entries[:MAX_ROUTER_MODELS]:
            parsed = router_entry(entry)
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
        results = await asyncio.gather(*(self._model(http, model) for model in loaded))
        notices: list[str] = []
        misses: set[str] = set()
        for model, result in zip(loaded, results, strict=True):
            if result is None:
                continue  # unloaded between /models and its /metrics: state only this poll
            metrics, slots = result
            sample = metrics.sample
            child_pid = observation.lifecycle[model].pid
            source.map_slots(slots, metrics, sample, source.layout_of(child_pid))
            observation.models[model] = sample
            if source.slots_enabled:
                observation.queue_probes[model] = source.probe(sample, slots)
            misses.update(metrics.misses)
            observation.info.append(
                InfoSample(
                    "engine_info",
                    (
                        ("model", model),
                        ("build", str(source.props.get("build_info", ""))[:100]),
                        ("model_path", paths.get(model, "")),
                    ),
                )
            )
            status = observation.lifecycle[model]
            ready = source.ready_time(metrics.ready_header)
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

    def _child(self, model: str, argv: tuple[str, ...], state: ModelState) -> ProcessInfo | None:
        """The child process serving `model` (same host only): its argv is the one /models lists. /proc is
        scanned again only when the model's argv or state changes, or the process went away."""
        if not self.source.same_host or not argv:
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

    async def _model(self, http: HttpFetcher, model: str) -> tuple[LlamaCppMetrics, list[dict[str, Any]] | None] | None:
        """One loaded model's /metrics (and /slots while busy, /props once per load); None when it went away."""
        source = self.source
        query = f"?model={quote(model, safe='')}&autoload=false"
        response = await http.get("/metrics" + query)
        if response.status == 400 or is_loading(response):
            return None  # "model is not loaded": it went away since /models
        expect_status(response, "/metrics" + query)
        metrics = source.map_metrics(response)
        slots = await source.read_slots(http, "/slots" + query, []) if metrics.busy else None
        if model not in self.model_props:  # read once per load (exempt from the idle timer)
            props = await source.read_props(http, "/props" + query)
            if props is not None:  # only what is used is kept (a /props can be large)
                settings = props.get("default_generation_settings")
                self.model_props[model] = {
                    "total_slots": props.get("total_slots"),
                    "default_generation_settings": {"n_ctx": settings.get("n_ctx")}
                    if isinstance(settings, dict)
                    else None,
                }
        source.fill_from_props(self.model_props.get(model, {}), metrics.sample)
        return metrics, slots
