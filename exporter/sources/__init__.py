"""Engine sources, registered by engine name (the `engine:` key of a target)."""

from __future__ import annotations

from .auto import AutoSource
from .base import Source
from .llamacpp import LlamaCppSource
from .nvml import NvmlSource
from .sglang import SglangSource
from .tgi import TgiSource
from .vllm import VllmSource

SOURCES: dict[str, type[Source]] = {
    LlamaCppSource.engine: LlamaCppSource,
    VllmSource.engine: VllmSource,
    NvmlSource.engine: NvmlSource,
    SglangSource.engine: SglangSource,
    TgiSource.engine: TgiSource,
    AutoSource.engine: AutoSource,
}


def source_for(engine: str) -> type[Source]:
    return SOURCES[engine]
