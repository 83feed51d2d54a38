"""Ollama: models loaded and unloaded, their memory and keep-alive, from its JSON API (it has no /metrics).

Only endpoints that never load a model nor extend a keep-alive are read (a real Ollama 0.32.15 let a
5 s keep-alive expire on time while /api/ps was polled every second: tests/fixtures/ollama-real):
`GET /api/ps` every poll (loaded models: `size`, `size_vram`, `expires_at`, `context_length`),
`GET /api/tags` now and then (installed models: they are `unloaded` while not in /api/ps) and
`GET /api/version` once. Ollama keeps no request or token counters anywhere in its API, so none are
exported for it.

Lifecycle: a model that appears in /api/ps was loaded (kind `load`); one that leaves was unloaded, with
the reason its own `expires_at` tells: `expired` when it left at or after its keep-alive's end, `evicted`
before it (room for another model, or a request with keep_alive 0). Ollama 0.32 runs each loaded model
in a child runner process (`ollama runner ...`): on the same host, when one model appears together with
one new runner, the load is dated from the runner's start (basis `process_start`) and the runner's PID
joins GPU memory to the model; otherwise the load is counted without a duration (never a guess).
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from typing import Any

from ..config import TargetConfig
from ..observation import InfoSample, ModelSample, ModelState, ModelStatus, Observation, PollError, Readiness, Reason
from ..procinfo import ProcessInfo, processes_where
from .base import HttpSource, SharedContext, expect_status, parse_json

MODEL_STATES = (ModelState.LOADED, ModelState.UNLOADED)
TAGS_EVERY = 12  # polls between two reads of /api/tags (installed models change rarely)
MAX_MODELS = 1000  # models tracked per target (installed or loaded)
EXPIRY_SLACK = 1.5  # seconds: a model gone within this of its expires_at expired (polls are not exact)
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\Z")
DOCS = """\
No `/metrics`: the source reads `GET /api/ps` each poll, `GET /api/tags` every 12 polls and
`GET /api/version` once — none loads a model or extends a keep-alive. Per model:
`llm_model_state` (loaded / unloaded for every installed model), `llm_model_memory_bytes`,
`llm_model_vram_bytes`, `llm_model_keep_alive_expiry_timestamp_seconds`, `llm_context_size_tokens`;
loads when a model appears, `llm_model_unloads_total{reason="expired"|"evicted"}` when it leaves. A load
is dated only from its runner process on the same host; Ollama has no request or token counters, so no
throughput, latency or KV metrics exist for it. The `model` label is the name clients use
(`tiny:latest`)."""


def parse_stamp(text: Any) -> float | None:
    """Go's RFC 3339 with nanoseconds ("2026-11-30T16:59:15.024063591Z") as Unix seconds."""
    if not isinstance(text, str):
        return None
    match = _STAMP.match(text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def _bytes(value: Any) -> float | None:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _is_runner(argv: tuple[str, ...]) -> bool:
    """An Ollama model runner: `ollama runner ...` (0.4+), or the older `ollama_llama_server`."""
    name = os.path.basename(argv[0]) if argv else ""
    return (name.startswith("ollama") and "runner" in argv[1:3]) or name == "ollama_llama_server"


class OllamaSource(HttpSource):
    engine = "ollama"
    title = "Ollama"
    metrics_prefix = ""  # no /metrics
    detect_probe = ("/api/version", "version")
    endpoints = ("/api", "/api/ps", "/api/tags")
    docs = DOCS

    def __init__(self, target: TargetConfig, shared: SharedContext | None = None):
        super().__init__(target, shared)
        self.version: str | None = None
        self.installed: list[str] = []
        self.polls_since_tags = TAGS_EVERY
        self.loaded: dict[str, float | None] = {}  # model → its expires_at (Unix), as last seen loaded
        self.pids: dict[str, ProcessInfo] = {}  # model → its runner (same host)
        self.runners: set[int] = set()  # runner PIDs seen at the last scan
        self.polled = False  # /api/ps answered before: a model new to it was loaded now

    async def collect(self) -> Observation:
        response = await self.http.get("/api/ps")
        expect_status(response, "/api/ps")
        listing = parse_json(response, "/api/ps", dict)
        entries = listing.get("models")
        if not isinstance(entries, list):
            raise PollError(Reason.PARSE, "/api/ps: expected an object with a models list")
        await self._refresh(entries)
        now = time.time()
        observation = Observation(Readiness.READY, model_states=MODEL_STATES)
        loaded: dict[str, float | None] = {}
        for entry in entries[:MAX_MODELS]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                continue
            name = entry["name"][:200]
            sample = ModelSample()
            sample.set("model_memory_bytes", _bytes(entry.get("size")))
            sample.set("model_vram_bytes", _bytes(entry.get("size_vram")))
            expires = parse_stamp(entry.get("expires_at"))
            sample.set("model_keep_alive_expiry", expires)
            context = _bytes(entry.get("context_length"))
            sample.set("context_size_tokens", context if context else None)
            observation.models[name] = sample
            loaded[name] = expires
        self._match_runners(loaded)
        for name in loaded:
            runner = self.pids.get(name)
            observation.lifecycle[name] = ModelStatus(
                ModelState.LOADED,
                model=name,
                process_start=runner.start_time if runner else None,
                pid=runner.pid if runner else None,
                appeared=self.polled and name not in self.loaded,
            )
        for name in [*self.installed, *self.loaded]:
            if name in loaded or name in observation.lifecycle:
                continue
            reason = None
            if name in self.loaded:  # it was loaded at the previous poll
                expires = self.loaded[name]
                reason = "expired" if expires is not None and now >= expires - EXPIRY_SLACK else "evicted"
                self.pids.pop(name, None)
            observation.lifecycle[name] = ModelStatus(ModelState.UNLOADED, model=name, unload_reason=reason)
            if len(observation.lifecycle) >= MAX_MODELS:
                break
        self.loaded = loaded
        self.polled = True
        if self.version:
            observation.info.append(
                InfoSample("engine_info", (("model", ""), ("build", self.version[:100]), ("model_path", "")))
            )
        return observation

    async def _refresh(self, entries: list[Any]) -> None:
        """/api/version once, /api/tags every TAGS_EVERY polls (both optional: a failure keeps the last)."""
        if self.version is None:
            response = await self.http.get("/api/version")
            version = response.json_object(4096).get("version") if response.status == 200 else None
            self.version = str(version)[:100] if isinstance(version, str) else ""
        self.polls_since_tags += 1
        if self.polls_since_tags >= TAGS_EVERY:
            self.polls_since_tags = 0
            response = await self.http.get("/api/tags")
            models = response.json_object().get("models") if response.status == 200 else None
            if isinstance(models, list):
                self.installed = [
                    m["name"][:200]
                    for m in models[:MAX_MODELS]
                    if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
                ]

    def _match_runners(self, loaded: dict[str, float | None]) -> None:
        """When models appeared: scan /proc for runners; one new model with one new runner is matched."""
        appeared = [name for name in loaded if name not in self.loaded]
        if not appeared or not self.same_host:
            return
        runners = processes_where(_is_runner)
        new = [r for r in runners if r.pid not in self.runners]
        self.runners = {r.pid for r in runners}
        if len(appeared) == 1 and len(new) == 1:
            self.pids[appeared[0]] = new[0]
