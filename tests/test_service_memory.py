"""The real service's peak RSS under hostile images stays under the bound the README documents.

`shelver consume` with the committed model, against the real broker, fed a 20000x1 PNG, 32 events
pointing at a 20 MP PNG (67 KB), decompression bombs and big JPEGs. Before the bounds it peaked at
6.1 GiB; the 20000x1 strip alone was padded to a 533 MP canvas.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest
from hostile_images import peak_rss_bytes, start_hostile_server

from consumer.config import Settings

# Documented in the README: the service's peak RSS with the default settings, on CPU.
PEAK_RSS_BOUND = int(1.5 * 2**30)

HOSTILE = ["/strip.png"] + ["/20mp.png"] * 32 + ["/bomb.png", "/39mp.png"] + ["/20mp.jpg"] * 3


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_service_peak_rss_stays_under_the_documented_bound(kafka_bootstrap, topic_factory):
    from confluent_kafka import Consumer

    from consumer.cli.sample import publish
    from schemas import CategoryAssigned, ProductEvent
    from schemas.wire import make_codec

    srv, base = start_hostile_server()
    s = Settings(bootstrap_servers=kafka_bootstrap, group_id=f"shelver-test-{uuid.uuid4().hex[:8]}",
                 input_topic=topic_factory(1, "in"), replay_topic=None, output_topic=topic_factory(1, "out"),
                 dlq_topic=topic_factory(1, "dlq"))
    now = datetime.now(timezone.utc)
    publish(s, [ProductEvent(product_id=f"h{i}", title="Red summer dress", image_url=base + path, event_time=now)
                for i, path in enumerate(HOSTILE)])
    env = {**os.environ, "SHELVER_LOG_LEVEL": "WARNING", "SHELVER_IMAGE_ALLOWED_HOSTS": '["127.0.0.1"]',
           # Only the core topics exist here: no replay, review, corrections or taxonomy topics.
           "SHELVER_REPLAY_TOPIC": "", "SHELVER_REVIEW_TOPIC": "", "SHELVER_CORRECTIONS_TOPIC": "",
           "SHELVER_TAXONOMY_TOPIC": ""}
    for name in ("bootstrap_servers", "group_id", "input_topic", "output_topic", "dlq_topic"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "consume"], env=env)  # the real model
    codec = make_codec(None, {})
    reader = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": uuid.uuid4().hex,
                       "auto.offset.reset": "earliest"})
    reader.subscribe([s.output_topic])
    out: list[CategoryAssigned] = []
    try:
        deadline = time.monotonic() + 300
        while len(out) < len(HOSTILE) and time.monotonic() < deadline and proc.poll() is None:
            for m in reader.consume(100, 0.5):
                assert not m.error(), m.error()
                out.append(CategoryAssigned.from_avro(codec.decode(m.value(), "category_assigned", s.output_topic)))
        assert proc.poll() is None, "the service died"
        peak = peak_rss_bytes(proc.pid)  # the whole run's peak, read while the process is alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
        reader.close()
        srv.shutdown()
        srv.server_close()
    print(f"peak RSS {peak / 2**30:.2f} GiB")
    assert len(out) == len(HOSTILE)
    by_id = {r.product_id: r for r in out}
    errors = {path: by_id[f"h{i}"].image_error for i, path in enumerate(HOSTILE)}
    assert errors["/strip.png"] == "bad_aspect" and errors["/bomb.png"] == "decompression_bomb"
    big = [by_id[f"h{i}"] for i, p in enumerate(HOSTILE) if p in ("/20mp.png", "/20mp.jpg", "/39mp.png")]
    assert all(r.image_used for r in big), sorted({r.image_error for r in big if not r.image_used})
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**30:.2f} GiB"
