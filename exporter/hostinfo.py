"""Host facts for llm_host_cpu_info: py-cpuinfo's view of the CPU, with cache sizes from the kernel.

py-cpuinfo is slow (it may run cpuid in a child process) and its import would stay resident for a
fact read once, so it runs in a child process of its own (`python -m cpuinfo --json`), bounded in
time and size. Cache sizes come from sysfs (the kernel's per-core L2 and per-socket L3 of cpu0):
py-cpuinfo's own figures disagree with the kernel on some machines (an L3 of 512 KiB reported where
lscpu says 32 MiB), so they are used only where sysfs has none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("llm_exporter.host")
CPU0_CACHES = "/sys/devices/system/cpu/cpu0/cache"
_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def _bytes(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return ""


def sysfs_cache_bytes(level: int, root: str = CPU0_CACHES) -> int | None:
    """The unified cache of `level` that cpu0 uses, in bytes, as the kernel reports it (None if unknown)."""
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    for entry in sorted(entries):
        if not entry.startswith("index"):
            continue
        try:
            with open(f"{root}/{entry}/level", encoding="ascii") as handle:
                found_level = int(handle.read(16).strip())
            with open(f"{root}/{entry}/type", encoding="ascii") as handle:
                kind = handle.read(32).strip()
            with open(f"{root}/{entry}/size", encoding="ascii") as handle:
                size = handle.read(32).strip()
        except (OSError, ValueError):
            continue
        if found_level == level and kind == "Unified" and size[:-1].isdigit() and size[-1] in _SIZE_UNITS:
            return int(size[:-1]) * _SIZE_UNITS[size[-1]]
    return None


def cpu_info_labels(info: dict[str, Any], l2: int | None = None, l3: int | None = None) -> tuple[tuple[str, str], ...]:
    """Labels of llm_host_cpu_info from py-cpuinfo's dict; `l2`/`l3` (the kernel's) win over its own."""
    flags = {str(f) for f in info.get("flags") or [] if isinstance(f, str)}
    count = info.get("count")
    return (
        ("brand", str(info.get("brand_raw", ""))[:128]),
        ("arch", str(info.get("arch", ""))[:32]),
        ("logical_cores", str(count) if isinstance(count, int) and not isinstance(count, bool) else ""),
        ("l2_cache_bytes", _bytes(l2 if l2 is not None else info.get("l2_cache_size"))),
        ("l3_cache_bytes", _bytes(l3 if l3 is not None else info.get("l3_cache_size"))),
        ("avx512", "true" if any(f.startswith("avx512") for f in flags) else "false"),
        ("amx", "true" if any(f.startswith("amx") for f in flags) else "false"),
    )


CPUINFO_SECONDS = 20.0  # py-cpuinfo's child gets this long


async def read_host_cpu() -> tuple[tuple[str, str], ...]:
    """Run py-cpuinfo in a child process and build the labels (sparse, with a warning, if it fails)."""
    info: dict[str, Any] = {}
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cpuinfo",
            "--json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None
            async with asyncio.timeout(CPUINFO_SECONDS):
                out = await child.stdout.read(1 << 20)
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
        parsed = json.loads(out.decode("utf-8", "replace"))
        if isinstance(parsed, dict):
            info = parsed
    except (OSError, ValueError, TimeoutError) as exc:
        log.warning("py-cpuinfo failed, llm_host_cpu_info will be sparse: %s", exc or type(exc).__name__)
    return cpu_info_labels(info, sysfs_cache_bytes(2), sysfs_cache_bytes(3))
