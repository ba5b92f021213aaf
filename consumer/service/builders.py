"""Pure record building: input messages in, ``Item``s out; a scored ``Batch`` in, its ``Out`` records out.

Nothing here talks to Kafka: the same message and decision always give the same records, whichever
delivery guarantee sends them (``consumer.service.delivery``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message

from consumer import dead_letters, scoring
from consumer.config import Settings
from consumer.service.records import Batch, Item, Out


def decode(codec, msg: Message) -> Item:
    """An input message as an ``Item``: its event, or the reason it is poison (kept for the DLQ)."""
    t0 = time.perf_counter()
    item = Item(msg)
    try:
        item.event = scoring.decode(codec, msg.value(), msg.topic())
    except scoring.InvalidEvent as exc:
        item.error = exc
    item.decode_s = time.perf_counter() - t0
    return item


OLDEST_S = 5.0  # a record timestamp further in the past than this counts as this old


def arrival(msg: Message, now: float | None = None) -> float:
    """When the message reached Kafka (its timestamp), or now when it has none: batches take the oldest first.
    The timestamp is bounded to [now - OLDEST_S, now] (now: when it was read). A timestamp in the future (a
    producer whose clock runs ahead) would make its partition's records always the newest, and one far in
    the past (a backfill stamped with event times, a clock running behind) always the oldest: either way one
    partition's backlog took every batch while another's records waited. Bounded, a record waits at most
    about OLDEST_S behind records read after it."""
    kind, ts = msg.timestamp()
    now = time.time() if now is None else now
    return max(min(ts / 1000, now), now - OLDEST_S) if kind != TIMESTAMP_NOT_AVAILABLE else now


@dataclass(frozen=True)
class RecordBuilder:
    codec: Any
    output_topic: str
    dlq_topic: str
    review_topic: str | None = None
    replay_topic: str | None = None
    review_threshold: float | None = None
    dlq_budget: int = dead_letters.value_budget(dead_letters.DEFAULT_MESSAGE_MAX_BYTES)  # largest DLQ value

    @classmethod
    def from_settings(cls, settings: Settings, codec, categorizer=None) -> RecordBuilder:
        """Review threshold: the setting, else the model's default (hitl), else none."""
        review_threshold = (settings.review_threshold if settings.review_threshold is not None
                            else getattr(categorizer, "default_review_threshold", None))
        return cls(codec, settings.output_topic, settings.dlq_topic, settings.review_topic, settings.replay_topic,
                   review_threshold, dead_letters.value_budget(int(settings.kafka_options.get(
                       "message.max.bytes", dead_letters.DEFAULT_MESSAGE_MAX_BYTES))))

    def records(self, batch: Batch) -> list[Out]:
        """Every record the batch owes: a result per good event, a dead letter per poison event."""
        images = batch.images.result()[0] if batch.images else []
        decided = iter(zip(batch.decisions or [], images))
        outs = []
        for it in batch.items:
            if it.event is None:
                outs.append(self.dead_letter(it, it.error.code, it.error.reason))
                continue
            decision, (_, image_error) = next(decided)
            if decision is None:  # the model failed on this event alone (`worker.isolate`): a dead letter says why
                outs.append(self.dead_letter(it, it.error.code, it.error.reason))
                continue
            msg = it.msg
            record = scoring.result(
                it.event, decision, image_error, batch.model,
                source_topic=msg.topic(), source_partition=msg.partition(), source_offset=msg.offset(),
                replayed=msg.topic() == self.replay_topic, review_threshold=self.review_threshold,
            )
            value = self.codec.encode(record.to_avro(), "category_assigned", self.output_topic)
            outs.append(Out(it, "result", self.output_topic, it.event.product_id.encode(), value))
            if record.needs_review and self.review_topic:
                # A record of the batch like the result: the batch commits only after it is delivered too.
                outs.append(Out(it, "review", self.review_topic, it.event.product_id.encode(),
                                self.codec.encode(record.to_avro(), "category_assigned", self.review_topic)))
        return [o for o in outs if not o.item.dropped]  # lost partitions: the new owner produces them

    def dead_letter(self, it: Item, code: str, reason: str, kept: int | None = None) -> Out:
        """The original bytes and key with error headers; cut to ``kept`` bytes when too large to deliver."""
        msg = it.msg
        key, value, extra = msg.key(), msg.value(), []
        if kept is not None:
            key, value, extra = dead_letters.truncated(key, value, kept)
        return Out(it, "dlq", self.dlq_topic, key, value, headers=[
            ("error", code.encode()),
            ("error_reason", reason.encode()[:4096]),
            ("source_topic", msg.topic().encode()),
            ("source_partition", str(msg.partition()).encode()),
            ("source_offset", str(msg.offset()).encode()),
            *extra,
        ], kept=kept, code=code)

    def replacement(self, out: Out, err: KafkaError) -> Out | None:
        """What to send instead of a record refused for itself alone; None when nothing can fit."""
        it = out.item
        if out.kind in ("result", "review"):  # the event goes to the DLQ with the reason its record was refused
            return self.dead_letter(it, f"{out.kind}_undeliverable", dead_letters.describe(err))
        code = next(v.decode() for k, v in out.headers if k == "error")
        reason = next(v.decode() for k, v in out.headers if k == "error_reason")
        if err.code() not in dead_letters.SIZE_ERRORS:  # invalid as it is: keep only the headers
            kept = None if out.kept == 0 else 0
        else:
            kept = dead_letters.next_cut(len(it.msg.value() or b""), out.kept, self.dlq_budget)
        return None if kept is None else self.dead_letter(it, code, reason, kept)
