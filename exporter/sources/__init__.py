"""Engine sources: one module per engine. Every `Source` subclass that names an `engine` registers itself
(sources/base.py REGISTRY); importing this package imports every module in it, so an engine is one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import EngineSpec
from .base import REGISTRY, Source

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")


def source_for(engine: str) -> type[Source]:
    return REGISTRY[engine]


def engine_specs() -> dict[str, EngineSpec]:
    """What config validation needs of every registered engine: whether it needs a `url`, and every path
    it requests (its metrics path, its detection probe, the `endpoints` it declares)."""
    return {engine: source.spec() for engine, source in REGISTRY.items()}
