"""Every wait on the main thread has a deadline (issue 16, item 1), against the real broker.

A wedged inference thread must not hold a SIGTERM until SIGKILL, nor a rebalance for
``max.poll.interval.ms``: the drain gives up after ``drain_timeout_s`` and the service exits 1
without committing. An unreachable transaction coordinator (the broker frozen with SIGSTOP) must
not hold an exactly-once transaction's flush or commit: each step gives up after
``transaction_timeout_s``. The figures printed here are the ones quoted in the closing note.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer
from kafka_helpers import TESTS, committed, make_events, read_topic, run_service, wait_for
from tiny_categorizer import BlockingTiny, TinyCategorizer

from consumer.cli.sample import publish
from consumer.config import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
REPO = TESTS.parent


def _proc(s: Settings, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "SHELVER_LOG_LEVEL": "WARNING", **env_extra}
    for name in ("bootstrap_servers", "group_id", "input_topic", "replay_topic", "output_topic", "dlq_topic",
                 "max_batch_size", "max_batch_wait_ms"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    env["SHELVER_IMAGE_ALLOWED_HOSTS"] = json.dumps(s.image_allowed_hosts)
    return subprocess.Popen([sys.executable, str(TESTS / "consumer_main.py"), "consume"], env=env)


def test_sigterm_with_a_wedged_inference_exits_1_within_the_drain_deadline_without_committing(
        settings, image_base, tmp_path):
    s = settings(max_batch_size=4)
    publish(s, make_events(8, image_base))
    started = tmp_path / "inference-started"
    proc = _proc(s, {"TINY_DELAY_S": "3600", "TINY_STARTED": str(started), "SHELVER_DRAIN_TIMEOUT_S": "3"})
    try:
        wait_for(started.exists, 120, "the first inference to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)  # before: never (the drain waited for the wedged batch until SIGKILL)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    print(f"wedged inference: SIGTERM to exit {took:.1f} s (drain_timeout_s=3), rc={rc}")
    assert rc == 1 and took < 3 + 15
    assert sum(committed(s).values()) == 0  # nothing was delivered: nothing committed


def test_a_revoke_with_a_wedged_inference_gives_up_at_the_drain_deadline_and_frees_the_partitions(
        settings, image_base):
    s = settings(max_batch_size=4, drain_timeout_s=2, kafka_options={"session.timeout.ms": "6000"})
    publish(s, make_events(8, image_base))
    model = BlockingTiny()  # wedged until the test lets it go
    svc, t = run_service(s, model)
    other = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": s.group_id,
                      "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        assert model.entered.wait(120), "the first inference never started"
        t0 = time.monotonic()
        other.subscribe([s.input_topic, s.replay_topic])  # a second member: the first must revoke and drain
        while t.is_alive() and time.monotonic() - t0 < 60:
            other.poll(0.2)
        took = time.monotonic() - t0
        assert not t.is_alive(), "the drain on revoke never gave up"  # before: it waited for the wedged batch
        print(f"wedged inference: revoke to exit {took:.1f} s (drain_timeout_s=2), rc={svc.rc}")
        assert svc.rc == 1 and "drain not done within" in svc.failure
        # The partitions move on: the other member gets the whole input topic, nothing was committed.
        wait_for(lambda: (other.poll(0.2), len([p for p in other.assignment() if p.topic == s.input_topic]) == 3)[1],
                 60, "the other member to own every input partition")
        assert sum(committed(s).values()) == 0
    finally:
        model.release.set()
        other.close()


def _broker_pid(bootstrap: str) -> int:
    port = bootstrap.rsplit(":", 1)[1]
    return int((REPO / ".kafka" / f"test-{port}" / "kafka.pid").read_text())


def test_an_unreachable_transaction_coordinator_stops_exactly_once_within_the_transaction_deadline(
        settings, image_base, kafka_bootstrap):
    pid = _broker_pid(kafka_bootstrap)
    frozen: list[float] = []

    class FreezesTheBroker(TinyCategorizer):
        def categorize(self, texts, images):
            if not frozen:  # the coordinator (the one broker) stops answering before the batch's transaction
                os.kill(pid, signal.SIGSTOP)
                frozen.append(time.monotonic())
            return super().categorize(texts, images)

    s = settings(max_batch_size=4, processing_guarantee="exactly_once", transaction_timeout_s=3)
    publish(s, make_events(4, image_base))
    svc, t = run_service(s, FreezesTheBroker())
    try:
        wait_for(lambda: frozen, 120, "the first inference")
        t.join(90)  # before: flush() waited for the records' own timeout, then the abort's retries
        took = time.monotonic() - frozen[0]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not t.is_alive(), "the transaction never gave up"
    print(f"unreachable coordinator: freeze to exit {took:.1f} s (transaction_timeout_s=3), rc={svc.rc}")
    assert svc.rc == 1 and "within 3 s" in svc.failure
    assert took < 3 + 25  # the step's deadline, then the bounded abort and close
    assert sum(committed(s).values()) == 0
    assert read_topic(s, s.output_topic, 1, timeout=5, settle=0) == []  # read_committed: nothing visible


def test_an_unreachable_group_coordinator_at_the_final_commit_still_exits_within_the_drain_deadline(
        settings, image_base, kafka_bootstrap):
    """At-least-once: delivered results wait for the next commit; SIGTERM's drain commits them. With the
    broker (the group coordinator) frozen at that moment, the stop still ends within its deadline."""
    pid = _broker_pid(kafka_bootstrap)
    s = settings(max_batch_size=4, commit_interval_ms=600_000, drain_timeout_s=3, commit_timeout_s=3)  # commits wait for the drain
    publish(s, make_events(4, image_base, prefix="a"))
    svc, t = run_service(s, TinyCategorizer())
    frozen = None
    try:  # the first commit goes at once; what is delivered after it waits for the interval, or the drain
        wait_for(lambda: svc.completed == 4, 120, "the first results and the first commit")
        publish(s, make_events(4, image_base, prefix="b"))
        wait_for(lambda: svc.completed == 8 and svc.schedule._pending, 120, "results delivered, a commit waiting")
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        svc.stop()
        t.join(120)
        took = time.monotonic() - frozen
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not t.is_alive(), "the final commit never gave up"
    print(f"unreachable group coordinator at the final commit: stop to exit {took:.1f} s (commit_timeout_s=3), "
          f"rc={svc.rc}")
    assert svc.rc == 1 and "offset commit not done within 3 s" in svc.failure
    assert took < 3 + 25  # before: librdkafka's synchronous commit waited for the coordinator indefinitely



def test_while_delivery_reports_are_held_back_the_batches_in_flight_stay_bounded_and_polling_goes_on(
        settings, image_base):
    """Regression: nothing counted the batches produced and waiting for their delivery reports, so while they
    did not come (a stalled output topic: librdkafka retries for message.timeout.ms) the loop went on forming
    batches, each holding its messages and pixels: 1,565 batches after 3 s with a producer that never reported."""
    # Reports held back from outside: the producer lingers a minute before sending anything.
    s = settings(max_batch_size=2, max_batch_wait_ms=10, drain_timeout_s=2, kafka_options={"linger.ms": "60000"})
    publish(s, make_events(200, image_base))
    svc, t = run_service(s, TinyCategorizer())
    try:
        wait_for(lambda: len(svc.inflight) >= svc.max_inflight, 120, "the in-flight cap to be reached")
        looped_at = svc.polled_at
        wait_for(lambda: svc.polled_at > looped_at + 2, 60, "two more seconds of polling at the cap")
        assert len(svc.inflight) == svc.max_inflight and svc.seq == svc.max_inflight  # no batch formed past it
        assert svc.completed == 0 and svc.failure is None  # nothing delivered yet, and the service is not failing
    finally:
        svc.stop()
        t.join(90)
    assert not t.is_alive() and svc.rc == 1  # the drain gave up at its deadline, the reports still held back
    assert sum(committed(s).values()) == 0  # and nothing undelivered was committed
