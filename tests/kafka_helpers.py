"""Helpers shared by the broker tests: events, running the service in a thread, reading topics back."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from consumer.config import Settings
from consumer.service import Service
from schemas import CategoryAssigned, ProductEvent
from schemas.wire import make_codec

TESTS = Path(__file__).resolve().parent


def make_events(n: int, base: str, prefix: str = "p") -> list[ProductEvent]:
    now = datetime.now(timezone.utc)
    titles = ["Red summer dress", "Leather handbag", "Cotton t-shirt", "Denim jacket"]
    return [
        ProductEvent(product_id=f"{prefix}{i}", title=titles[i % 4], image_url=f"{base}/{i % 5}.jpg", event_time=now)
        for i in range(n)
    ]


def read_topic(s: Settings, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0) -> list:
    """Every record of ``topic`` (waits for ``expected``, then ``settle`` s more to catch extras)."""
    c = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})  # librdkafka's default: never aborted or open transactions
    c.subscribe([topic])
    out, deadline, extra_until = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < (extra_until or deadline):
            for m in c.consume(100, 0.2):
                assert not m.error(), m.error()
                out.append(m)
            if extra_until is None and len(out) >= expected:
                extra_until = time.monotonic() + settle
    finally:
        c.close()
    return out


def results(s: Settings, msgs) -> list[CategoryAssigned]:
    """CategoryAssigned records (of the output or the review topic) decoded as the service wrote them."""
    codec = make_codec(s.schema_registry_url, s.schema_registry_options)
    return [CategoryAssigned.from_avro(codec.decode(m.value(), "category_assigned", m.topic())) for m in msgs]


def run_service(s: Settings, model, **kw) -> tuple[Service, threading.Thread]:
    svc = Service(s, model, **kw)
    t = threading.Thread(target=lambda: setattr(svc, "rc", svc.run()), daemon=True)
    t.start()
    return svc, t


def committed(s: Settings) -> dict[int, int]:
    """The group's committed offset per input partition (0 where none)."""
    c = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": s.group_id})
    try:
        return {tp.partition: max(tp.offset, 0) for tp in c.committed([TopicPartition(s.input_topic, p) for p in range(3)], 10)}
    finally:
        c.close()


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    """Polls ``condition`` until it returns something truthy (returned) or ``timeout`` passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
