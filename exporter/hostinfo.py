"""Host facts from py-cpuinfo, read once (it is slow: it may run cpuid in a subprocess)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("llm_exporter.host")


def _cache_bytes(value: object) -> str:
    if isinstance(value, int) and value >= 0:
        return str(value)
    return ""


def cpu_info_labels(info: dict[str, Any] | None = None) -> tuple[tuple[str, str], ...]:
    """Labels of llm_host_cpu_info. `info` is py-cpuinfo's dict (read here when None)."""
    if info is None:
        try:
            import cpuinfo

            info = cpuinfo.get_cpu_info()
        except Exception as exc:
            log.warning("py-cpuinfo failed, llm_host_cpu_info will be sparse: %s", exc)
            info = {}
    flags = set(info.get("flags") or [])
    return (
        ("brand", str(info.get("brand_raw", ""))[:128]),
        ("arch", str(info.get("arch", ""))[:32]),
        ("logical_cores", str(info.get("count", "")) if isinstance(info.get("count"), int) else ""),
        ("l2_cache_bytes", _cache_bytes(info.get("l2_cache_size"))),
        ("l3_cache_bytes", _cache_bytes(info.get("l3_cache_size"))),
        ("avx512", "true" if any(f.startswith("avx512") for f in flags) else "false"),
        ("amx", "true" if any(f.startswith("amx") for f in flags) else "false"),
    )
