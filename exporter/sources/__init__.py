"""Engine sources, registered by engine name (the `engine:` key of a target)."""

from __future__ import annotations

from .base import Source
from .llamacpp import LlamaCppSource
from .nvml import NvmlSource
from .vllm import VllmSource

SOURCES: dict[str, type[Source]] = {
    LlamaCppSource.engine: LlamaCppSource,
    VllmSource.engine: VllmSource,
    NvmlSource.engine: NvmlSource,
}


def source_for(engine: str) -> type[Source]:
    return SOURCES[engine]
