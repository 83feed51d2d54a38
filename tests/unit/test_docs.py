"""docs/metrics.md must list every metric the code can expose (its tables are generated)."""

from pathlib import Path

from exporter import docgen
from exporter.catalogue import ALL_METRICS, exposed_names

ROOT = Path(__file__).resolve().parents[2]


def test_generated_tables_are_current():
    assert docgen.main(["--check"]) == 0, "run: python -m exporter.docgen"


def test_every_metric_is_documented():
    text = (ROOT / "docs" / "metrics.md").read_text()
    for spec in ALL_METRICS:
        for name in exposed_names("llm", spec):
            assert f"`{name}`" in text, name


def test_architecture_doc_names_every_module_and_only_real_ones():
    """docs/architecture.md's module table stays true: every module is in it, every module it names exists."""
    import re
    text = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "exporter"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name != "__main__.py" and str(p.relative_to(package)) not in ("__init__.py", "derive/__init__.py")}
    named = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", text))
    assert modules <= named, sorted(modules - named)
    assert named <= modules, sorted(named - modules)
