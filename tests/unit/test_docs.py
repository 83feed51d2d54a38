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


def test_architecture_doc_explains_background_polling():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "scrape never triggers a poll" in text.lower() or "never polls" in text.lower()
    assert "freshness" in text.lower()
