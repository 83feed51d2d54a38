"""An engine is one file: a source defined here, and nowhere else, is picked up by config validation,
`engine: auto` detection, the generated docs and the poll pipeline."""

from exporter import docgen
from exporter.config import load_config_text
from exporter.observation import Observation, Readiness
from exporter.sources.auto import detect_from_metrics
from exporter.sources.base import REGISTRY, HttpSource
from exporter.sources.mapping import Feed, Upstream, apply
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

TOY_METRICS = "# TYPE toy_running gauge\ntoy_running{model=\"m\"} 3\n"


async def test_a_source_defined_in_one_place_is_an_engine_everywhere():
    class ToySource(HttpSource):
        engine = "toy"
        title = "Toy engine"
        mapping = (Feed("requests_running", "gauge", (Upstream("toy_running", "1.0+"),)),)
        model_label = "model"
        metrics_prefix = "toy_"
        docs = "Toy notes: a throw-away engine for this test."

        async def collect(self) -> Observation:
            payload, _ = await self.read_metrics(("toy_",), "toy_", "not a toy server?")
            models, misses = apply(payload, self.mapping, self.model_label)
            return Observation(Readiness.READY, models=models, mapping_misses=tuple(misses))

    srv = ReplayServer({"/metrics": Reply.text(TOY_METRICS)})
    await srv.start()
    try:
        # config validation knows it (and that it needs a url)
        config = load_config_text(f"targets:\n  - {{name: t, engine: toy, url: 'http://127.0.0.1:{srv.port}'}}\n",
                                  "t", {})
        assert config.targets[0].engine == "toy"
        # auto-detection recognises it by its prefix
        assert detect_from_metrics(TOY_METRICS) == "toy"
        # the generated docs list it, with its mapping table and its notes
        docs = docgen.render(docgen.DOC.read_text())
        assert "### Toy engine (`engine: toy`)" in docs and "`toy_running` (gauge)" in docs
        assert "Toy notes: a throw-away engine for this test." in docs
        assert "| `toy` | Toy engine | HTTP (`url`) | `toy_` families |" in docs
        # and the pipeline polls it into the unified namespace
        pipe = Pipeline("toy", f"http://127.0.0.1:{srv.port}")
        try:
            await pipe.poll()
            assert pipe.value("llm_requests_running", target="t", engine="toy", model="m") == 3
        finally:
            await pipe.close()
    finally:
        del REGISTRY["toy"]
        await srv.stop()
    assert "toy" not in docgen.render(docgen.DOC.read_text())


def test_a_source_feeding_a_key_the_catalogue_does_not_know_is_refused_when_defined():
    import pytest
    with pytest.raises(TypeError, match="requests_runing"):
        class TypoSource(HttpSource):
            engine = "typo"
            mapping = (Feed("requests_runing", "gauge", (Upstream("typo_running", "1.0+"),)),)

            async def collect(self) -> Observation:
                raise NotImplementedError
    assert "typo" not in REGISTRY
