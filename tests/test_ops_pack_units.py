"""Small pieces of ops-pack: progress lines off a terminal, the container's health probe against a
real local HTTP server, and the pandas-free sample catalogue reading the same rows as training's."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from consumer import probe
from consumer.cli.progress import ProgressLines, progress
from consumer.cli.sample import read_catalogue, sample_events


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_rate_limited_and_the_last_one_has_the_total():
    clock, emitted = FakeClock(), []
    with ProgressLines(100, 10.0, lambda done, total, rate: emitted.append((done, total, rate)), clock) as bar:
        for _ in range(100):
            clock.now += 0.5  # 100 updates over 50 s at a 10 s interval
            bar.update(1)
    assert [done for done, _, _ in emitted] == [20, 40, 60, 80, 100, 100]
    assert emitted[-1] == (100, 100, 2.0)


def test_progress_is_silent_when_disabled():
    with progress(10, "x", "event", enabled=False) as bar:
        bar.update(10)
        bar.close()


@pytest.fixture
def health_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/healthz" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probe_exit_status_follows_the_endpoint(health_server, monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_METRICS_PORT", str(health_server))
    assert probe.main(["/healthz"]) == 0
    assert probe.main(["/readyz"]) == 1
    assert "HTTP 503" in capsys.readouterr().err


def test_probe_fails_when_nothing_listens(health_server, monkeypatch):
    monkeypatch.setenv("SHELVER_METRICS_PORT", "1")  # a privileged port nothing here listens on
    assert probe.main(["/healthz"]) == 1


def test_sample_catalogue_without_pandas_has_training_rows_and_picks_the_same_products():
    training_data = pytest.importorskip("training.data")
    try:
        frame = training_data.load_catalogue()
    except FileNotFoundError:
        pytest.skip("catalogue not present")
    items = read_catalogue()
    assert [i.id for i in items] == frame["id"].tolist()
    assert [i.productDisplayName for i in items] == frame["productDisplayName"].tolist()
    from_items = sample_events(items, "http://x", 50, seed=3)
    from_frame = sample_events(frame, "http://x", 50, seed=3)
    assert [(e.product_id, e.title, e.image_url) for e in from_items] == \
           [(e.product_id, e.title, e.image_url) for e in from_frame]


@pytest.mark.kafka
def test_produce_and_replay_report_progress_as_log_lines_off_a_terminal(kafka_bootstrap, topic_factory):
    from datetime import datetime, timedelta, timezone

    from structlog.testing import capture_logs

    from consumer.config import Settings
    from consumer.cli.replay import replay
    from consumer.cli.sample import publish
    from schemas import ProductEvent

    from consumer.logs import configure

    configure("INFO")  # progress lines are INFO; an earlier test may have left the level at WARNING
    source, target = topic_factory(prefix="progress-in"), topic_factory(prefix="progress-out")
    settings = Settings(bootstrap_servers=kafka_bootstrap, input_topic=source)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    events = [ProductEvent(product_id=f"p{i}", title=f"shirt {i}", event_time=datetime.now(timezone.utc))
              for i in range(25)]
    with capture_logs() as logs:
        publish(settings, events, show_progress=True)
        copied = replay(settings, source, since, None, target, show_progress=True)
    lines = [(e["task"], e["done"], e["total"]) for e in logs if e["event"] == "progress"]
    assert copied == 25
    assert lines[-2:] == [("produce-sample", 25, 25), (f"replay {source}", 25, 25)]
