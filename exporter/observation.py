"""What a source returns from one poll: a typed, engine-neutral observation.

Sources translate engine payloads into these; derivations and the renderers
never look at engine-specific names.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from .passthrough import RawFamily

LabelPairs = tuple[tuple[str, str], ...]


class Readiness(enum.Enum):
    DOWN = "down"  # nothing answered (connection refused, engine dead)
    LOADING = "loading"  # the engine answered that it is still loading the model
    READY = "ready"


class ModelState(enum.StrEnum):
    """A model's lifecycle state, as the engine reports it (`llm_model_state{state}`)."""

    LOADED = "loaded"
    LOADING = "loading"
    SLEEPING = "sleeping"
    UNLOADED = "unloaded"
    FAILED = "failed"
    DOWNLOADING = "downloading"


@dataclass(frozen=True)
class ModelStatus:
    """One model's lifecycle facts from one poll.

    process_start: Unix time the process serving the model started (payload or /proc);
    ready_time: the engine's own "ready" timestamp, exact (llama.cpp's header) or approximate;
    engine_load_seconds: a start-to-ready duration the engine reports itself (SGLang);
    reports_loading: the engine shows a loading state during a transition (a router's child), so
    the poll before a load bounds its start.
    """

    state: ModelState
    model: str = ""
    process_start: float | None = None
    ready_time: float | None = None
    ready_exact: bool = False
    engine_load_seconds: float | None = None
    reports_loading: bool = False
    pid: int | None = None
    unload_reason: str | None = None  # with state UNLOADED: why it left, where the engine's answers tell
    appeared: bool = False  # new to an engine listing the exporter read before: it was not there, so not met loaded
    load_started: float | None = None  # when the engine said this load began (a llama.cpp router's event stream)


class Reason(enum.StrEnum):
    """Why a poll failed: a fixed set, so `poll_errors_total{reason}` stays small."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    TOO_LARGE = "too_large"
    PARSE = "parse"
    TLS = "tls"
    OTHER = "other"


class PollError(Exception):
    """A poll failed for a classified reason. The message must never contain a secret."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram snapshot: (upper bound, cumulative count) pairs ending at +Inf."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    @staticmethod
    def only_inf(total: float, count: float) -> Histogram:
        return Histogram(((math.inf, count),), total, count)


@dataclass
class ModelSample:
    """One model's values from one poll, keyed by unified metric key (see catalogue.py).

    `values` maps (metric key, extra label pairs) → value for gauges and counters;
    `histograms` maps metric key → cumulative histogram.
    """

    values: dict[tuple[str, LabelPairs], float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    def set(self, key: str, value: float | None, **labels: str) -> None:
        if value is None or value != value:  # drop absent and NaN values
            return
        self.values[(key, tuple(sorted(labels.items())))] = float(value)

    def get(self, key: str, **labels: str) -> float | None:
        return self.values.get((key, tuple(sorted(labels.items()))))


@dataclass(frozen=True)
class QueueProbe:
    """Instantaneous queue state for engines that report no wait times (llama.cpp).

    waiting: requests waiting for a slot now; slot_tasks: slot id → id of the task
    it runs (None when the slot never ran one).
    """

    waiting: float
    slot_tasks: tuple[tuple[int, int | None], ...] | None  # None: slots not read this poll
    busy_slots: frozenset[int] = frozenset()  # slots processing a task now


@dataclass(frozen=True)
class InfoSample:
    """An `<ns>_<name>_info` series with value 1."""

    name: str
    labels: LabelPairs


@dataclass(frozen=True)
class SeriesSample:
    """A target-level series (not per model), e.g. one GPU's temperature."""

    key: str
    labels: LabelPairs
    value: float
    # A GPU process's pid and its parents: the join stage labels the series with the engine target and
    # model that owns the first of them it knows (exporter/join.py).
    join_pids: tuple[int, ...] = ()


@dataclass
class Observation:
    readiness: Readiness
    models: dict[str, ModelSample] = field(default_factory=dict)
    # Unix time the engine process started, and how that was learnt.
    process_start_time: float | None = None
    process_start_basis: str | None = None
    process_pid: int | None = None
    # Unix time the engine itself says it became ready (llama.cpp header, vLLM _created).
    engine_ready_time: float | None = None
    # True when engine_ready_time is the exact moment (llama.cpp), not an approximation (vLLM).
    engine_ready_exact: bool = False
    # Something that identifies one engine process life (changes on restart).
    instance_id: str | None = None
    info: list[InfoSample] = field(default_factory=list)
    # Optional engine endpoints and whether the engine has them enabled.
    endpoints: dict[str, bool] = field(default_factory=dict)
    queue_probes: dict[str, QueueProbe] = field(default_factory=dict)
    # Conditions worth one log line when they first appear (e.g. "/slots disabled").
    notices: tuple[str, ...] = ()
    series: list[SeriesSample] = field(default_factory=list)
    # The engine's own families, when the target asks for pass-through (exporter/passthrough.py), and how
    # many of their series the cap dropped.
    passthrough: tuple[RawFamily, ...] = ()
    passthrough_dropped: int = 0
    # Unified metrics for which the target answered without any known upstream family.
    mapping_misses: tuple[str, ...] = ()
    # Series that the source dropped because of the per-target cardinality cap.
    dropped_series: int = 0
    # Lifecycle per model slot ("" for the one model of a single-model engine, else the model id).
    lifecycle: dict[str, ModelStatus] = field(default_factory=dict)
    # Unified key → the upstream family that fed it this poll (the debug view).
    fed_by: dict[str, str] = field(default_factory=dict)
    # `engine: auto`: the engine the target was identified as (its series carry it as `engine`).
    detected_engine: str | None = None
    # The lifecycle states this engine can report (one llm_model_state series each).
    model_states: tuple[ModelState, ...] = ()
