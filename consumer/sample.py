"""``shelver produce-sample``: publish ProductEvents built from a catalogue in the Kaggle layout.

The product images are served by a local threaded HTTP server on 127.0.0.1 (a free port), so the
consumer fetches them over real HTTP. Loopback is blocked by the fetcher's SSRF guard unless
allow-listed: run the consumer with ``SHELVER_IMAGE_ALLOWED_HOSTS='["127.0.0.1"]'``, and keep the
server up (``--serve-seconds``) until the consumer has fetched them.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from consumer.config import Settings
from consumer.kafka_io import make_producer
from consumer.logs import get_logger
from schemas import ProductEvent
from schemas.wire import make_codec

log = get_logger("shelver.sample")


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the fetcher's pooled connections are reused

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (free port) in a background thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="sample-images", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sample_events(catalogue: pd.DataFrame, base_url: str, count: int, seed: int = 0) -> list[ProductEvent]:
    """``count`` distinct products chosen with a seeded RNG; the label columns are not included."""
    rows = catalogue.iloc[np.random.default_rng(seed).choice(len(catalogue), min(count, len(catalogue)), replace=False)]
    now = datetime.now(timezone.utc)
    return [
        ProductEvent(
            product_id=str(r.id),
            title=r.productDisplayName,
            image_url=f"{base_url}/{Path(r.image_path).name}",
            marketplace="sample",
            event_time=now,
            attributes={"gender": str(r.gender), "colour": str(r.baseColour)},
        )
        for r in rows.itertuples()
    ]


def publish(settings: Settings, events: list[ProductEvent], topic: str | None = None) -> int:
    """Encode with the configured wire format and produce keyed by product_id; raises on any failure."""
    topic = topic or settings.input_topic
    codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
    producer = make_producer(settings)
    failures: list[str] = []
    for ev in events:
        producer.produce(topic, codec.encode(ev.to_avro(), "product_event", topic), ev.product_id.encode(),
                         on_delivery=lambda err, _: err and failures.append(str(err)))
        producer.poll(0)
    if producer.flush(30) or failures:
        raise RuntimeError(f"sample delivery failed: {failures[:3] or 'flush timed out'}")
    return len(events)


def produce_sample(settings: Settings, count: int = 200, data: str | None = None, seed: int = 0,
                   serve_seconds: float = 0.0) -> int:
    from training.data import data_dir, load_catalogue

    root = data_dir(data)  # clear FileNotFoundError when the catalogue is missing
    catalogue = load_catalogue(root)
    with serve_directory(root / "images") as base_url:
        n = publish(settings, sample_events(catalogue, base_url, count, seed))
        log.info("sample published", events=n, topic=settings.input_topic, images=base_url,
                 serve_seconds=serve_seconds)
        time.sleep(serve_seconds)
    return n
