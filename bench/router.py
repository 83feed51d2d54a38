"""Router-mode cost: one llama.cpp router target listing 10 models, 3 of them loaded, polled every 500 ms,
against one single-model llama.cpp target at 500 ms measured in the same run (the baseline).

    .venv/bin/python bench/router.py [--seconds 60] [--write]

A fake router (aiohttp, its own process) serves GET /models and, per loaded model,
/metrics?model=<id> with the real llama-server b11434 payload (tests/fixtures/llamacpp); the real
exporter process polls it. CPU and peak RSS are read from /proc. --write replaces the "Router mode"
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import (  # noqa: E402
    free_port,
    polls_total,
    proc_cpu_seconds,
    proc_peak_rss_bytes,
    publish_section,
    scrape,
    wait_http,
)

LC = ROOT / "tests" / "fixtures" / "llamacpp"
FAKE_ROUTER = """
import json, sys
from aiohttp import web
lc, port, models, loaded = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
metrics = open(lc + "/b11434-metrics-idle.prom").read()
props = open(lc + "/b11434-props.json").read()
listing = {"data": [{"id": f"model-{i}", "path": f"/models/model-{i}.gguf",
                     "status": {"value": "loaded" if i < loaded else "unloaded",
                                "args": ["llama-server", "--alias", f"model-{i}", "--port", str(40000 + i)]}}
                    for i in range(models)]}
async def get_metrics(request):
    if "model" not in request.query:
        if request.app["single"]:
            return web.Response(text=metrics, headers={"Process-Start-Time-Unix": "1"})
        return web.json_response({"error": {"code": 400, "message": "model name is missing from the request"}},
                                 status=400)
    return web.Response(text=metrics, headers={"Process-Start-Time-Unix": "1"})
async def get_models(request):
    return web.json_response(listing)
async def get_props(request):
    return web.Response(text=props, content_type="application/json")
app = web.Application()
app["single"] = models == 0
app.router.add_get("/metrics", get_metrics)
app.router.add_get("/models", get_models)
app.router.add_get("/props", get_props)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


def run(tmp: Path, models: int, loaded: int, seconds: float) -> dict:
    fake_port, exporter_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-c", FAKE_ROUTER, str(LC), str(fake_port), str(models), str(loaded)])
    config = tmp / f"router-{models}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{exporter_port}\ntargets:\n  - {{name: r, engine: llamacpp, "
        f"url: 'http://127.0.0.1:{fake_port}', interval: 500ms, timeout: 450ms}}\n"
    )
    wait_http(f"http://127.0.0.1:{fake_port}/props")
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(config), "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{exporter_port}/metrics"
        wait_http(f"http://127.0.0.1:{exporter_port}/healthz")
        time.sleep(3)
        _, body = scrape(url)
        polls0, cpu0, t0 = polls_total(body), proc_cpu_seconds(exporter.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            _, body = scrape(url)
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        cpu = proc_cpu_seconds(exporter.pid) - cpu0
        polls = sum(polls_total(body).values()) - sum(polls0.values())
        states = body.count("llm_model_state{") if models else 0
        return {
            "models": models,
            "loaded": loaded,
            "seconds": elapsed,
            "cpu_pct": 100 * cpu / elapsed,
            "cpu_ms_per_poll": 1e3 * cpu / max(polls, 1),
            "polls": polls,
            "hwm_mib": proc_peak_rss_bytes(exporter.pid) / 2**20,
            "state_series": states,
            "body_kib": len(body) / 1024,
        }
    finally:
        exporter.terminate()
        exporter.wait(10)
        fake.terminate()
        fake.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = run(Path(tmp), 0, 0, args.seconds)
        router = run(Path(tmp), 10, 3, args.seconds)
    rows = [("single model (baseline)", single), ("router: 10 models, 3 loaded", router)]
    lines = [
        "## Router mode (bench/router.py)",
        "",
        f"One llama.cpp target polled every 500 ms for {args.seconds:.0f} s, real b11434 payload from a fake "
        "router in its own process; both rows measured in the same run.",
        "",
        "| target | exporter CPU | CPU per poll | peak RSS | /metrics body |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['cpu_pct']:.1f} % of a core | {r['cpu_ms_per_poll']:.2f} ms | "
            f"{r['hwm_mib']:.0f} MiB | {r['body_kib']:.0f} KiB |"
        )
    ratio = router["cpu_ms_per_poll"] / max(single["cpu_ms_per_poll"], 1e-9)
    lines += [
        "",
        f"A router poll (GET /models + three /metrics?model=) costs **{ratio:.1f}×** a single-model poll "
        "(GET /metrics + /props); RSS grows by "
        f"{router['hwm_mib'] - single['hwm_mib']:.1f} MiB for ten models' lifecycles and three models' "
        "windows.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"single": single, "router": router}), file=sys.stderr)
    if args.write:
        publish_section("router.md", "## Router mode (bench/router.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
