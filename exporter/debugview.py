"""The per-target debug view, `/debug/targets/<name>` (in the spirit of blackbox_exporter's ?debug=true):
what the exporter last saw from a target and what it made of it. Served behind the same auth as
/metrics; secrets never appear (header values are redacted, tokens are never read into it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .derive.lifecycle import ModelLifecycle
from .observation import Histogram, LabelPairs, ModelSample, Observation
from .state import TargetState

T = TypeVar("T")
MODELS_SHOWN = 50  # per section: a target with 10,000 models gives a view of bounded size


def _first(items: Mapping[str, T], render: Callable[[T], Any]) -> dict[str, Any]:
    """The first MODELS_SHOWN entries (by name) rendered, and how many were left out (only what is shown is
    rendered)."""
    names = sorted(items)
    shown = {name: render(items[name]) for name in names[:MODELS_SHOWN]}
    if len(names) > MODELS_SHOWN:
        shown["…"] = f"{len(names) - MODELS_SHOWN} more not shown"
    return shown


def _key(key: str, labels: LabelPairs) -> str:
    return key + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")


def _number(value: float) -> float | str:
    """JSON has no NaN or infinity: a hostile engine's non-finite value is shown as text."""
    return value if math.isfinite(value) else str(value)


def _hist(hist: Histogram) -> dict[str, Any]:
    return {"count": _number(hist.count), "sum": _number(hist.sum), "buckets": len(hist.buckets)}


def _sample(sample: ModelSample) -> dict[str, Any]:
    return {
        "values": {_key(k, labels): _number(v) for (k, labels), v in sorted(sample.values.items())},
        "histograms": {k: _hist(h) for k, h in sorted(sample.histograms.items())},
    }


def _observation(t: float, obs: Observation) -> dict[str, Any]:
    return {
        "time": t,
        "readiness": obs.readiness.value,
        "models": _first(obs.models, _sample),
        "fed_by": dict(sorted(obs.fed_by.items())),
        "mapping_misses": list(obs.mapping_misses),
        "lifecycle": _first(
            obs.lifecycle,
            lambda s: {
                "state": s.state.value,
                "model": s.model,
                "process_start": s.process_start,
                "ready_time": s.ready_time,
                "pid": s.pid,
            },
        ),
        "process_start": obs.process_start_time,
        "process_start_basis": obs.process_start_basis,
        "instance_id": obs.instance_id,
        "series": len(obs.series),
        "info": [dict(i.labels) for i in obs.info],
        "notices": list(obs.notices),
        "detected_engine": obs.detected_engine,
    }


def _lifecycle(life: ModelLifecycle) -> dict[str, Any]:
    last = life.last
    return {
        "model": life.model,
        "state": life.state.value if life.state else None,
        "loads": dict(life.loads),
        "failures": life.failures,
        "loaded_at": life.loaded_at,
        "pid": life.pid,
        "last_load": None
        if last is None
        else {"kind": last.kind, "seconds": last.seconds, "basis": last.basis, "finished_at": last.finished_at},
    }


def target_debug(state: TargetState) -> dict[str, Any]:
    target, health = state.target, state.health
    return {
        "target": {
            "name": target.name,
            "engine": target.engine,
            "engine_label": state.engine,
            "url": target.url,
            "interval": target.interval,
            "timeout": target.timeout,
            "window": target.window,
            "labels": dict(target.labels),
            "headers": {name: "<redacted>" for name, _ in target.headers},
            "bearer_token_file": target.bearer_token_file,
            "passthrough": target.passthrough,
            "tls": None
            if target.tls is None
            else {
                "ca_file": target.tls.ca_file,
                "cert_file": target.tls.cert_file,
                "key_file": target.tls.key_file,
                "insecure_skip_verify": target.tls.insecure_skip_verify,
            },
        },
        "health": {
            "up": health.up,
            "readiness": health.readiness.value if health.readiness else None,
            "polls": health.polls,
            "last_success": health.last_success,
            "last_poll_duration": health.last_poll_duration,
            "last_error": None
            if health.last_error is None
            else {"reason": health.last_error[0].value, "message": health.last_error[1]},
            "errors": {reason.value: count for reason, count in health.errors.items() if count},
        },
        "last_observation": None if state.last_observation is None else _observation(*state.last_observation),
        "exposed_models": _first(
            state.report.models,
            lambda model: {
                **_sample(model.latest),
                "windowed": {_key(k, labels): v for (k, labels), v in sorted(model.derived.items())},
            },
        ),
        "exposed_model_count": len(state.report.models),
        "mapping_misses": dict(sorted(state.report.mapping_misses.items())),
        "lifecycle": _first(state.life.lifecycles, _lifecycle),
        "restarts": state.life.restarts,
        "events": [{"time": t, "event": text} for t, text in state.events],
    }
