"""Exactly-once: a result the output topic refuses (its own size) goes to the DLQ, and the service goes on.

Regression for a crash loop: the broker refused a result inside a transaction, the batch was
redone on a fresh producer with that result replaced by a dead letter, the dead letter timed out
and the service stopped without committing; a restart met the same event again.
"""
from __future__ import annotations

import random
import string

import pytest
from kafka_helpers import committed, make_events, read_topic, results, run_service, wait_for
from test_dead_letters_kafka import make_topic

from consumer.cli.sample import publish

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

# A result with a 2-character product id takes about 200 bytes on the wire (one record, its batch
# framing); one with a 128-character random id (key and value) about 450 before compression, 330
# after. The output topic's limit sits between them, far below the producer's 1,000,000.
OUTPUT_LIMIT = "300"


@pytest.mark.slow
def test_a_result_refused_in_a_transaction_is_dead_lettered_committed_and_not_met_again(settings, model, image_base):
    boot = settings().bootstrap_servers
    # One event per batch, so one result per transaction and per record batch: the broker judges
    # each result alone (several in one record batch would be refused together).
    s = settings(input_topic=make_topic(boot, "in", 1), processing_guarantee="exactly_once", max_batch_size=1,
                 output_topic=make_topic(boot, "out", 1, **{"max.message.bytes": OUTPUT_LIMIT}))
    events = make_events(5, image_base)
    long_id = "".join(random.Random(0).choices(string.ascii_letters + string.digits, k=128))
    events[2] = events[2].model_copy(update={"product_id": long_id})  # in the middle: events after it too
    publish(s, events)

    svc, t = run_service(s, model, max_events=len(events))
    t.join(120)
    if t.is_alive():
        svc.stop()
        t.join(90)
    assert not t.is_alive()
    assert svc.failure is None and svc.rc == 0, svc.failure
    assert committed(s)[0] == len(events)  # past the refused event: a restart does not meet it

    # read_committed: only what the service's committed transactions wrote.
    out = results(s, read_topic(s, s.output_topic, 4))
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in events if e.product_id != long_id)
    [dlq] = read_topic(s, s.dlq_topic, 1)
    h = {k: v.decode() for k, v in dlq.headers()}
    assert dlq.key().decode() == long_id and h["error"] == "result_undeliverable" and "TOO_LARGE" in h["error_reason"]
    assert h["source_offset"] == "2"

    # A second run of the same group finds nothing left to do and writes nothing.
    again, t2 = run_service(s, model, idle_exit_s=2)
    wait_for(lambda: again.assignment, 60, "the second run's assignment")
    t2.join(60)
    assert not t2.is_alive() and again.rc == 0 and again.completed == 0, again.failure
    assert len(read_topic(s, s.output_topic, 4)) == 4 and len(read_topic(s, s.dlq_topic, 1)) == 1
