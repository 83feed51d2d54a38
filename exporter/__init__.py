"""llm-exporter. Its version comes from git tags at install time (pyproject.toml, [tool.setuptools_scm])."""

from importlib import metadata

try:
    __version__: str = metadata.version("llm-exporter")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
