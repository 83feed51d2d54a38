"""An engine is one file: a source defined here, and nowhere else, is picked up by config validation,
`engine: auto` detection, the generated docs and the poll pipeline."""

from exporter import docgen
from exporter.config import load_config_text
from exporter.observation import Observation, Readiness
from exporter.sources import engine_specs
from exporter.sources.auto import detect_from_metrics
from exporter.sources.base import REGISTRY, HttpSource
from exporter.sources.mapping import Feed, Upstream, apply
from tests.support.pipeline import Pipeline
from tests.support.replay import ReplayServer, Reply

TOY_METRICS = '# TYPE toy_running gauge\ntoy_running{model="m"} 3\n'


async def test_a_source_defined_in_one_place_is_an_engine_everywhere():
    class ToySource(HttpSource):
        engine = "toy"
        title = "Toy engine"
        mapping = (Feed("requests_running", "gauge", (Upstream("toy_running", "1.0+"),)),)
        model_label = "model"
        metrics_prefix = "toy_"
        docs = "Toy notes: a throw-away engine for this test."
        hint = "not a toy server?"

        async def collect(self) -> Observation:
            payload, _ = await self.read_metrics()
            models, misses = apply(payload, self.mapping, self.model_label)
            return Observation(Readiness.READY, models=models, mapping_misses=tuple(misses))

    srv = ReplayServer({"/metrics": Reply.text(TOY_METRICS)})
    await srv.start()
    try:
        # config validation knows it (and that it needs a url)
        config = load_config_text(
            f"targets:\n  - {{name: t, engine: toy, url: 'http://127.0.0.1:{srv.port}'}}\n",
            "t",
            {},
            engines=engine_specs(),
        )
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


async def test_an_engine_with_text_at_another_path_is_one_file_with_no_collect():
    """The TensorRT-LLM shape: Prometheus text at another path, from the template (no collect() written)."""
    from exporter.sources.base import PrometheusTextSource

    class PathSource(PrometheusTextSource):
        engine = "pathtoy"
        title = "Path toy"
        mapping = (Feed("requests_running", "gauge", (Upstream("pathtoy_running", "1.0+"),)),)
        model_label = "model"
        metrics_prefix = "pathtoy_"
        metrics_path = "/stats/prometheus"
        docs = "Path toy notes."

    text = '# TYPE pathtoy_running gauge\npathtoy_running{model="m"} 4\n'
    srv = ReplayServer(
        {"/health": Reply(200), "/metrics": Reply.json({"not": "prometheus"}), "/stats/prometheus": Reply.text(text)}
    )
    await srv.start()
    try:
        for engine in ("pathtoy", "auto"):
            pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
            try:
                await pipe.poll()
                assert pipe.value("llm_requests_running", engine="pathtoy", model="m") == 4, engine
            finally:
                await pipe.close()
        assert "### Path toy (`engine: pathtoy`)" in docgen.render(docgen.DOC.read_text())
    finally:
        del REGISTRY["pathtoy"]
        await srv.stop()


async def test_a_json_only_engine_is_one_file():
    """The Ollama shape: no Prometheus endpoint, a JSON API; recognised by its probe; documented by its notes;
    a new unified metric comes from the catalogue (here the model's memory)."""
    from exporter.observation import ModelSample

    class JsonSource(HttpSource):
        engine = "jsontoy"
        title = "JSON toy"
        detect_probe = ("/api/about", "jsontoy_version")
        docs = "JSON toy notes: no /metrics at all."

        async def collect(self) -> Observation:
            about = (await self.http.get("/api/about")).json_object()
            sample = ModelSample()
            sample.set("model_memory_bytes", about.get("bytes"))
            return Observation(Readiness.READY, models={"m": sample})

    srv = ReplayServer({"/metrics": Reply(404), "/api/about": Reply.json({"jsontoy_version": "1", "bytes": 42})})
    await srv.start()
    try:
        for engine in ("jsontoy", "auto"):
            pipe = Pipeline(engine, f"http://127.0.0.1:{srv.port}")
            try:
                await pipe.poll()
                assert pipe.value("llm_model_memory_bytes", engine="jsontoy", model="m") == 42, engine
            finally:
                await pipe.close()
        docs = docgen.render(docgen.DOC.read_text())
        assert "### JSON toy (`engine: jsontoy`)" in docs and "JSON toy notes: no /metrics at all." in docs
    finally:
        del REGISTRY["jsontoy"]
        await srv.stop()


async def test_auto_detection_asks_each_source_and_follows_detect_priority():
    """auto.py names no engine: a source says whether a /metrics error answer is its own (`recognises`),
    and probes run in `detect_priority` order, not in the order the files were imported."""
    from exporter.app import make_session
    from exporter.sources.auto import by_priority, detect
    from exporter.sources.base import HttpFetcher, Response
    from tests.support.pipeline import target_config

    class TeapotSource(HttpSource):
        engine = "teapot"

        @classmethod
        def recognises(cls, metrics: Response) -> bool:
            return metrics.status == 418

    class EagerSource(HttpSource):
        engine = "eager"
        detect_probe = ("/version", "version")  # the answer vLLM's probe also takes
        detect_priority = 50

    try:
        order = [engine for engine, _ in by_priority()]
        assert order.index("eager") < order.index("llamacpp") < order.index("vllm")  # vllm's /version: last
        srv = ReplayServer({"/metrics": Reply(418, b"short and stout"), "/version": Reply.json({"version": "1"})})
        await srv.start()
        async with make_session() as session:
            fetcher = HttpFetcher(session, target_config("auto", f"http://127.0.0.1:{srv.port}"))
            assert await detect(fetcher) == "teapot"
            srv.routes["/metrics"] = Reply(404)
            assert await detect(fetcher) == "eager"  # before vLLM (priority 1000) on the same /version answer
            del REGISTRY["eager"]
            assert await detect(fetcher) == "vllm"
        await srv.stop()
    finally:
        REGISTRY.pop("teapot", None)
        REGISTRY.pop("eager", None)
