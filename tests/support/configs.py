"""Configs for tests, built from Python values instead of inline YAML strings.

    target("v", "vllm", "http://127.0.0.1:8000", interval="200ms", labels={"pod": "p1"})
    config_text(target(...), target(...), listen="127.0.0.1:9400", defaults={"window": "30s"})
    load_target("llamacpp", "http://h:1", max_series=30)     # a TargetConfig, validated as the exporter would

Values are dumped with PyYAML, so quoting, `${ENV}` references and nesting are always right; a string
given to `load_target`/`target_from_settings` may also be a YAML snippet (`"{pod: p1}"`, `"true"`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from exporter.config import Config, TargetConfig, load_config_text
from exporter.sources import engine_specs


def target(name: str, engine: str, url: str | None = None, **settings: Any) -> dict[str, Any]:
    """One target's mapping, in the order the docs write it."""
    out: dict[str, Any] = {"name": name, "engine": engine}
    if url is not None:
        out["url"] = url
    out.update(settings)
    return out


def config_text(*targets: dict[str, Any], **top: Any) -> str:
    """A whole config file: top-level keys (listen, defaults, namespace...) then the targets."""
    return yaml.safe_dump({**top, "targets": list(targets)}, sort_keys=False, default_flow_style=False)


def write_config(path: pathlib.Path, *targets: dict[str, Any], **top: Any) -> pathlib.Path:
    path.write_text(config_text(*targets, **top))
    return path


def load(*targets: dict[str, Any], env: dict[str, str] | None = None, **top: Any) -> Config:
    """The config the exporter would run, validated against every registered engine."""
    return load_config_text(config_text(*targets, **top), "test", env or {}, engines=engine_specs())


def load_target(engine: str, url: str | None = "http://127.0.0.1:1", name: str = "t", **settings: Any) -> TargetConfig:
    """One validated target; string settings are read as YAML (`labels="{pod: p1}"`, `passthrough="true"`)."""
    values = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in settings.items()}
    return load(target(name, engine, url if engine != "nvml" else None, **values)).targets[0]
