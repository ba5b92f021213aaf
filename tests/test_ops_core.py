"""Pure parts of operations: lag parsing, probe rules, artifact choice and pointers, the reloader
(and one start-up check of `shelver consume` that needs the broker)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import consumer.config as config
from consumer.config import Settings
from models.paths import resolve_artifact_pointer
from consumer.metrics import Heartbeats, Metrics, image_outcome, parse_consumer_lag, readiness_problems, serve
from consumer.reload import ModelReloader

# Shape of librdkafka's statistics JSON (trimmed): topics → partitions → consumer_lag.
STATS = {
    "name": "rdkafka#consumer-1",
    "topics": {
        "products.new": {"partitions": {
            "0": {"partition": 0, "consumer_lag": 5, "hi_offset": 10, "committed_offset": 5},
            "1": {"partition": 1, "consumer_lag": 0},
            "2": {"partition": 2, "consumer_lag": -1},  # nothing committed yet: unknown
            "-1": {"partition": -1, "consumer_lag": -1},  # librdkafka's internal UA partition
        }},
        "products.replay": {"partitions": {"0": {"partition": 0, "consumer_lag": 3}}},
    },
}


def test_consumer_lag_is_read_per_partition_without_unknown_or_internal_ones():
    assert parse_consumer_lag(STATS) == {("products.new", 0): 5, ("products.new", 1): 0, ("products.replay", 0): 3}
    assert parse_consumer_lag({}) == {}


def test_image_outcome_labels_drop_the_detail():
    assert image_outcome("prepare_failed: OSError") == "prepare_failed"
    assert image_outcome("timeout") == "timeout"
    assert image_outcome(None) == image_outcome("") == "failed"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_liveness_fails_only_when_a_loop_is_stuck_longer_than_the_bound():
    clock = Clock()
    hb = Heartbeats(stall_s=10, clock=clock)
    assert hb.problems() == []  # still loading: not a stall
    hb.beat()
    clock.t += 60  # inference idle on an empty queue the whole time: alive
    hb.beat()
    assert hb.problems() == []
    hb.inference(busy=True)
    clock.t += 9
    hb.beat()
    assert hb.problems() == []
    clock.t += 2  # the batch has been in inference 11 s > 10 s
    hb.beat()
    assert hb.problems() == ["inference stuck on one batch for 11s"]
    hb.inference(busy=False)
    assert hb.problems() == []
    clock.t += 11  # the main loop stopped beating
    assert hb.problems() == ["main loop made no progress for 11s"]


def test_startup_passes_once_the_main_loop_runs_and_liveness_fails_past_the_startup_budget_without_it():
    clock = Clock()
    hb = Heartbeats(stall_s=10, clock=clock, startup_budget_s=100)
    clock.t += 99  # loading for 99 s: alive, not started
    assert hb.problems() == [] and hb.startup() == ["main loop not started after 99s (models loading?)"]
    clock.t += 2
    assert hb.problems() == ["main loop not started within the start-up budget of 100s (up 101s)"]
    hb.beat()
    assert hb.problems() == [] and hb.startup() == []
    assert Heartbeats(stall_s=10, clock=clock).problems() == []  # no budget: loading is never a failure


def test_probe_endpoints_startupz_livez_healthz_and_readyz_answer_their_own_question():
    import json
    import urllib.error
    import urllib.request

    from consumer.metrics import serve

    def get(path):
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    clock = Clock()
    metrics = Metrics(stall_s=10, startup_budget_s=30)
    metrics.heartbeats = Heartbeats(stall_s=10, clock=clock, startup_budget_s=30)
    server = serve(metrics, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get("/startupz")[0] == 503 and get("/livez")[0] == 200 and get("/healthz")[0] == 200
        clock.t += 31  # a hung load
        assert get("/livez")[0] == 503 and get("/healthz")[0] == 503 and get("/startupz")[0] == 503
        metrics.heartbeats.beat()
        assert get("/startupz") == (200, {"status": "ok", "problems": []}) and get("/livez")[0] == 200
        assert get("/readyz")[0] == 503  # models not loaded, group not joined
    finally:
        server.shutdown()


def test_stalled_clients_hold_at_most_a_few_threads_for_a_few_seconds_and_the_probes_answer_after(capfd):
    import socket
    import urllib.request

    server = serve(Metrics(stall_s=120), "127.0.0.1", 0)
    port, cap = server.server_address[1], server.MAX_CONNECTIONS
    clients = []
    try:
        for _ in range(cap + 20):  # request lines whose headers never end (slowloris)
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /livez HTTP/1.1\r\n")
            c.settimeout(10)
            clients.append(c)
        # Past the cap a connection is closed at once (before: one thread each, held for good).
        refused = sum(1 for c in clients[cap:] if c.recv(1) == b"")
        assert refused == 20 and server._slots._value == 0
        _await(lambda: server._slots._value == cap, timeout=15)  # the stalled ones time out after 5 s
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as r:
            assert r.status == 200
    finally:
        for c in clients:
            c.close()
        server.shutdown()
    assert "Traceback" not in capfd.readouterr().err  # a client that went away is not a traceback on stderr


def test_a_client_trickling_its_request_is_cut_off_at_the_request_deadline():
    import socket

    server = serve(Metrics(stall_s=120), "127.0.0.1", 0)
    server.REQUEST_DEADLINE_S = 1.0
    try:
        c = socket.create_connection(("127.0.0.1", server.server_address[1]))
        c.settimeout(0.3)
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < 8:  # one byte every 0.3 s: each read is quick
            try:
                c.sendall(b"X")
                closed = c.recv(1) == b""
            except socket.timeout:
                continue
            except OSError:  # reset by the server
                closed = True
        assert closed and time.monotonic() - started < 4  # before: held for as long as the bytes came
        _await(lambda: server._slots._value == server.MAX_CONNECTIONS)
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_endpoint_binds_an_ipv6_address():
    import urllib.request

    server = serve(Metrics(), "::1", 0)
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.server_address[1]}/metrics", timeout=5) as r:
            assert r.status == 200 and b"shelver_" in r.read()
    finally:
        server.shutdown()


def test_a_scrape_during_rebalances_reads_one_immutable_snapshot_of_the_partitions():
    """The scrape runs on the HTTP thread while the main thread rebalances: it must never iterate a set
    that is being changed ("Set changed size during iteration" failed the scrape mid-rebalance)."""
    import threading

    from prometheus_client import generate_latest

    from consumer.service.partitions import Partitions

    class Svc:
        partitions, inflight, failure = Partitions(), (), None

    svc, metrics = Svc(), Metrics()
    metrics.attach(svc)
    metrics.lag = {("in", p): p for p in range(300)}
    errors, stop = [], threading.Event()

    def scrape():
        while not stop.is_set():
            try:
                generate_latest(metrics.registry)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(3000):  # what the rebalance callbacks and flow control do, as fast as they can
            svc.partitions = svc.partitions.assign({("in", p) for p in range(i % 300)})
            svc.partitions = svc.partitions.flow([("in", i % 300)], []).revoke({("in", i % 7)})
    finally:
        stop.set()
        scraper.join(10)
    assert not errors, errors[:1]
    assert isinstance(svc.partitions.assigned, frozenset) and isinstance(svc.partitions.paused, frozenset)
    text = generate_latest(metrics.registry).decode()
    assert text.count("shelver_consumer_lag{") == len(svc.partitions.assigned)


def test_readiness_lists_every_unmet_condition():
    ok = dict(model_loaded=True, joined=True, failure=None, stopping=False)
    assert readiness_problems(**ok) == []
    assert readiness_problems(**{**ok, "model_loaded": False}) == ["models not loaded and warmed"]
    assert readiness_problems(**{**ok, "joined": False}) == ["consumer group not joined"]
    assert readiness_problems(**{**ok, "failure": "delivery failed"}) == ["pipeline failed: delivery failed"]
    assert readiness_problems(**{**ok, "stopping": True}) == ["stopping"]


def _artifact(root: Path, name: str, created: str | None, version: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    manifest = {"version": version or name, **({"created_at": created} if created else {})}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_default_artifact_is_the_newest_by_manifest_time_not_by_name(tmp_path, monkeypatch):
    # A `shelver train` output (shelver-...) sorts before v2-... by name but is newer.
    _artifact(tmp_path, "v2-20261124", "2026-11-24T23:39:20+00:00")
    newest = _artifact(tmp_path, "shelver-20261125-1200", "2026-11-25T12:00:00+00:00")
    _artifact(tmp_path, "zz-older", "2026-11-20T08:00:00+01:00")
    (tmp_path / "not-an-artifact").mkdir()
    monkeypatch.setattr(config, "DEFAULT_ARTIFACTS", tmp_path)
    assert Settings().resolved_artifact_dir() == newest


def test_artifact_without_creation_time_counts_by_its_manifest_file_age(tmp_path, monkeypatch):
    old = _artifact(tmp_path, "b-old", None)
    new = _artifact(tmp_path, "a-new", None)
    os.utime(old / "manifest.json", (1_000_000, 1_000_000))
    monkeypatch.setattr(config, "DEFAULT_ARTIFACTS", tmp_path)
    assert Settings().resolved_artifact_dir() == new


def test_artifact_dir_may_be_a_folder_a_symlink_or_a_pointer_file(tmp_path):
    a = _artifact(tmp_path, "a", None)
    b = _artifact(tmp_path, "b", None)
    assert resolve_artifact_pointer(a) == a.resolve()
    link = tmp_path / "current"
    link.symlink_to(a)
    assert Settings(artifact_dir=link).resolved_artifact_dir() == a.resolve()
    link.unlink()
    link.symlink_to(b)
    assert Settings(artifact_dir=link).resolved_artifact_dir() == b.resolve()
    pointer = tmp_path / "serving.txt"
    pointer.write_text("a\n")  # relative to the pointer file's folder
    assert Settings(artifact_dir=pointer).resolved_artifact_dir() == a.resolve()
    pointer.write_text(f"{b}\n")
    assert Settings(artifact_dir=pointer).resolved_artifact_dir() == b.resolve()


class Model:
    def __init__(self, version: str):
        self.model_version, self.taxonomy_version, self.device = version, "tax-1", "CPU"


def _await(cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _info(metrics: Metrics) -> dict:
    fam = {f.name: f for f in text_string_to_metric_families(_text(metrics))}
    return fam["shelver_model_info"].samples[0].labels


def _text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_reload_on_request_swaps_only_when_the_main_thread_asks_and_updates_the_info_metric():
    versions = iter(["v2", "v3"])
    metrics = Metrics()
    old = Model("v1")
    metrics.set_model(old)
    loaded = threading.Event()

    def load():
        model = Model(next(versions))
        loaded.set()
        return model

    r = ModelReloader(load, metrics=metrics).start()
    try:
        assert r.swap(old) is old  # nothing asked yet
        r.request()
        assert loaded.wait(10)
        _await(lambda: r._ready is not None)
        assert _info(metrics)["model_version"] == "v1"  # loaded beside the old one, not yet serving
        new = r.swap(old)
        assert new.model_version == "v2" and r.swap(new) is new
        assert _info(metrics) == {"model_version": "v2", "taxonomy_version": "tax-1", "device": "CPU"}
        assert "shelver_model_reloads_total{result=\"ok\"} 1.0" in _text(metrics)
    finally:
        r.close()


def test_swap_tells_the_owner_which_model_was_retired_so_its_projection_updater_can_stop():
    retired = []
    r = ModelReloader(lambda: Model("v2"), on_swap=lambda old, new: retired.append((old.model_version,
                                                                                   new.model_version))).start()
    try:
        old = Model("v1")
        assert r.swap(old) is old and retired == []  # no swap, no callback
        r.request()
        _await(lambda: r._ready is not None)
        r.swap(old)
        assert retired == [("v1", "v2")]
    finally:
        r.close()


def test_failed_reload_keeps_the_old_model_and_counts_the_failure():
    metrics = Metrics()
    old = Model("v1")

    def load():
        raise FileNotFoundError("no manifest.json")

    r = ModelReloader(load, metrics=metrics).start()
    try:
        r.request()
        _await(lambda: "shelver_model_reloads_total{result=\"failed\"} 1.0" in _text(metrics))
        assert r.swap(old) is old
    finally:
        r.close()


def _pointed_reloader(tmp_path):
    """Artifacts a and b, a symlink `current` to a, the model loaded from it and a reloader polling it."""
    a, b = _artifact(tmp_path, "a", None), _artifact(tmp_path, "b", None)
    link = tmp_path / "current"
    link.symlink_to(a)
    s = Settings(artifact_dir=link)

    def load():
        return Model(json.loads((s.resolved_artifact_dir() / "manifest.json").read_text())["version"])

    return a, b, link, load(), ModelReloader(load, s.resolved_artifact_dir, poll_s=0.05).start()


def test_reload_happens_when_the_artifact_pointer_moves(tmp_path):
    a, b, link, current, r = _pointed_reloader(tmp_path)
    try:
        time.sleep(0.2)  # several polls with an unchanged pointer: must not reload
        assert r.swap(current) is current
        tmp = tmp_path / "next"
        tmp.symlink_to(b)
        tmp.replace(link)  # atomic repoint, as an operator would do it
        _await(lambda: r._ready is not None)
        assert r.swap(current).model_version == "b"
    finally:
        r.close()


@pytest.mark.parametrize("broken", ["symlink loop", "pointer file not UTF-8"])
def test_a_pointer_broken_for_a_while_keeps_the_current_model_and_reloading_goes_on(tmp_path, broken):
    a, b, link, current, r = _pointed_reloader(tmp_path)
    try:
        tmp = tmp_path / "next"
        if broken == "symlink loop":  # a mistaken repoint: `ln -sfn current next && mv -T next current`
            tmp.symlink_to("current")
        else:
            tmp.write_bytes(b"\xff\xfe a\n")
        tmp.replace(link)
        assert r._resolve() == a.resolve()  # before: RuntimeError / UnicodeDecodeError, and the thread died
        tmp.symlink_to(b)
        tmp.replace(link)  # the operator's fix
        _await(lambda: r._ready is not None)
        assert r.swap(current).model_version == "b" and r._thread.is_alive()
    finally:
        r.close()


@pytest.mark.parametrize("broken", ["symlink loop", "pointer file not UTF-8", "pointer file too long"])
def test_an_unreadable_artifact_pointer_is_a_one_line_configuration_error(tmp_path, monkeypatch, broken):
    from consumer.config import ConfigError, load_settings

    pointer = tmp_path / "current"
    if broken == "symlink loop":
        pointer.symlink_to("current")
    else:
        pointer.write_bytes(b"\xff\xfe\n" if broken == "pointer file not UTF-8" else b"a" * 10_000)
    monkeypatch.setenv("SHELVER_ARTIFACT_DIR", str(pointer))
    with pytest.raises(ConfigError, match="artifact pointer .* is unreadable") as err:
        load_settings()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_metrics_port_out_of_range_is_a_configuration_error(monkeypatch, port):
    from pydantic import ValidationError

    monkeypatch.setenv("SHELVER_METRICS_PORT", port)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.kafka
def test_consume_exits_with_one_line_before_loading_models_when_the_metrics_port_is_taken(
        kafka_bootstrap, topic_factory):
    import socket
    import subprocess
    import sys

    env = {**os.environ, "SHELVER_BOOTSTRAP_SERVERS": kafka_bootstrap, "SHELVER_METRICS_HOST": "127.0.0.1"}
    for name in ("input", "output", "dlq", "replay"):
        env[f"SHELVER_{name.upper()}_TOPIC"] = topic_factory(1, name)
    env["SHELVER_REVIEW_TOPIC"] = ""  # the calibrated artifact would otherwise require it (checked first)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["SHELVER_METRICS_PORT"] = str(taken.getsockname()[1])
        proc = subprocess.run([sys.executable, "-m", "consumer.cli", "consume"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("shelver: cannot serve metrics on 127.0.0.1:"), proc.stderr
    assert "models_loaded" not in proc.stderr and "tensorflow" not in proc.stderr.lower()


def test_produce_sample_and_training_find_the_catalogue_by_one_rule(tmp_path, monkeypatch):
    from consumer.cli import sample
    from models import paths
    from training import data

    assert sample.catalogue_dir is paths.catalogue_dir
    (tmp_path / "styles.csv").write_text("id\n")
    monkeypatch.setenv("SHELVER_DATA_DIR", str(tmp_path))
    assert data.data_dir() == paths.catalogue_dir() == tmp_path
    monkeypatch.setenv("SHELVER_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="set SHELVER_DATA_DIR or pass --data"):
        data.data_dir()
