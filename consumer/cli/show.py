"""``shelver show``: the categorized products as a table (titles joined from the input topic).

Reads both topics from the beginning with a throw-away group that never commits, so it
changes nothing for the service's consumer group.
"""
from __future__ import annotations

import time

from consumer.config import Settings
from consumer.adapters.kafka_io import make_reader
from schemas.wire import WireFormatError, make_codec


def read_results(settings: Settings, count: int, timeout_s: float = 120.0) -> list[tuple[dict, dict | None]]:
    """(result, its input event or None) pairs, up to ``count`` distinct products."""
    codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
    consumer = make_reader(settings, "show", {"auto.offset.reset": "earliest", "enable.partition.eof": False})
    consumer.subscribe([settings.input_topic, settings.output_topic])
    events: dict[str, dict] = {}
    results: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not (len(results) >= count and set(results) <= set(events)):
            for msg in consumer.consume(500, 1.0):
                if msg.error():
                    continue
                schema = "category_assigned" if msg.topic() == settings.output_topic else "product_event"
                try:
                    record = codec.decode(msg.value(), schema, msg.topic())
                except WireFormatError:
                    continue
                (results if schema == "category_assigned" else events)[record["product_id"]] = record
    finally:
        consumer.close()
    return [(r, events.get(pid)) for pid, r in list(results.items())[:count]]


def format_table(rows: list[tuple[dict, dict | None]], width: int = 52) -> str:
    lines = [f"{'product':>8}  {'title':<{width}}  {'category':<10} {'KL':>6}  {'runner-up':<10} image"]
    lines.append("-" * len(lines[0]))
    for result, event in sorted(rows, key=lambda r: r[0]["category"]):
        title = (event or {}).get("title") or "?"
        title = title if len(title) <= width else title[: width - 1] + "…"
        alt = result["alternatives"][0]["category"] if result["alternatives"] else ""
        image = "yes" if result["image_used"] else f"no ({result.get('image_error')})"
        lines.append(f"{result['product_id']:>8}  {title:<{width}}  {result['category']:<10} "
                     f"{result['kl']:6.3f}  {alt:<10} {image}")
    return "\n".join(lines)
