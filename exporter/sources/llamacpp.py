"""llama.cpp's llama-server: /metrics, /slots, /props, /health.

What llama-server hides and how this source recovers it:
- readiness: /metrics (or /health) answers 503 {"error":{"message":"Loading model"}} while
  loading, and refuses connections before it listens;
- the moment loading finished: the /metrics header `Process-Start-Time-Unix` is, despite
  its name, CLOCK_MONOTONIC microseconds at that moment (same host only);
- queue wait: not reported at all; `requests_deferred` plus each slot's `id_task` feed the
  estimator in derive/queue_estimate.py;
- KV-cache hits: `prompt_tokens_cached_total` (hits) and `prompt_tokens_total` (misses).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..config import TargetConfig, is_loopback_url
from ..observation import InfoSample, ModelSample, Observation, PollError, QueueProbe, Readiness, Reason
from ..procinfo import ProcessFinder
from ..promparse import PromParseError, parse
from .base import HttpFetcher, Response, SharedContext, Source, expect_status
from .mapping import Feed, Upstream, apply

U = Upstream
# /metrics → unified (one model per server). The query counter is derived: cached + processed.
MAPPING: tuple[Feed, ...] = (
    Feed("requests_running", "gauge", (U("llamacpp:requests_processing", "b2000-b11434+"),)),
    Feed("requests_waiting", "gauge", (U("llamacpp:requests_deferred", "b2000-b11434+"),)),
    Feed("prompt_tokens", "counter", (U("llamacpp:prompt_tokens_total", "b2000-b11434+"),)),
    Feed("generation_tokens", "counter", (U("llamacpp:tokens_predicted_total", "b2000-b11434+"),)),
    Feed("kv_cache_hit_tokens", "counter", (U("llamacpp:prompt_tokens_cached_total", "recent builds"),)),
    Feed("kv_cache_usage_ratio", "gauge", (U("llamacpp:kv_cache_usage_ratio", "older builds (removed)"),),
         required=False),
)
METRICS_PREFIXES = ("llamacpp:",)
PROPS_REFRESH_POLLS = 600  # re-read /props now and then (model can be swapped by a router)


def _is_loading(response: Response) -> bool:
    if response.status != 503:
        return False
    try:
        error = json.loads(response.body[:4096]).get("error", {})
    except (ValueError, AttributeError):
        return False
    # "no slot available" is also a 503 unavailable_error: only the message tells loading apart.
    return isinstance(error, dict) and "loading" in str(error.get("message", "")).lower()


class LlamaCppSource(Source):
    engine = "llamacpp"

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.labels = self.shared.label_cache(self.engine)
        self.metrics_enabled = True
        self.slots_enabled = True
        self.props: dict[str, Any] | None = None
        self.polls_since_props = 0
        self.instance: str | None = None
        self.same_host = is_loopback_url(target.url) or target.process is not None
        self.finder = ProcessFinder(target.process) if target.process else None

    async def collect(self, http: HttpFetcher | None, now: float) -> Observation:
        assert http is not None
        notices: list[str] = []
        metrics_text: str | None = None
        ready_header: str | None = None

        response = await http.get("/metrics")
        if _is_loading(response):
            return Observation(Readiness.LOADING, endpoints=self._endpoints())
        if response.status == 501:
            if self.metrics_enabled:
                notices.append("/metrics is disabled on this server (start llama-server with --metrics); "
                               "falling back to /health and /slots")
            self.metrics_enabled = False
            health = await http.get("/health")
            if _is_loading(health):
                return Observation(Readiness.LOADING, endpoints=self._endpoints(), notices=tuple(notices))
            expect_status(health, "/health")
        else:
            expect_status(response, "/metrics")
            self.metrics_enabled = True
            metrics_text = response.text()
            ready_header = response.headers.get("Process-Start-Time-Unix")

        slots = await self._slots(http, notices)
        if self.props is None or self.polls_since_props >= PROPS_REFRESH_POLLS or ready_header != self.instance:
            self.props = await self._props(http)
            self.polls_since_props = 0
        self.polls_since_props += 1

        model_name = self._model_name()
        sample = ModelSample()
        misses: list[str] = []
        if metrics_text is not None:
            try:
                payload = parse(metrics_text, METRICS_PREFIXES, self.labels)
            except PromParseError as exc:
                raise PollError(Reason.PARSE, f"/metrics: {exc}") from None
            if not payload.samples:
                raise PollError(Reason.PARSE, "/metrics has no llamacpp: series (not a llama.cpp server?)")
            mapped, misses = apply(payload, MAPPING, "")
            sample = mapped.get("", sample)
            cached, processed = sample.get("kv_cache_hit_tokens"), sample.get("prompt_tokens")
            if cached is not None and processed is not None:
                sample.set("kv_cache_query_tokens", cached + processed)
        probe = None
        if slots is not None:
            self._map_slots(slots, sample, metrics_text is None)
            waiting = sample.get("requests_waiting")
            if waiting is not None:
                probe = QueueProbe(waiting, tuple((s["id"], s.get("id_task")) for s in slots))

        observation = Observation(Readiness.READY, models={model_name: sample},
                                  info=self._props_info(model_name), endpoints=self._endpoints(),
                                  notices=tuple(notices), mapping_misses=tuple(misses))
        if probe is not None:
            observation.queue_probes[model_name] = probe
        self._timing(observation, ready_header)
        if metrics_text is not None:
            self.add_passthrough(observation, metrics_text)
        return observation

    # ------------------------------------------------------------------ endpoints

    async def _slots(self, http: HttpFetcher, notices: list[str]) -> list[dict[str, Any]] | None:
        response = await http.get("/slots")
        if response.status == 501:
            if self.slots_enabled:
                notices.append("/slots is disabled on this server (start llama-server with --slots); "
                               "queue-latency estimate and slot details unavailable")
            self.slots_enabled = False
            return None
        if response.status == 503 and not _is_loading(response):
            return None  # "no slot available" (all slots busy): skip slot data this poll, not an error
        expect_status(response, "/slots")
        self.slots_enabled = True
        try:
            slots = json.loads(response.text())
        except ValueError as exc:
            raise PollError(Reason.PARSE, f"/slots: invalid JSON: {str(exc)[:100]}") from None
        if not isinstance(slots, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), int)
                                                  and not isinstance(s.get("id"), bool) for s in slots):
            raise PollError(Reason.PARSE, "/slots: expected a list of slot objects with integer ids")
        for slot in slots:
            task = slot.get("id_task")
            if not (task is None or (isinstance(task, int) and not isinstance(task, bool))):
                raise PollError(Reason.PARSE, "/slots: id_task is not an integer")
        return slots

    async def _props(self, http: HttpFetcher) -> dict[str, Any]:
        try:
            response = await http.get("/props")
        except PollError:
            return {}
        if response.status != 200:
            return {}
        try:
            props = json.loads(response.body.decode("utf-8", "replace"))
        except ValueError:
            return {}
        return props if isinstance(props, dict) else {}

    # ------------------------------------------------------------------ mapping

    def _model_name(self) -> str:
        props = self.props or {}
        alias, path = props.get("model_alias"), props.get("model_path")
        if isinstance(alias, str) and alias and alias != path:
            return alias[:200]  # set with --alias (or -hf's repo name)
        return os.path.basename(path)[:200] if isinstance(path, str) else ""

    @staticmethod
    def _map_slots(slots: list[dict[str, Any]], sample: ModelSample, metrics_missing: bool) -> None:
        busy = [s for s in slots if s.get("is_processing") is True]
        sample.set("slots_total", float(len(slots)))
        contexts = [s.get("n_ctx") for s in slots if isinstance(s.get("n_ctx"), int) and s.get("n_ctx") > 0]
        if contexts:
            sample.set("context_size_tokens", float(max(contexts)))
        if metrics_missing:
            sample.set("requests_running", float(len(busy)))
        if sample.get("kv_cache_usage_ratio") is None and contexts and len(contexts) == len(slots):
            # Context fill of the busy slots: tokens held for running requests / total context cells.
            used = 0.0
            for slot in busy:
                prompt = slot.get("n_prompt_tokens")
                decoded = sum(t.get("n_decoded", 0) for t in slot.get("next_token") or [] if isinstance(t, dict)
                              and isinstance(t.get("n_decoded", 0), (int, float)))
                if isinstance(prompt, (int, float)) and prompt >= 0:
                    used += min(float(prompt) + float(decoded), float(slot["n_ctx"]))
            sample.set("kv_cache_usage_ratio", used / float(sum(contexts)))

    def _endpoints(self) -> dict[str, bool]:
        return {"metrics": self.metrics_enabled, "slots": self.slots_enabled}

    def _props_info(self, model: str) -> list[InfoSample]:
        props = self.props or {}
        build = props.get("build_info")
        labels = (("model", model), ("build", str(build)[:100] if build is not None else ""),
                  ("model_path", str(props.get("model_path", ""))[:200]))
        return [InfoSample("engine_info", labels)]

    def _timing(self, observation: Observation, ready_header: str | None) -> None:
        """Engine life identity, exact ready time and process start time."""
        if ready_header is not None:
            observation.instance_id = ready_header
            self.instance = ready_header
            try:
                ready_monotonic = int(ready_header) / 1e6
            except ValueError:
                ready_monotonic = None
            if self.same_host and ready_monotonic is not None and 0 < ready_monotonic <= time.monotonic():
                observation.engine_ready_time = time.time() - (time.monotonic() - ready_monotonic)
                observation.engine_ready_exact = True
        if self.finder is not None:
            info = self.finder.find()
            if info is not None:
                observation.process_start_time = info.start_time
                observation.process_start_basis = "proc"
                observation.process_pid = info.pid
