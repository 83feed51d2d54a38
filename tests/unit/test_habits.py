"""The habits of a maintained project, checked: one version (from git tags) everywhere it is shown,
pyproject metadata, and a coverage floor that only rises."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from exporter import __version__
from exporter.samples import exporter_samples
from exporter.status import ExporterStatus

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@pytest.mark.tools
def test_one_version_from_the_installed_metadata_in_version_flag_and_build_info():
    assert __version__ == metadata.version("llm-exporter")
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+].+)?", __version__), __version__
    out = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == f"llm-exporter {__version__}"
    build_info = [s for s in exporter_samples(ExporterStatus()) if s[0] == "build_info"]
    assert build_info == [("build_info", "", {"version": __version__}, 1.0)]


def test_the_version_follows_the_git_tags():
    """setuptools-scm: at a tag vX.Y.Z the version is X.Y.Z; after it, a dev version of the next patch."""
    if PYPROJECT["tool"].get("setuptools_scm") is None:
        pytest.fail("the version must come from git tags ([tool.setuptools_scm])")
    described = git("describe", "--tags", "--match", "v[0-9]*", "--long")
    if not described:
        pytest.skip("no release tag in this checkout (a clone without tags): the version is a dev version")
    tag, distance, _ = described.strip().rsplit("-", 2)
    major, minor, patch = (int(p) for p in tag[1:].split("."))
    if distance == "0":
        assert __version__.split("+")[0] == f"{major}.{minor}.{patch}"
    else:
        assert __version__.startswith(f"{major}.{minor}.{patch + 1}.dev"), (__version__, described)


def test_pyproject_carries_the_metadata_an_index_shows():
    project = PYPROJECT["project"]
    assert {"Homepage", "Source", "Changelog", "Issues", "Documentation"} <= set(project["urls"])
    assert "prometheus" in project["keywords"] and "vllm" in project["keywords"]
    assert any(c.startswith("Topic :: System :: Monitoring") for c in project["classifiers"])
    assert "version" in project["dynamic"]


def test_the_coverage_floor_only_rises():
    """The fast tier's floor ([tool.coverage.report] fail_under) is never below a value it had before."""
    floor = PYPROJECT["tool"]["coverage"]["report"]["fail_under"]
    history = git("log", "--format=", "-p", "--", "pyproject.toml")
    if history is None:
        pytest.skip("not a git checkout")
    earlier = [float(m) for m in re.findall(r"^[-+]fail_under = ([\d.]+)", history, re.M)]
    assert floor >= max(earlier, default=floor), (floor, earlier)
