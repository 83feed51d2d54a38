"""Reloads apply at once and only where needed; log lines cannot carry terminal escapes."""

import logging

from exporter.app import Exporter
from exporter.config import load_config_text
from exporter.logsetup import _OneLine
from exporter.sources import engine_specs


async def test_a_label_change_shows_in_both_formats_at_once_and_unchanged_pollers_keep_running(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "targets:\n  - {name: a, engine: vllm, url: 'http://127.0.0.1:9', labels: {team: x}}\n"
        "  - {name: b, engine: vllm, url: 'http://127.0.0.1:9'}\n"
    )
    exporter = Exporter(load_config_text(path.read_text(), str(path), {}, engines=engine_specs()), str(path))
    await exporter.start()
    try:
        await exporter.poll_all_once()
        assert b'team="x"' in exporter.renderer.render() and b'team="x"' in exporter.renderer.render(True)
        poller_b = exporter.pollers["b"]
        path.write_text(path.read_text().replace("team: x", "team: y"))
        assert await exporter.reload()
        for openmetrics in (False, True):  # no poll in between: the cached lines were dropped
            body = exporter.renderer.render(openmetrics)
            assert b'team="y"' in body and b'team="x"' not in body
        assert exporter.pollers["b"] is poller_b and poller_b.task is not None and not poller_b.task.done()
    finally:
        await exporter.stop()


async def test_a_reload_builds_new_sources_off_the_event_loop_and_a_failing_one_keeps_the_old_config(
    tmp_path, monkeypatch
):
    """Building a source reads TLS files and token files: on reload that runs in a worker thread. A source
    that cannot be built rejects the reload as a whole (the running targets keep polling)."""
    import threading

    from exporter.sources.vllm import VllmSource

    path = tmp_path / "c.yaml"
    path.write_text("targets:\n  - {name: a, engine: vllm, url: 'http://127.0.0.1:9'}\n")
    exporter = Exporter(load_config_text(path.read_text(), str(path), {}, engines=engine_specs()), str(path))
    built_in: list[str] = []
    original = VllmSource.__init__

    def recording(self, target, shared=None):
        built_in.append(threading.current_thread().name)
        if target.name == "broken":
            raise ValueError("cannot build this one")
        original(self, target, shared)

    monkeypatch.setattr(VllmSource, "__init__", recording)
    await exporter.start()
    try:
        assert built_in == [threading.current_thread().name]  # at start, before anything is served
        path.write_text(path.read_text() + "  - {name: b, engine: vllm, url: 'http://127.0.0.1:9'}\n")
        assert await exporter.reload()
        assert built_in[1:] == ["read:the new targets"] and set(exporter.pollers) == {"a", "b"}
        path.write_text(path.read_text() + "  - {name: broken, engine: vllm, url: 'http://127.0.0.1:9'}\n")
        assert not await exporter.reload()
        assert set(exporter.pollers) == {"a", "b"} and not exporter.status.config_reload_ok
    finally:
        await exporter.stop()


def test_text_logs_escape_control_characters():
    record = logging.LogRecord(
        "llm_exporter",
        logging.INFO,
        __file__,
        1,
        "model %s ready",
        ("\x1b]0;pwned\x07\x1b[2J\x1b[31mRED\nforged line",),
        None,
    )
    line = _OneLine(as_json=False).format(record)
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert "\\x1b]0;pwned\\x07" in line and "\\nforged line" in line
