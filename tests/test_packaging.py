"""Packaging: dependency sets, the wheel's contents, the Docker image, compose with Prometheus and
Grafana; docker-compose.yml and the Dockerfile describe the same system the local scripts run."""
import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

from consumer.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_creates_every_topic_the_service_uses_and_reserves_a_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    init_script = "\n".join(services["kafka-init"]["entrypoint"])
    s = Settings()
    for topic in (s.input_topic, s.replay_topic, s.output_topic, s.dlq_topic):
        assert topic in init_script
    shelver = services["shelver"]
    assert shelver["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    device = shelver["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_dockerfile_uses_the_tensorflow_gpu_image_and_runs_the_consumer():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM tensorflow/tensorflow:" in dockerfile and "-gpu" in dockerfile
    assert '"shelver", "consume"' in dockerfile


# ---- dependencies and the wheel ------------------------------------------------------------------

LOCAL = {"consumer", "models", "schemas", "training"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(file: str) -> dict[str, str]:
    """name → version of a requirements file's lines (every line must be an exact pin)."""
    pins = {}
    for line in (ROOT / file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{file}: {line!r} is not pinned with =="
        pins[_canonical(name)] = version
    return pins


def _third_party_imports(*packages: str) -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it (any depth)."""
    found: dict[str, set[str]] = {}
    for pkg in packages:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                         else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_the_service_imports_is_a_pinned_runtime_dependency():
    runtime = _pins("requirements-runtime.txt")
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in _third_party_imports("consumer", "models", "schemas").items():
        names = {_canonical(d) for d in dists.get(module, [module])}
        if not names & set(runtime):
            missing[module] = sorted(files)
    assert not missing, f"add these to requirements-runtime.txt: {missing}"


def test_runtime_requirements_leave_out_training_and_test_packages_and_pin_keras():
    runtime = _pins("requirements-runtime.txt")
    for heavy in ("pandas", "scikit-learn", "matplotlib", "pyarrow", "pytest", "scikit-image"):
        assert heavy not in runtime
    assert runtime["keras"] and runtime["tensorflow"]
    train, dev = _pins("requirements-train.txt"), _pins("requirements-dev.txt")
    assert "pandas" in train and "pytest" in dev
    assert not (set(runtime) & set(train)) and not (set(runtime) & set(dev)) and not (set(train) & set(dev))


def test_requirements_txt_installs_all_three_sets_and_pyproject_reads_the_same_files():
    lines = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    for file in ("requirements-runtime.txt", "requirements-train.txt", "requirements-dev.txt"):
        assert f"-r {file}" in lines
    loose = [line for line in lines if line and not line.startswith(("#", "-r "))]
    assert not loose, f"put these into one of the requirements-*.txt files: {loose}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements-runtime.txt"]
    assert dynamic["optional-dependencies"]["train"]["file"] == ["requirements-train.txt"]
    assert dynamic["optional-dependencies"]["dev"]["file"] == ["requirements-dev.txt"]


def test_declared_python_version_is_the_one_the_code_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # consumer/logs.py uses logging.getLevelNamesMapping (new in 3.11); ruff targets the same version.
    assert "logging.getLevelNamesMapping" in (ROOT / "consumer" / "logs.py").read_text()
    assert project["requires-python"] == ">=3.11"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"] == "py311"


def _setup_module():
    """setup.py's constants (its setup() call only runs as __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shelver_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_package_list_covers_every_python_package_and_the_artifact():
    setup = _setup_module()
    listed = set(setup.PACKAGES)
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for pkg in LOCAL for p in (ROOT / pkg).rglob("__init__.py")}
    assert on_disk <= listed, f"add to setup.py's PACKAGES: {sorted(on_disk - listed)}"
    data = setup.PACKAGE_DATA
    # artifacts/<version>/file and artifacts/<version>/text/file: the globs reach every committed file
    artifact_files = [p.relative_to(ROOT / "models" / "artifacts") for p in (ROOT / "models" / "artifacts").rglob("*")
                      if p.is_file()]
    globs = data["models.artifacts"]
    assert artifact_files and all(any(f.match(g) for g in globs) for f in artifact_files)
    assert "models.taxonomies" in listed and "*.yaml" in data["*"]


def test_the_wheel_installs_one_shelver_package_and_rewrites_only_the_projects_imports():
    setup = _setup_module()
    wheel = setup.wheel_config()
    assert {p.split(".")[0] for p in wheel["packages"]} == {"shelver"}
    assert wheel["package_dir"]["shelver.models"] == "models" and wheel["package_data"]["shelver.models.artifacts"]
    assert wheel["entry_points"]["console_scripts"] == ["shelver = shelver.consumer.cli:main"]
    source = ("from __future__ import annotations\nfrom models import kl\nfrom models.paths import X\n"
              "def f():\n    from training.data import load\n    from consumer import scoring as s\n"
              "from modelsx import y\nfrom pandas import models\nimport consumer_lib\n")
    assert setup.namespaced(source) == (
        "from __future__ import annotations\nfrom shelver.models import kl\nfrom shelver.models.paths import X\n"
        "def f():\n    from shelver.training.data import load\n    from shelver.consumer import scoring as s\n"
        "from modelsx import y\nfrom pandas import models\nimport consumer_lib\n")
    # every import of a project package in the shipped code has the `from X` form that namespaced() rewrites
    plain = [f"{p}:{n}" for pkg in LOCAL for p in (ROOT / pkg).rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.match(r"\s*import\s+(consumer|models|schemas|training)\b", line)]
    assert not plain, f"use `from X import y` (setup.py rewrites only those): {plain}"
    # the editable install (make setup) keeps the checkout's own names
    assert setup.editable_config()["entry_points"]["console_scripts"] == ["shelver = consumer.cli:main"]


# ---- Docker ------------------------------------------------------------------------------------------


def test_docker_image_installs_runtime_dependencies_only_and_runs_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile[dockerfile.rindex("\nFROM "):]  # the stage that becomes the image
    assert "requirements-runtime.txt" in final
    for other in ("requirements.txt", "requirements-train.txt", "requirements-dev.txt", "pip install -e", "[train]"):
        assert other not in final
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*"shelver\.consumer\.probe", "/livez"', final, re.M)  # a hung load too


def test_dockerignore_sends_only_what_the_wheel_build_needs():
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"  # everything excluded, then the package sources let back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "setup.py", "consumer", "models", "schemas", "training",
            "requirements-runtime.txt"} <= allowed
    assert not allowed & {"tests", ".venv", ".kafka", ".cache", "reports", "benchmarks", ".git"}
    # pyproject reads these at build time; they must be in the context
    project = (ROOT / "pyproject.toml").read_text()
    assert all(f in allowed for f in re.findall(r'"(requirements-[a-z]+\.txt)"', project))


# ---- compose: Prometheus, Grafana, graceful stop ---------------------------------------------------------


def test_compose_runs_prometheus_and_grafana_from_files_in_the_repository():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    shelver = services["shelver"]
    grace = shelver["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 30
    port = int(shelver["environment"]["SHELVER_METRICS_PORT"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "shelver")
    assert job["dns_sd_configs"][0]["names"] == ["shelver"] and job["dns_sd_configs"][0]["port"] == port


def _exported_metric_names() -> set[str]:
    """Series names the service exports: from consumer/metrics.py when it exists, else the agreed list."""
    metrics_py = ROOT / "consumer" / "metrics.py"
    agreed = {"shelver_events_consumed": "counter", "shelver_results": "counter", "shelver_dead_letters": "counter",
              "shelver_image_outcomes": "counter", "shelver_event_latency_seconds": "histogram",
              "shelver_consumer_lag": "gauge", "shelver_model": "info", "shelver_batch_size": "histogram",
              "shelver_stage_seconds": "histogram"}
    if metrics_py.exists():
        kinds = {"Counter": "counter", "Histogram": "histogram", "Info": "info", "Gauge": "gauge",
                 "GaugeMetricFamily": "gauge", "CounterMetricFamily": "counter", "Summary": "summary"}
        agreed = {}
        for node in ast.walk(ast.parse(metrics_py.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                kind = kinds.get(node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                if kind:
                    agreed[node.args[0].value] = kind
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"],
                "gauge": [""], "summary": ["_sum", "_count", ""]}
    return {name + s for name, kind in agreed.items() for s in suffixes[kind]}


def test_grafana_dashboard_is_valid_and_queries_only_metrics_the_service_exports():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "shelver.json").read_text())
    datasource = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    exported = _exported_metric_names()
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            exprs.append(target["expr"])
            used = set(re.findall(r"\bshelver_[a-z_]+", target["expr"]))
            assert used and used <= exported, f"{panel['title']}: {sorted(used - exported)} not exported"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    text = "\n".join(exprs)
    # what an operator asked to see: throughput, lag, p50/p99 latency, dead letters, image failures, model
    for needed in ("shelver_events_consumed_total", "shelver_consumer_lag", "histogram_quantile(0.5",
                   "histogram_quantile(0.99", "shelver_dead_letters_total", "shelver_image_outcomes_total",
                   "shelver_model_info"):
        assert needed in text
    provider = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "shelver.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in compose["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_prometheus_config_passes_promtool_when_installed():
    import shutil
    import subprocess

    import pytest

    promtool = shutil.which("promtool")  # Debian's prometheus package, which .ci/run installs
    if not promtool:
        pytest.skip("promtool not installed")
    out = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
