"""Thin constructors for the Kafka clients; the delivery guarantees live in these few settings.

``settings.kafka_options`` (security, SASL, TLS, tuning) pass through unchanged, but cannot switch
off the options marked "guarantee": at-least-once depends on them.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from consumer.config import Settings


def make_consumer(settings: Settings, extra: dict[str, Any] | None = None) -> Consumer:
    conf: dict[str, Any] = {
        # range splits *each* topic across the members. cooperative-sticky balances the partition
        # count over both topics, so one member can end up with only the (mostly idle) replay topic
        # and do no work; its incremental rebalances buy little here, since a revoke drains anyway.
        "partition.assignment.strategy": "range",
        "enable.partition.eof": False,
        # Fewer, fuller fetches (kafka_options may override): the broker answers once 64 KiB are ready or
        # after 50 ms, not once per record as soon as one arrives. At 120 events/s in
        # benchmarks/latency.py this halved the broker's CPU per event (3.2 -> 1.6 core-ms) and cut p99
        # from 1.5 s to 0.65 s on two shared cores; it adds at most 50 ms, under one batch's inference.
        "fetch.wait.max.ms": 50,
        "fetch.min.bytes": 65536,
        **settings.kafka_common(),
        "group.id": settings.group_id,
        # guarantee: never commit on a timer; the service commits explicit offsets only after every
        # result and DLQ record of a batch has a successful delivery report.
        "enable.auto.commit": False,
        # guarantee: nothing is stored implicitly by poll/consume either (we commit explicit offsets).
        "enable.auto.offset.store": False,
        # guarantee: a new group starts from the oldest retained event, not only the ones after it joins.
        "auto.offset.reset": settings.auto_offset_reset,
        # The member is evicted if consume() is not called within this; the service keeps calling it
        # (with the assignment paused) while inference is busy, so long batches never hit this.
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        # guarantee (exactly-once): never read records of aborted transactions, nor open ones.
        "isolation.level": "read_committed",
        **(extra or {}),
    }
    if settings.group_instance_id:  # static membership: a restart within session.timeout.ms keeps the partitions
        conf["group.instance.id"] = settings.group_instance_id
    return Consumer(conf)


def make_reader(settings: Settings, purpose: str, extra: dict[str, Any] | None = None) -> Consumer:
    """A throwaway reader: its own random group (``<group_id>.<purpose>.<random>``) that never commits
    (make_consumer switches auto-commit off), so reading never moves the service's offsets. Partition
    EOF is on: it also ends a partition whose last offsets are transaction markers (never delivered)."""
    return make_consumer(settings, {"group.id": f"{settings.group_id}.{purpose}.{uuid.uuid4().hex[:8]}",
                                    "enable.partition.eof": True, **(extra or {})})


def transactional_id(settings: Settings) -> str:
    """Stable per instance, so a restarted instance fences its zombie (the old epoch can no longer commit).

    From the static instance id when there is one (the pod name); otherwise host and pid, which are
    unique but not stable across restarts (zombies are then fenced only by the group generation)."""
    instance = settings.group_instance_id or f"{socket.gethostname()}-{os.getpid()}"
    return f"shelver-{settings.group_id}-{instance}"


def make_producer(settings: Settings, extra: dict[str, Any] | None = None, *, transactional: bool = False) -> Producer:
    """``transactional``: the service's producer in exactly-once mode (other tools produce plainly)."""
    conf: dict[str, Any] = {
        "linger.ms": 5,  # small: a batch's results leave together without adding visible latency
        "compression.type": "lz4",
        **settings.kafka_common(),
        # guarantee: retries cannot duplicate or reorder records within a partition.
        "enable.idempotence": True,
        # guarantee: a record counts as delivered only once every in-sync replica has it.
        "acks": "all",
        **(extra or {}),
    }
    if transactional:
        # guarantee (exactly-once): records and consumer offsets are committed atomically per batch.
        conf["transactional.id"] = transactional_id(settings)
    return Producer(conf)


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, *,
            headers: list | None = None, on_delivery=None, wait_s: float = 0.1) -> None:
    """The one produce-with-retry: while the local queue is full (BufferError), serve delivery reports
    for ``wait_s`` and try again. A record refused before it left (e.g. larger than message.max.bytes)
    raises KafkaException to the caller, which decides whether that record alone is at fault."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(wait_s)


CLOSE_TIMEOUT_S = 10.0  # leaving the group at shutdown, at most


def close_within(consumer: Consumer, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
    """``consumer.close()`` (leave the group: the partitions move at once) with a deadline: librdkafka's has
    none, and an unreachable group coordinator, or a commit it never answered, holds it indefinitely. Past
    the deadline the process goes on without it (the group then notices at ``session.timeout.ms``).
    True when it closed in time."""
    helper = threading.Thread(target=consumer.close, name="consumer-close", daemon=True)
    helper.start()
    helper.join(timeout_s)
    return not helper.is_alive()
