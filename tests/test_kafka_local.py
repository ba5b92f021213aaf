"""The local broker fixture is a real Kafka: idempotent produce, group consume, committed offsets."""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.adapters.admin import ensure_topics, shelver_topics
from consumer.config import Settings

pytestmark = pytest.mark.kafka


def test_produce_consume_commit(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(10)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({
        "bootstrap.servers": kafka_bootstrap, "group.id": group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    received, per_partition = {}, {}
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        received[msg.key()] = msg.value()
        per_partition[msg.partition()] = per_partition.get(msg.partition(), 0) + 1
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    consumer.close()

    assert received == sent
    assert len(per_partition) > 1  # keys were spread over the partitions
    assert {tp.partition: tp.offset for tp in committed} == {p: per_partition.get(p, 0) for p in range(3)}


def test_ensure_topics_is_idempotent(kafka_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=kafka_bootstrap, input_topic=f"in.{suffix}", replay_topic=None,
        output_topic=f"out.{suffix}", dlq_topic=f"dlq.{suffix}",
        review_topic=None, corrections_topic=None, taxonomy_topic=None,  # hitl topics: tests/test_hitl_kafka.py
    )
    ensure_topics(settings, partitions=2)
    ensure_topics(settings, partitions=2)

    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert shelver_topics(settings) == [f"in.{suffix}", f"out.{suffix}", f"dlq.{suffix}"]
    for name in shelver_topics(settings):
        assert len(metadata[name].partitions) == 2
