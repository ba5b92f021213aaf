"""The streaming service against a real broker, real HTTP image server and a real (tiny) TF model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Producer
from kafka_helpers import TESTS, committed, make_events, read_topic, results, run_service, wait_for
from tiny_categorizer import TARGETS, TinyCategorizer

from consumer.config import Settings
from consumer.cli.replay import replay
from consumer.cli.sample import publish
from schemas import CategoryAssigned, ProductEvent
from schemas.wire import make_codec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def consume_all(s: Settings, model, n: int, n_results: int | None = None) -> list[CategoryAssigned]:
    """Runs the service until ``n`` events (results + DLQ) are committed; returns the results topic."""
    svc, t = run_service(s, model, max_events=n)
    t.join(120)
    assert not t.is_alive() and svc.rc == 0
    return results(s, read_topic(s, s.output_topic, n if n_results is None else n_results))


def test_every_event_gets_one_result_keyed_by_product_id(settings, model, image_base):
    s = settings()
    events = make_events(40, image_base)
    publish(s, events)
    consume_all(s, model, 40)
    msgs = read_topic(s, s.output_topic, 40)
    assert sorted(m.key().decode() for m in msgs) == sorted(e.product_id for e in events)
    for m, r in zip(msgs, results(s, msgs)):
        assert m.key().decode() == r.product_id and r.category in TARGETS
        assert r.source_topic == s.input_topic and not r.replayed and r.image_used and r.image_error is None
        assert r.model_version == model.model_version and len(r.alternatives) == 2
    assert len(msgs) == 40
    assert sum(committed(s).values()) == 40  # offsets committed up to the end of every partition
    assert read_topic(s, s.dlq_topic, 0, settle=0.5) == []


def test_commits_wait_for_the_commit_interval_and_everything_delivered_is_committed_at_stop(settings, model, image_base):
    s = settings(max_batch_size=2, commit_interval_ms=600_000)
    events = make_events(12, image_base)
    svc, t = run_service(s, model)
    try:
        publish(s, events[:1])  # one event: one batch (two could be polled apart, into two batches)
        wait_for(lambda: sum(committed(s).values()) == 1, what="the first commit, not held back")
        publish(s, events[1:])
        assert len(read_topic(s, s.output_topic, 12)) == 12
        wait_for(lambda: svc.completed == 12, what="every delivery report served")  # all delivered ...
        assert sum(committed(s).values()) == 1  # ... and their offsets wait for the interval (a commit per batch before)
    finally:
        svc.stop()
        t.join(60)
    assert svc.rc == 0
    assert sum(committed(s).values()) == 12  # the drain at stop commits everything delivered


def test_poison_goes_to_dlq_with_original_bytes_and_good_events_are_categorized(settings, model, image_base):
    s = settings()
    codec = make_codec(None)
    now = datetime.now(timezone.utc)
    poison = {
        b"garbage": (b"\x00\x01not avro", "undecodable"),
        b"bad-url": (codec.encode({**make_events(1, image_base)[0].to_avro(), "image_url": "file:///etc/passwd"},
                                  "product_event", s.input_topic), "schema_invalid"),
        b"empty": (codec.encode(ProductEvent(product_id="e", title=" ", event_time=now).to_avro(),
                                "product_event", s.input_topic), "no_content"),
    }
    p = Producer({"bootstrap.servers": s.bootstrap_servers})
    for key, (value, _) in poison.items():
        p.produce(s.input_topic, value, key)
    p.flush(10)
    good = make_events(6, image_base)
    publish(s, good)
    out = consume_all(s, model, 9, n_results=6)
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in good)
    dlq = read_topic(s, s.dlq_topic, 3)
    assert len(dlq) == 3
    for m in dlq:
        value, code = poison[m.key()]
        headers = {k: v.decode() for k, v in m.headers()}
        assert m.value() == value and headers["error"] == code and headers["error_reason"]
        assert headers["source_topic"] == s.input_topic and int(headers["source_offset"]) >= 0
        assert headers["source_partition"] in {"0", "1", "2"}


def test_broken_image_falls_back_to_text_with_the_reason(settings, model, image_base):
    s = settings()
    now = datetime.now(timezone.utc)
    publish(s, [
        ProductEvent(product_id="missing", title="Blue jeans", image_url=f"{image_base}/nope.jpg", event_time=now),
        ProductEvent(product_id="blocked", title="Blue jeans", image_url="http://10.255.255.1/x.jpg", event_time=now),
        ProductEvent(product_id="none", title="Blue jeans", event_time=now),
        ProductEvent(product_id="ok", title="Blue jeans", image_url=f"{image_base}/1.jpg", event_time=now),
    ])
    by_id = {r.product_id: r for r in consume_all(s, model, 4)}
    assert (by_id["missing"].image_used, by_id["missing"].image_error) == (False, "http_404")
    assert (by_id["blocked"].image_used, by_id["blocked"].image_error) == (False, "blocked_address")
    assert (by_id["none"].image_used, by_id["none"].image_error) == (False, "no_url")
    assert (by_id["ok"].image_used, by_id["ok"].image_error) == (True, None)


def test_schema_registry_wire_format(settings, model, image_base):
    s = settings(schema_registry_url=f"mock://{uuid.uuid4().hex}")
    events = make_events(10, image_base)
    publish(s, events)
    out = consume_all(s, model, 10)
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in events)


def test_replay_rescores_with_replayed_flag(settings, model, image_base):
    s = settings()
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    events = make_events(12, image_base)
    publish(s, events)
    consume_all(s, model, 12)
    assert replay(s, s.input_topic, since, None, s.replay_topic) == 12
    copies = read_topic(s, s.replay_topic, 12)
    assert all(dict(m.headers())["replayed_from"].decode().startswith(f"{s.input_topic}:") for m in copies)
    svc, t = run_service(s, model, max_events=12)  # same group: only the replayed events are new
    t.join(120)
    out = results(s, read_topic(s, s.output_topic, 24))
    replayed = [r for r in out if r.replayed]
    assert sorted(r.product_id for r in replayed) == sorted(e.product_id for e in events)
    assert all(r.source_topic == s.replay_topic for r in replayed)
    # A window that ends before the events copies nothing.
    assert replay(s, s.input_topic, since - timedelta(hours=1), since, s.replay_topic) == 0


def test_two_consumers_in_one_group_share_partitions(settings, model, image_base):
    s = settings(max_batch_size=4)
    a, ta = run_service(s, model)
    b, tb = run_service(s, model)
    deadline = time.monotonic() + 60
    while not (a.assignment and b.assignment) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert a.assignment and b.assignment and not (a.assignment & b.assignment)
    events = make_events(60, image_base)
    publish(s, events)
    out = results(s, read_topic(s, s.output_topic, 60))
    a.stop(), b.stop()
    ta.join(60), tb.join(60)
    assert a.rc == b.rc == 0
    assert a.completed > 0 and b.completed > 0 and a.completed + b.completed >= 60
    assert {r.product_id for r in out} == {e.product_id for e in events}


def _consumer_proc(s: Settings, *args: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "TINY_DELAY_S": str(delay), "SHELVER_LOG_LEVEL": "WARNING"}
    for name in ("bootstrap_servers", "group_id", "input_topic", "replay_topic", "output_topic", "dlq_topic",
                 "max_batch_size", "max_batch_wait_ms"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    env["SHELVER_IMAGE_ALLOWED_HOSTS"] = json.dumps(s.image_allowed_hosts)
    # The broker's minimum: a kill -9'd member is noticed in seconds, not the default 45 s.
    env["SHELVER_KAFKA_OPTIONS"] = json.dumps({"session.timeout.ms": "6000"})
    return subprocess.Popen([sys.executable, str(TESTS / "consumer_main.py"), "consume", *args], env=env)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_stopped_mid_stream_and_restarted_loses_nothing(settings, image_base, sig):
    s = settings(max_batch_size=5)
    events = make_events(100, image_base)
    publish(s, events)
    proc = _consumer_proc(s, delay=0.1)
    try:
        read_topic(s, s.output_topic, 10, timeout=90, settle=0)  # some, not all, results are out
        proc.send_signal(sig)
        rc = proc.wait(60)
    finally:
        proc.kill()
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    first = len(read_topic(s, s.output_topic, 100, timeout=3, settle=0))
    assert 0 < first < 100, "the signal should land mid-stream"
    if sig == signal.SIGTERM:  # a graceful stop commits everything it delivered
        assert sum(committed(s).values()) == first
    restarted = _consumer_proc(s, "--idle-exit-seconds", "3")
    assert restarted.wait(120) == 0
    out = results(s, read_topic(s, s.output_topic, 100))
    assert {r.product_id for r in out} == {e.product_id for e in events}
    if sig == signal.SIGTERM:
        assert len(out) == 100  # nothing redone after a graceful stop


def test_failed_delivery_stops_without_committing(settings, model, image_base):
    # The output topic does not exist (the broker does not auto-create), so every delivery fails.
    s = settings(output_topic=f"missing.{uuid.uuid4().hex[:8]}", kafka_options={"message.timeout.ms": "3000"})
    publish(s, make_events(6, image_base))
    svc, t = run_service(s, model, max_events=6)
    t.join(120)
    assert svc.rc == 1 and "delivery" in svc.failure
    assert svc.completed == 0 and sum(committed(s).values()) == 0  # the group will redeliver all six


def test_an_event_the_model_cannot_score_goes_to_the_dlq_and_its_batch_neighbours_are_categorized(settings, image_base):
    class FailsOnOneText(TinyCategorizer):  # fault injection: a real model that raises on one product's text
        def categorize(self, texts, images):
            if any("unreadable" in t for t in texts):
                raise ValueError("tensor shape mismatch")
            return super().categorize(texts, images)

    # Before: the batch failed, the service stopped without committing, and every restart met it again.
    s = settings(max_batch_size=8)
    events = make_events(7, image_base)
    bad = ProductEvent(product_id="unreadable", title="unreadable top", event_time=datetime.now(timezone.utc))
    publish(s, [*events[:3], bad, *events[3:]])
    out = consume_all(s, FailsOnOneText(), 8, n_results=7)
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in events)
    (dead,) = read_topic(s, s.dlq_topic, 1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert dead.key() == b"unreadable" and headers["error"] == "inference_failed"
    assert headers["error_reason"] == "ValueError: tensor shape mismatch"
    assert sum(committed(s).values()) == 8  # the poison event's offset is committed with its dead letter


@pytest.mark.slow
def test_inference_longer_than_max_poll_interval_keeps_the_member_in_the_group(settings, image_base):
    class Slow(TinyCategorizer):
        def categorize(self, texts, images):
            time.sleep(6.5)  # longer than max.poll.interval.ms below
            return super().categorize(texts, images)

    # The main thread keeps polling (assignment paused) while a batch is in inference, so the member
    # is not evicted: no lost partitions, no failed commits, no redelivered duplicates.
    # 12 events in batches of 4 with depth 1: one batch in inference, one queued, one waiting (paused).
    s = settings(max_batch_size=4, pipeline_depth=1, max_poll_interval_ms=6000,
                 kafka_options={"session.timeout.ms": "6000"})
    events = make_events(12, image_base)
    publish(s, events)
    svc, t = run_service(s, Slow(), max_events=12)
    t.join(120)
    assert svc.rc == 0 and svc.completed == 12
    out = results(s, read_topic(s, s.output_topic, 12))
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in events)
    assert sum(committed(s).values()) == 12
