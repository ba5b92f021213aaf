"""Operations against the real broker: probes, a real Prometheus scraping the service, model reload."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from kafka_helpers import make_events, read_topic, results, wait_for
from tiny_categorizer import BlockingTiny, TinyCategorizer

from consumer.config import Settings
from consumer.metrics import Metrics, serve
from consumer.cli.sample import publish
from consumer.service import Service

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def settings(settings):
    """The broker tests' settings with librdkafka statistics every 500 ms (the lag metrics come from them)."""
    return lambda **overrides: settings(**{"stats_interval_ms": 500, **overrides})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int | None, str]:
    """(status, body); status None while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None, ""


def scrape(port: int, name: str) -> list[tuple[dict, float]]:
    """Samples of one metric read straight from the service's /metrics."""
    code, text = http_get(f"http://127.0.0.1:{port}/metrics")
    if code != 200:
        return []
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def ops_proc(s: Settings, port: int, log_path: Path, delay: float = 0.0, **env_extra: str) -> subprocess.Popen:
    """`shelver consume` (tests/ops_main.py: the tiny model) with its HTTP endpoint on ``port``."""
    env = {**os.environ, "TINY_DELAY_S": str(delay), "SHELVER_METRICS_PORT": str(port),
           "SHELVER_METRICS_HOST": "127.0.0.1", "SHELVER_IMAGE_ALLOWED_HOSTS": json.dumps(s.image_allowed_hosts)}
    for name in ("bootstrap_servers", "group_id", "input_topic", "replay_topic", "output_topic", "dlq_topic",
                 "max_batch_size", "max_batch_wait_ms", "stats_interval_ms"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    env.update(env_extra)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, str(TESTS / "ops_main.py"), "consume"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_readyz_turns_ready_once_models_are_loaded_and_the_group_is_joined(settings, image_base):
    """The order `shelver consume` goes through: endpoint up, models loaded, service joins the group."""
    s = settings()
    metrics = Metrics(stall_s=s.liveness_stall_s)
    server = serve(metrics, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    svc, t = None, None
    try:
        code, body = http_get(f"{base}/readyz")
        assert code == 503
        assert json.loads(body)["problems"] == ["models not loaded and warmed", "consumer group not joined"]
        assert http_get(f"{base}/healthz")[0] == 200  # loading is not a stall
        assert http_get(f"{base}/livez")[0] == 200
        code, body = http_get(f"{base}/startupz")  # but it is not started either
        assert code == 503 and json.loads(body)["problems"][0].startswith("main loop not started")
        model = TinyCategorizer()
        metrics.set_model(model)
        assert json.loads(http_get(f"{base}/readyz")[1])["problems"] == ["consumer group not joined"]
        svc = Service(s, model, metrics=metrics)
        t = threading.Thread(target=lambda: setattr(svc, "rc", svc.run()), daemon=True)
        t.start()
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, what="readiness")
        assert json.loads(http_get(f"{base}/readyz")[1]) == {"status": "ok", "problems": []}
        assert http_get(f"{base}/healthz")[0] == 200
        assert http_get(f"{base}/startupz")[0] == 200 and http_get(f"{base}/livez")[0] == 200
        assert http_get(f"{base}/nope")[0] == 404
        svc.stop()  # draining for shutdown: no new traffic
        assert "stopping" in json.loads(http_get(f"{base}/readyz")[1])["problems"]
        t.join(60)
        assert svc.rc == 0
    finally:
        if svc is not None:
            svc.stop()
            t.join(60)
        server.shutdown()


def test_a_hung_model_load_fails_liveness_past_the_startup_budget_while_startup_never_passes(settings, tmp_path):
    """A load that never ends must not look alive forever: the Docker HEALTHCHECK and the kubelet restart it."""
    s = settings()
    port = free_port()
    proc = ops_proc(s, port, tmp_path / "consume.log", TINY_LOAD_DELAY_S="120", SHELVER_STARTUP_BUDGET_S="3")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{base}/startupz")[0] is not None, 60, "the probe endpoint")
        assert http_get(f"{base}/startupz")[0] == 503
        code, body = http_get(f"{base}/livez")
        if code == 200:  # still within the budget: loading is not a stall
            code, body = wait_for(lambda: (r := http_get(f"{base}/livez"))[0] == 503 and r, 30, "liveness to fail")
        assert code == 503 and "start-up budget of 3s" in json.loads(body)["problems"][0]
        assert http_get(f"{base}/healthz")[0] == 503 and http_get(f"{base}/startupz")[0] == 503
        assert http_get(f"{base}/readyz")[0] == 503
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_healthz_fails_while_inference_is_stuck_and_recovers_when_it_moves(settings, image_base):
    s = settings(liveness_stall_s=3.0)
    model = BlockingTiny()
    metrics = Metrics(stall_s=s.liveness_stall_s)
    metrics.set_model(model)
    server = serve(metrics, "127.0.0.1", 0)
    health = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    port = server.server_address[1]
    svc = Service(s, model, metrics=metrics, max_events=124)
    t = threading.Thread(target=lambda: setattr(svc, "rc", svc.run()), daemon=True)
    try:
        t.start()
        assert http_get(health)[0] == 200  # nothing to infer yet: an idle inference thread is alive
        publish(s, make_events(4, image_base))
        assert model.entered.wait(90)
        code, body = wait_for(lambda: (r := http_get(health))[0] == 503 and r, what="liveness failure")
        problems = json.loads(body)["problems"]
        assert len(problems) == 1 and problems[0].startswith("inference stuck on one batch")  # main loop alive
        # Events keep arriving while inference is stuck: flow control pauses the partitions.
        publish(s, make_events(120, image_base, "more"))
        wait_for(lambda: sum(v for _, v in scrape(port, "shelver_paused_partitions")) > 0, what="paused partitions")
        assert sum(v for _, v in scrape(port, "shelver_batches_in_flight")) >= 1
        model.release.set()
        wait_for(lambda: http_get(health)[0] == 200 or not t.is_alive(), what="liveness recovery")
        t.join(60)
        assert not t.is_alive() and svc.rc == 0
    finally:
        model.release.set()
        svc.stop()
        t.join(60)
        server.shutdown()


PROMETHEUS_CONFIG = """\
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: shelver
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
"""


def prometheus_binary() -> str:
    """The Prometheus server, or a visible skip: a test that claims a real scrape never reads /metrics itself."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus is not installed (Debian's `prometheus` package; .ci/run installs it): "
                    "the [prometheus] variant needs a real server scraping the service")
    return exe


@pytest.fixture
def prometheus(tmp_path, request):
    """``start(target_port) -> query(expr) -> [(labels, value)]``. With ``source`` ``prometheus``: a real
    Prometheus (Debian's package) scraping the service every second, with its own port and storage,
    or the test is skipped, visibly, when it is not installed; with ``metrics-endpoint``: the
    service's /metrics read directly (what the metric names and values are, not that a scrape works)."""
    procs: list[subprocess.Popen] = []
    exe = prometheus_binary() if request.node.callspec.params["source"] == "prometheus" else None

    def start(target_port: int):
        if exe is None:
            return lambda name: scrape(target_port, name)
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=target_port))
        port = free_port()
        with open(tmp_path / "prometheus.log", "w") as log:
            procs.append(subprocess.Popen(
                [exe, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT))
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, what="prometheus")

        def query(expr: str) -> list[tuple[dict, float]]:
            code, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}")
            assert code == 200, body
            return [(r["metric"], float(r["value"][1])) for r in json.loads(body)["data"]["result"]]

        return query

    yield start
    for p in procs:
        p.terminate()
        p.wait(30)


def test_without_prometheus_the_prometheus_variant_is_skipped_not_faked(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="prometheus is not installed"):
        prometheus_binary()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["prometheus", "metrics-endpoint"])
def test_scraped_metrics_count_results_dead_letters_and_lag_back_to_zero(settings, image_base, prometheus, tmp_path,
                                                                          source):
    s = settings()
    n, k = 24, 4
    port = free_port()
    proc = ops_proc(s, port, tmp_path / "consume.log")
    try:
        query = prometheus(port)
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 240, "readiness of shelver consume")
        good = make_events(n - k, image_base)
        publish(s, good)
        p = Producer({"bootstrap.servers": s.bootstrap_servers})
        for i in range(k):
            p.produce(s.input_topic, b"\x00\x01not avro", f"poison-{i}".encode(), partition=i % 3)
        assert p.flush(10) == 0

        def total(name: str) -> float:
            return sum(v for _, v in query(name))

        wait_for(lambda: total("shelver_results_total") == n - k and total("shelver_dead_letters_total") == k,
                 what="all results and dead letters scraped")
        out = results(s, read_topic(s, s.output_topic, n - k))
        partitions = {str(r.source_partition) for r in out} | {str(i % 3) for i in range(k)}

        def lag_zero():
            lag = {labels["partition"]: v for labels, v in query("shelver_consumer_lag")
                   if labels["topic"] == s.input_topic}
            return set(lag) >= partitions and not any(lag.values())

        wait_for(lag_zero, what="consumer lag back to 0 on every partition with events")
        assert total("shelver_results_total") == n - k  # nothing counted twice
        assert {lb["error"]: v for lb, v in query("shelver_dead_letters_total")} == {"undecodable": k}
        assert {lb["topic"]: v for lb, v in query("shelver_events_consumed_total")} == {s.input_topic: n}
        assert {lb["outcome"]: v for lb, v in query("shelver_image_outcomes_total")} == {"used": n - k}
        assert total("shelver_event_latency_seconds_count") == n - k
        assert total("shelver_batch_size_sum") == n
        stages = {lb["stage"] for lb, _ in query("shelver_stage_seconds_count")}
        assert stages == {"decode", "image_fetch", "inference", "delivery", "commit"}
        assert total("shelver_commits_total") >= 1 and total("shelver_pipeline_failures_total") == 0
        assert total("shelver_batches_in_flight") == 0 and total("shelver_paused_partitions") == 0
        [(info, _)] = query("shelver_model_info")
        assert (info["model_version"], info["taxonomy_version"], info["device"]) == ("tiny-test-1",
                                                                                      "tiny-taxonomy-1", "CPU")
    finally:
        rc = stop(proc)
    assert rc == 0, (tmp_path / "consume.log").read_text()[-3000:]


def _artifact(root: Path, version: str) -> Path:
    d = root / version
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"version": version}))
    return d


@pytest.mark.slow
def test_sighup_swaps_models_mid_stream_without_losing_or_repeating_events(settings, image_base, tmp_path):
    s = settings(max_batch_size=4)
    old, new = _artifact(tmp_path, "tiny-a"), _artifact(tmp_path, "tiny-b")
    link = tmp_path / "serving"
    link.symlink_to(old)
    port, log_path = free_port(), tmp_path / "consume.log"
    # reload_poll_s=0: only the signal reloads, so the test knows what caused the swap.
    proc = ops_proc(s, port, log_path, delay=0.2, SHELVER_ARTIFACT_DIR=str(link), SHELVER_RELOAD_POLL_S="0")

    def served_version():
        return next((labels["model_version"] for labels, _ in scrape(port, "shelver_model_info")), None)

    try:
        first, middle, last = (make_events(20, image_base, "a"), make_events(20, image_base, "m"),
                               make_events(10, image_base, "z"))
        publish(s, first)
        wait_for(lambda: sum(v for _, v in scrape(port, "shelver_results_total")) >= 8, 240, "first results")
        publish(s, middle)  # batches in flight (0.2 s each) while the new model loads
        tmp_link = tmp_path / "serving.next"
        tmp_link.symlink_to(new)
        tmp_link.replace(link)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served_version() == "tiny-b", what="the swap")
        publish(s, last)  # formed after the swap: all must be scored by the new model
        out = results(s, read_topic(s, s.output_topic, 50, settle=2.0))
    finally:
        rc = stop(proc)
    log = log_path.read_text()
    assert rc == 0, log[-3000:]
    counts = Counter(r.product_id for r in out)
    assert set(counts) == {e.product_id for e in first + middle + last}
    assert set(counts.values()) == {1}  # nothing lost, nothing twice
    version = {r.product_id: r.model_version for r in out}
    assert set(version.values()) == {"tiny-a", "tiny-b"}
    assert {version[e.product_id] for e in last} == {"tiny-b"}
    per_partition = defaultdict(list)
    for r in sorted(out, key=lambda r: (r.source_partition, r.source_offset)):
        per_partition[r.source_partition].append(r.model_version)
    for versions in per_partition.values():  # never back from new to old
        assert versions == sorted(versions), versions
    assert '"new_version": "tiny-b"' in log and '"model swapped"' in log
