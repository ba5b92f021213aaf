"""``shelver produce-sample``: publish ProductEvents built from a catalogue in the Kaggle layout.

The product images are served by a local threaded HTTP server on 127.0.0.1 (a free port), so the
consumer fetches them over real HTTP. Loopback is blocked by the fetcher's SSRF guard unless
allow-listed: run the consumer with ``SHELVER_IMAGE_ALLOWED_HOSTS='["127.0.0.1"]'``, and keep the
server up (``--serve-seconds``) until the consumer has fetched them.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from consumer.config import Settings
from consumer.adapters.kafka_io import make_producer, produce
from consumer.logs import get_logger
from consumer.cli.progress import progress
from models.paths import catalogue_dir
from schemas import ProductEvent
from schemas.wire import make_codec

log = get_logger("shelver.sample")


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the fetcher's pooled connections are reused
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers (≈ 40 ms per image on Linux loopback).
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


class _DemoServer(ThreadingHTTPServer):
    # The fetcher opens up to image_fetch_concurrency connections to one host at once; with the standard
    # library's backlog of 5, the SYNs past it were dropped and retried a second later (a 1 s stall).
    request_queue_size = 128


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (free port) in a background thread; yields the base URL."""
    server = _DemoServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="sample-images", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# pandas.read_csv's default missing-value markers: training.data reads the catalogue with pandas,
# so these cells count as empty here too and a seed picks identical events either way.
_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                 "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


@dataclass(frozen=True)
class CatalogueItem:
    """The columns of a catalogue row that a sample event needs (no labels)."""

    id: int
    productDisplayName: str  # noqa: N815 - the catalogue's column names, as training.data's rows have them
    image_path: str
    gender: str
    baseColour: str  # noqa: N815


def read_catalogue(path: str | os.PathLike | None = None) -> list[CatalogueItem]:
    """styles.csv rows that have an image, in file order, read with the csv module.

    The same rows as ``training.data.load_catalogue`` (malformed lines skipped, rows without an
    image dropped) so a seed picks the same products, but without pandas: the service's install
    has no training dependencies.
    """
    root = catalogue_dir(path)
    items = []
    with open(root / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        for row in reader:
            if len(row) != len(header):  # pandas' on_bad_lines="skip": titles with unquoted commas
                continue
            image = root / "images" / f"{row[col['id']]}.jpg"
            if image.exists():
                cell = {name: "" if row[i] in _NA else row[i] for name, i in col.items()}
                items.append(CatalogueItem(int(cell["id"]), cell["productDisplayName"], str(image),
                                           cell["gender"], cell["baseColour"]))
    return items


def sample_events(catalogue: Sequence[Any], base_url: str, count: int, seed: int = 0) -> list[ProductEvent]:
    """``count`` distinct products chosen with a seeded RNG; the label columns are not included.

    ``catalogue``: ``read_catalogue``'s items or a DataFrame with the same columns.
    """
    chosen = np.random.default_rng(seed).choice(len(catalogue), min(count, len(catalogue)), replace=False)
    rows = catalogue.iloc[chosen].itertuples() if hasattr(catalogue, "iloc") else [catalogue[i] for i in chosen]
    now = datetime.now(timezone.utc)
    return [
        ProductEvent(
            product_id=str(r.id),
            title=_text(r.productDisplayName),
            image_url=f"{base_url}/{Path(r.image_path).name}",
            marketplace="sample",
            event_time=now,
            attributes={k: _text(v) for k, v in (("gender", r.gender), ("colour", r.baseColour)) if _text(v)},
        )
        for r in rows
    ]


def _text(value: Any) -> str:
    """A cell as text; pandas' NaN (an empty cell) is the empty string."""
    return "" if value is None or value != value else str(value)


def publish(settings: Settings, events: list[ProductEvent], topic: str | None = None, show_progress: bool = False) -> int:
    """Encode with the configured wire format and produce keyed by product_id; raises on any failure."""
    topic = topic or settings.input_topic
    codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
    producer = make_producer(settings)
    failures: list[str] = []
    delivered = progress(len(events), "produce-sample", "event", enabled=show_progress)

    def on_delivery(err, _msg):
        if err:
            failures.append(str(err))
        else:
            delivered.update(1)

    with delivered:
        for ev in events:
            produce(producer, topic, codec.encode(ev.to_avro(), "product_event", topic), ev.product_id.encode(),
                    on_delivery=on_delivery)
            producer.poll(0)
        if producer.flush(30) or failures:
            raise RuntimeError(f"sample delivery failed: {failures[:3] or 'flush timed out'}")
    return len(events)


def produce_sample(settings: Settings, count: int = 200, data: str | None = None, seed: int = 0,
                   serve_seconds: float = 0.0, show_progress: bool = True) -> int:
    root = catalogue_dir(data)  # clear FileNotFoundError when the catalogue is missing
    catalogue = read_catalogue(root)
    with serve_directory(root / "images") as base_url:
        n = publish(settings, sample_events(catalogue, base_url, count, seed), show_progress=show_progress)
        log.info("sample published", events=n, topic=settings.input_topic, images=base_url,
                 serve_seconds=serve_seconds)
        time.sleep(serve_seconds)
    return n
