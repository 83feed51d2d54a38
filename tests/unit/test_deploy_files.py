"""Deployment files: checked with the real tools (promtool, systemd-analyze, kubernetes schemas)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from exporter.config import DEFAULT_PORT, load_config_text
from exporter.sources import engine_specs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


# ---------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def dockerfile():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def final_stage(instructions):
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_without_compilers_in_the_final_image(dockerfile):
    froms = [i for i in dockerfile.structure if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    final = final_stage(dockerfile.structure)
    assert not [i for i in final if i["instruction"] == "RUN"], "the final stage must only copy the built venv"
    assert "COPY --from=build" in " ".join(i["content"] for i in final)


def test_dockerfile_runs_non_root_exposes_default_port_and_checks_health(dockerfile):
    final = final_stage(dockerfile.structure)
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0
    assert [i["value"] for i in final if i["instruction"] == "EXPOSE"] == [str(DEFAULT_PORT)]
    entry = json.loads([i["value"] for i in final if i["instruction"] == "ENTRYPOINT"][-1])
    assert entry == ["llm-exporter"]
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"][-1]
    # the exporter's own check: it follows the config's listen / $LLM_EXPORTER_LISTEN, no port hard-coded
    assert '["llm-exporter", "--healthcheck"]' in health and str(DEFAULT_PORT) not in health
    assert dockerfile.envs.get("LLM_EXPORTER_CONFIG") == "/etc/llm-exporter/config.yaml"
    assert any(k.startswith("org.opencontainers.image.") for k in dockerfile.labels)
    assert not any("example.invalid" in v for v in dockerfile.labels.values())  # no placeholder source


def test_dockerfile_installs_the_way_the_readme_does(dockerfile):
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/llm-exporter" in readme
    runs = " ".join(i["value"] for i in dockerfile.structure if i["instruction"] == "RUN")
    commands = [c.strip() for c in re.split(r"&&", runs)]
    for command in commands:
        assert re.fullmatch(
            r"python -m venv \S+"
            r'|SETUPTOOLS_SCM_PRETEND_VERSION="\$VERSION" \S+/bin/python -m pip install --no-cache-dir \.',
            command,
        ), command


@pytest.mark.tools
def test_the_entrypoint_honours_the_config_path_variable(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("targets:\n  - {name: from-env, engine: vllm, url: 'http://127.0.0.1:9'}\n")
    env = {"LLM_EXPORTER_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0 and str(config) in out.stdout
    env["LLM_EXPORTER_CONFIG"] = str(tmp_path / "absent.yaml")  # absent: the embedded default
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0 and "embedded default" in out.stdout


# ---------------------------------------------------------------- systemd

UNIT = ROOT / "systemd" / "llm-exporter.service"


def systemd_analyze():
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (scripts/test.sh does)")
    return path


@pytest.mark.tools
def test_systemd_unit_exposure_score_is_at_most_2():
    out = subprocess.run([systemd_analyze(), "security", "--offline=true", str(UNIT)], capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout).group(1))
    assert score <= 2.0, out.stdout[-3000:]
    assert f"{score:.1f}" in (ROOT / "README.md").read_text(), "README must report the measured score"


@pytest.mark.tools
def test_systemd_unit_verifies_clean(tmp_path):
    exe = Path(sys.executable).with_name("llm-exporter")
    assert exe.exists()
    text = UNIT.read_text()
    assert "/opt/llm-exporter/bin/llm-exporter" in text
    # verify needs ExecStart to exist: check the shipped unit with only that path pointing here
    copy = tmp_path / "llm-exporter.service"
    copy.write_text(text.replace("/opt/llm-exporter/bin/llm-exporter", str(exe)))
    out = subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stderr


def test_systemd_unit_is_hardened_and_reloads_with_sighup():
    text = UNIT.read_text()
    for directive in (
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "DeviceAllow=char-nvidia-frontend rw",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert directive in text, directive
    assert (ROOT / "systemd" / "config.yaml").exists()


def test_systemd_example_config_is_valid():
    load_config_text((ROOT / "systemd" / "config.yaml").read_text(), "systemd/config.yaml", {}, engines=engine_specs())


# ---------------------------------------------------------------- Kubernetes

MANIFESTS = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")


def documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_core_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    checked = 0
    for _path, doc in documents():
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        checked += 1
    assert checked >= 8


def test_sidecars_probes_port_resources_and_security():
    deployments = [doc for _, doc in documents() if doc["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"vllm", "llamacpp"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "llm-exporter")
        assert sidecar["ports"] == [{"name": "llm-metrics", "containerPort": DEFAULT_PORT}]
        assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # a monitor never gates the pod's Ready condition (and with it the Service endpoints)
        assert "readinessProbe" not in sidecar and "startupProbe" not in sidecar
        # the probes send no password: both paths must stay open when --web.config.file turns on basic auth
        from exporter.webconfig import OPEN_PATHS

        assert {"/healthz", "/readyz"} <= OPEN_PATHS
        assert sidecar["resources"]["requests"] and sidecar["resources"]["limits"]
        security = sidecar["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] != 0 and security["readOnlyRootFilesystem"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_PORT)
        env = {e["name"]: e for e in sidecar["env"]}
        assert all("secretKeyRef" in e["valueFrom"] for e in env.values())  # secrets only through env


def test_configmaps_hold_valid_exporter_configs():
    maps = [doc for _, doc in documents() if doc["kind"] == "ConfigMap"]
    assert len(maps) == 3  # two sidecars and the node-level nvml DaemonSet
    for config_map in maps:
        load_config_text(config_map["data"]["config.yaml"], config_map["metadata"]["name"], {}, engines=engine_specs())


def test_prometheus_operator_monitors_select_the_named_port():
    monitors = {doc["kind"]: doc for _, doc in documents() if doc["apiVersion"] == "monitoring.coreos.com/v1"}
    assert set(monitors) == {"PodMonitor", "ServiceMonitor"}
    assert monitors["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "llm-metrics"
    assert monitors["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "llm-metrics"
    selected = monitors["PodMonitor"]["spec"]["selector"]["matchExpressions"][0]["values"]
    assert set(selected) == {"vllm", "llamacpp", "llm-exporter-nvml"}


def test_kubernetes_sd_scrape_job_keeps_the_named_port():
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-kubernetes-pods.yml").read_text())
    relabels = config["scrape_configs"][0]["relabel_configs"]
    assert {
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "action": "keep",
        "regex": "llm-metrics",
    } in relabels


# ---------------------------------------------------------------- Prometheus rules and Grafana


@pytest.mark.prometheus
def test_promtool_checks_rules_config_and_rule_unit_tests(promtool):
    prom = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", "llm-exporter.rules.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "tests/llm-exporter.rules.test.yml"],
    ):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=prom)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "llm-exporter.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "llm-exporter.rules.test.yml").read_text())
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == firing == quiet
    assert {
        "LLMTargetDown",
        "LLMModelLoadingTooLong",
        "LLMQueueLatencyHigh",
        "LLMKVCacheHitRatioDropped",
        "LLMKVCacheUsageHigh",
        "LLMGPUMemoryNearlyFull",
        "LLMExporterPollErrors",
        "LLMGPUXidError",
        "LLMGPURowRemapFailed",
    } <= alerts


def test_every_alert_is_tested_on_two_replicas_and_names_the_one_that_fires():
    """Two exporters (different instance) in the test's input; each expected alert carries its instance,
    and every alert's summary names the replica (pod or instance)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "llm-exporter.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert "$labels.instance" in rule["annotations"]["summary"], rule["alert"]
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "llm-exporter.rules.test.yml").read_text())
    for case in tests["tests"]:
        instances = set(re.findall(r'instance="([^"]+)"', " ".join(s["series"] for s in case["input_series"])))
        for check in case.get("alert_rule_test", []):
            assert len(instances) >= 2, check["alertname"]
            for alert in check["exp_alerts"]:
                assert alert["exp_labels"].get("instance") in instances, check["alertname"]
                assert alert["exp_annotations"]["summary"], check["alertname"]


def dashboard_queries():
    dashboard = json.loads((DEPLOY / "grafana" / "llm-exporter-dashboard.json").read_text())
    return dashboard, [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_has_variables_rows_and_queries():
    dashboard, queries = dashboard_queries()
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"target", "model", "datasource"} <= names
    rows = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert {"Headline signals", "Throughput", "Queue and running", "GPUs", "Exporter health"} <= rows
    assert len(queries) >= 15
    for metric in (
        "llm_model_last_load_duration_seconds",
        "llm_token_queue_latency",
        "llm_kv_cache_hit_ratio",
        "llm_gpu_process_memory_used_bytes",
        "llm_up",
    ):
        assert any(metric in q for q in queries), metric


def test_readme_installs_every_path_the_systemd_unit_uses():
    """The unit's ExecStart binary, its Documentation= file and its config are all put in place by the
    README's install steps."""
    unit = (ROOT / "systemd" / "llm-exporter.service").read_text()
    readme = (ROOT / "README.md").read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
    docs = re.search(r"^Documentation=file://(\S+)", unit, re.M).group(1)
    config = re.search(r"--config (\S+)", unit).group(1)
    assert exec_start == "/opt/llm-exporter/bin/llm-exporter" and "python3 -m venv /opt/llm-exporter" in readme
    assert f"README.md {docs}" in readme
    assert f"systemd/config.yaml {config}" in readme


def test_quoted_benchmark_figures_come_from_bench_results():
    """Figures are quoted from one place: every figure the README's Deploy section gives is in
    bench/RESULTS.md, and the Kubernetes manifests quote none (they point to RESULTS.md)."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") : readme.index("- **Kubernetes sidecar**")]
    figures = re.findall(r"(\d+(?:\.\d+)?) ?(MiB|% of a core|%)", deploy)
    assert len(figures) >= 4, deploy
    for number, unit in figures:
        unit = "%" if unit.startswith("%") else unit
        assert re.search(rf"\b{re.escape(number)} ?{re.escape(unit)}", results), f"{number} {unit} not in RESULTS.md"
    for manifest in (ROOT / "deploy" / "kubernetes").glob("*.yaml"):
        comments = [line for line in manifest.read_text().splitlines() if line.strip().startswith("#")]
        assert not any(re.search(r"\d+(\.\d+)? ?(MiB|%)", c) for c in comments), manifest.name


def test_nvml_daemonset_reads_every_gpu_without_claiming_one():
    (daemonset,) = [doc for _, doc in documents() if doc["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True  # NVML's PIDs are the host's; /proc/<pid>/cgroup gives pod and container
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"])  # never takes a GPU from the engines
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["capabilities"] == {"drop": ["ALL"]}
    assert "readinessProbe" not in container
    config = next(
        d for _, d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "llm-exporter-nvml"
    )
    assert "engine: nvml" in config["data"]["config.yaml"]


def test_kustomization_sets_image_tag_and_namespace_for_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] and {r for r in kustomization["resources"]} >= {
        "vllm-with-exporter.yaml",
        "llamacpp-with-exporter.yaml",
        "nvml-daemonset.yaml",
        "podmonitor.yaml",
    }
    (image,) = kustomization["images"]
    assert image["newName"] and image["newTag"]
    exporter_images = {
        c["image"].split(":")[0]
        for _, doc in documents()
        if doc["kind"] in ("Deployment", "DaemonSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
        if c["name"] == "llm-exporter"
    }
    assert exporter_images == {image["name"]}  # the one name the kustomization rewrites
    for _, doc in documents():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]  # set in one place
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            assert doc["metadata"]["labels"]["release"]


def test_every_recording_rule_is_checked_by_a_promtool_test():
    """Each recorded series is asserted by a promql_expr_test, or feeds (directly or through another rule)
    an alert or a recorded series that is."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "llm-exporter.rules.yml").read_text())
    records = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = [r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "llm-exporter.rules.test.yml").read_text())
    checked = " ".join(check["expr"] for case in tests["tests"] for check in case.get("promql_expr_test", []))
    covered = {name for name in records if re.search(rf"\b{re.escape(name)}\b", checked + " " + " ".join(alerts))}
    changed = True
    while changed:
        changed = False
        for name in list(covered):
            for other in records:
                if other not in covered and re.search(rf"\b{re.escape(other)}\b", records[name]):
                    covered.add(other)
                    changed = True
    assert not set(records) - covered, sorted(set(records) - covered)


def test_dcgm_join_rules_use_dcgm_exporters_own_label_names():
    sample = (ROOT / "tests" / "fixtures" / "dcgm-exporter" / "readme-kubernetes-sample.txt").read_text()
    names = set(re.findall(r"[{,]\s*(\w+)=", sample))
    assert {"gpu", "UUID", "container", "namespace", "pod"} <= names
    rules = yaml.safe_load((DEPLOY / "prometheus" / "llm-exporter.rules.yml").read_text())
    (group,) = [g for g in rules["groups"] if g["name"] == "llm-exporter.dcgm"]
    for rule in group["rules"]:
        used = set(re.findall(r"by \(([^)]*)\)", rule["expr"]))
        for labels in used:
            for label in (x.strip() for x in labels.split(",")):
                assert label in names | {"target", "model", "Hostname"}, (rule["record"], label)
