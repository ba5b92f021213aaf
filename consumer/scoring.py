"""The per-event path shared by the Kafka service and the file-based ``categorize`` command:
validate → fetch images → categorize → CategoryAssigned. No Kafka here."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError

from models.categorizer import Categorizer, Decision
from schemas import Alternative, CategoryAssigned, ProductEvent
from schemas.wire import AvroCodec, WireFormatError

Image = tuple[np.ndarray | None, str | None]  # (prepared pixels, why not) per event


class InvalidEvent(ValueError):
    """An event the model must not see; ``code`` goes to the DLQ ``error`` header."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


def validate(record: dict[str, Any]) -> ProductEvent:
    try:
        event = ProductEvent.from_avro(record)
    except ValidationError as exc:
        raise InvalidEvent("schema_invalid", _short(exc)) from exc
    if not event.has_content():
        raise InvalidEvent("no_content", "neither title, description nor image_url")
    return event


def decode(codec: AvroCodec, value: bytes | None, topic: str) -> ProductEvent:
    try:
        record = codec.decode(value or b"", "product_event", topic)
    except WireFormatError as exc:
        raise InvalidEvent("undecodable", str(exc)) from exc
    return validate(record)


def text_of(event: ProductEvent) -> str:
    """What the text model reads: title and description, one per line (the model's own
    normalizer drops boilerplate line by line, so a heading opening the description stays one)."""
    return "\n".join(t for t in (event.title, event.description) if t)


def fetch_images(fetcher, categorizer: Categorizer, urls: Sequence[str | None]) -> tuple[list[Image], float]:
    """Fetch every URL of a batch concurrently and prepare it for the model; never raises per image.

    Decoding is sized for ``categorizer`` (the model this batch is scored with), not for whichever
    model the fetcher was built with: after a hot reload they differ.
    """
    start = time.perf_counter()
    wanted = [i for i, u in enumerate(urls) if u]
    out: list[Image] = [(None, "no_url")] * len(urls)
    fetched = fetcher.fetch_many([urls[i] for i in wanted], target_size=categorizer.image_size) if wanted else []
    decoded = []
    for i, res in zip(wanted, fetched):
        if res.image is None:
            out[i] = (None, res.error or "fetch_failed")
        else:
            decoded.append((i, res.image))
    # One call for the batch: images of one size are resized together.
    prepared = categorizer.prepare_images([image for _, image in decoded]) if decoded else []
    for (i, _), pixels in zip(decoded, prepared):
        if isinstance(pixels, Exception):  # a decodable but unusable image (e.g. odd mode) falls back to text
            out[i] = (None, f"prepare_failed: {type(pixels).__name__}")
        else:
            out[i] = (pixels, None)
    return out, time.perf_counter() - start


def result(
    event: ProductEvent,
    decision: Decision,
    image_error: str | None,
    categorizer: Categorizer,
    *,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    replayed: bool,
    review_threshold: float | None = None,
) -> CategoryAssigned:
    """The output record; ``needs_review`` when a calibrated confidence is under ``review_threshold``."""
    confidence = getattr(decision, "confidence", None)
    return CategoryAssigned(
        product_id=event.product_id,
        category=decision.category,
        kl=decision.kl,
        alternatives=[Alternative(category=c, kl=k) for c, k in decision.alternatives],
        abstained=decision.abstained,
        image_used=decision.image_used,
        image_error=None if decision.image_used else (image_error or "not_used"),
        model_version=categorizer.model_version,
        taxonomy_version=getattr(decision, "taxonomy_version", None) or categorizer.taxonomy_version,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        replayed=replayed,
        processed_at=datetime.now(timezone.utc),
        confidence=confidence,
        needs_review=needs_review(confidence, review_threshold),
    )


def needs_review(confidence: float | None, threshold: float | None) -> bool:
    """A person should look at it: confidence known and under the threshold (no threshold: never)."""
    return confidence is not None and threshold is not None and confidence < threshold


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())[:500]
