"""The join stage: after collection, before exposition. Pure.

The NVML source emits each GPU process's memory keyed by pid only (with the pid's parents). Here the
live target states say which engine process serves which model, and each such series gets that
target's `target`, `engine` and `model` labels: the GPU <-> model join. This is where later joins
(container, pod) belong.
"""

from __future__ import annotations

from collections.abc import Iterable

from .observation import LabelPairs, SeriesSample
from .state import TargetState

PROCESS_LABELS = frozenset({"pid", "pod_uid", "container_id"})  # one process, not the GPU
Owners = dict[int, tuple[tuple[str, str], ...]]  # pid → the (target, engine, model) labels of its engine


def process_owners(states: Iterable[TargetState]) -> Owners:
    owners: Owners = {}
    for state in states:
        if not state.health.up and state.life.process_pid is None and not state.life.lifecycles:
            continue
        for pid, model in state.model_pids().items():
            owners[pid] = (("target", state.target.name), ("engine", state.engine), ("model", model))
    return owners


def target_links(series: Iterable[SeriesSample], owners: Owners) -> list[LabelPairs]:
    """`gpu_target_info`'s label sets: each GPU (its labels, pid left out) joined to each engine target and
    model whose process holds memory on it; once per pair, however many processes it has there."""
    links: dict[LabelPairs, None] = {}
    for one in series:
        if one.key != "gpu_process_memory_used_bytes":
            continue
        owner = owner_of(one, owners)
        if owner:
            links[tuple((k, v) for k, v in one.labels if k not in PROCESS_LABELS) + owner] = None
    return list(links)


def owner_of(series: SeriesSample, owners: Owners) -> LabelPairs:
    """The owning engine's labels for a series that can be joined, else ()."""
    for pid in series.join_pids:
        owner = owners.get(pid)
        if owner is not None:
            return owner
    return ()
