"""No input can stop the service: records refused for their own size or validity go to the DLQ.

Regression for a crash loop: a 1,040,000-byte input record (under the broker's default topic
limit) could not be written to the DLQ (over the producer's message.max.bytes), the service exited
without committing, and every restart met the same record.
"""
from __future__ import annotations

import hashlib
import random
import uuid
from datetime import datetime, timezone

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import committed, make_events, read_topic, results, run_service

from consumer.cli.sample import publish
from schemas.wire import make_codec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def make_topic(bootstrap: str, prefix: str, partitions: int = 1, **config: str) -> str:
    name = f"{prefix}.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)], operation_timeout=30)[name].result()
    return name


def oversized_event(s, size: int) -> bytes:
    """A well-formed Avro ProductEvent of ``size`` bytes whose description breaks the schema's limit."""
    codec = make_codec(None)
    record = {"product_id": "huge", "title": "Huge", "description": None, "image_url": None, "locale": None,
              "marketplace": None, "event_time": datetime.now(timezone.utc), "attributes": None}
    base = len(codec.encode({**record, "description": ""}, "product_event", s.input_topic))
    value = codec.encode({**record, "description": "x" * (size - base - 3)}, "product_event", s.input_topic)
    assert abs(len(value) - size) <= 3
    return value


def publish_raw(s, values: list[tuple[bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": s.bootstrap_servers, "message.max.bytes": 10_000_000})
    for key, value in values:
        p.produce(s.input_topic, value, key)
    assert p.flush(30) == 0


def run_to_completion(s, model, n: int):
    svc, t = run_service(s, model, max_events=n)
    t.join(120)
    if t.is_alive():
        svc.stop()
        t.join(90)
    assert not t.is_alive()
    return svc


def counted(svc, name: str) -> dict[str, float]:
    """A counter of the service's own Metrics, per label set (label values joined by ',')."""
    [family] = [m for m in svc.metrics.registry.collect() if m.name == name]
    return {",".join(sm.labels.values()): sm.value for sm in family.samples if sm.name == name + "_total"}


GUARANTEES = pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])


@pytest.mark.slow
@GUARANTEES
def test_a_1040000_byte_event_goes_to_the_dlq_truncated_and_the_partition_keeps_flowing(settings, model, image_base,
                                                                                         guarantee):
    s = settings(input_topic=make_topic(settings().bootstrap_servers, "in", 1),  # one partition: all in line
                 processing_guarantee=guarantee)
    before, after = make_events(3, image_base, "before"), make_events(5, image_base, "after")
    huge = oversized_event(s, 1_040_000)
    publish(s, before)
    publish_raw(s, [(b"huge", huge)])
    publish(s, after)
    svc = run_to_completion(s, model, 9)
    assert svc.rc == 0, svc.failure
    out = results(s, read_topic(s, s.output_topic, 8))
    assert sorted(r.product_id for r in out) == sorted(e.product_id for e in before + after)
    [dlq] = read_topic(s, s.dlq_topic, 1)
    h = {k: v.decode() for k, v in dlq.headers()}
    assert h["error"] == "schema_invalid" and h["truncated"] == "true"
    assert h["original_size"] == str(len(huge)) and h["original_sha256"] == hashlib.sha256(huge).hexdigest()
    assert h["source_offset"] == "3" and dlq.key() == b"huge"
    assert 0 < len(dlq.value()) < 1_000_000 and huge.startswith(dlq.value())
    assert committed(s)[0] == 9  # past the huge record: a restart does not meet it again
    assert counted(svc, "shelver_dead_letters") == {"schema_invalid": 1}
    assert counted(svc, "shelver_dead_letters_truncated") == {"schema_invalid": 1}
    assert counted(svc, "shelver_results") == {"": 8}


@pytest.mark.slow
@GUARANTEES
def test_a_dead_letter_refused_by_the_dlq_topics_own_limit_is_cut_until_it_fits(settings, model, image_base, guarantee):
    # Under the producer's limit, so the broker refuses it in the delivery report (not produce()); in
    # exactly-once mode that aborts the transaction, which is redone with the cut dead letter.
    boot = settings().bootstrap_servers
    s = settings(input_topic=make_topic(boot, "in", 1), processing_guarantee=guarantee,
                 dlq_topic=make_topic(boot, "dlq", 1, **{"max.message.bytes": "200000"}))
    big = b"\x00not avro" + random.Random(0).randbytes(500_000)  # incompressible (the producer uses lz4)
    publish_raw(s, [(b"big", big)])
    publish(s, make_events(4, image_base))
    svc = run_to_completion(s, model, 5)
    assert svc.rc == 0, svc.failure
    assert len(read_topic(s, s.output_topic, 4)) == 4
    [dlq] = read_topic(s, s.dlq_topic, 1)
    h = {k: v.decode() for k, v in dlq.headers()}
    assert h["error"] == "undecodable" and h["truncated"] == "true" and h["original_size"] == "500009"
    assert len(dlq.value()) <= 200_000 and big.startswith(dlq.value())
    assert committed(s)[0] == 5
    # Counted once, although its first (refused) copy and the cut one were both sent.
    assert counted(svc, "shelver_dead_letters") == {"undecodable": 1}
    assert counted(svc, "shelver_dead_letters_truncated") == {"undecodable": 1}
    assert counted(svc, "shelver_results") == {"": 4}


@GUARANTEES
def test_a_result_refused_by_the_output_topic_sends_its_event_to_the_dlq_with_the_reason(settings, model, image_base,
                                                                                          guarantee):
    boot = settings().bootstrap_servers
    # 100 bytes: no result fits (about 200 on the wire), but a transaction marker (78) does. Below that
    # the broker cannot write the abort marker of a transaction that touched the topic (README).
    s = settings(input_topic=make_topic(boot, "in", 1), processing_guarantee=guarantee,
                 output_topic=make_topic(boot, "out", 1, **{"max.message.bytes": "100"}))
    events = make_events(3, image_base)
    publish(s, events)
    svc = run_to_completion(s, model, 3)
    assert svc.rc == 0, svc.failure
    dlq = read_topic(s, s.dlq_topic, 3)
    assert sorted(m.key().decode() for m in dlq) == sorted(e.product_id for e in events)
    for m in dlq:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["error"] == "result_undeliverable" and "TOO_LARGE" in h["error_reason"]
        assert "truncated" not in h  # the input itself fits: the original bytes, whole
    assert read_topic(s, s.output_topic, 0, settle=0.5) == []
    assert committed(s)[0] == 3
    # The metrics say what was delivered: three dead letters, no result, nothing cut.
    assert counted(svc, "shelver_dead_letters") == {"result_undeliverable": 3}
    assert counted(svc, "shelver_dead_letters_truncated") == {}
    assert counted(svc, "shelver_results") == {"": 0}
