"""Re-score a time range: copy raw records of a topic into the replay topic the service also reads.

Copying bytes (not re-encoding) keeps the events exactly as first published; the service marks
results of replay-topic events ``replayed=true``. The upper bound is fixed when the replay starts,
so a busy source topic cannot make it run forever.
"""
from __future__ import annotations

from datetime import datetime

from confluent_kafka import OFFSET_END, KafkaError, TopicPartition

from consumer.config import Settings
from consumer.adapters.kafka_io import make_producer, make_reader, produce
from consumer.logs import get_logger
from consumer.cli.progress import progress

log = get_logger("shelver.replay")


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _offsets_at(consumer, topic: str, partitions: list[int], t: datetime | None) -> dict[int, int]:
    """Per partition: the first offset with timestamp >= t, or the end offset (t None or after the last)."""
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    if t is None:
        return ends
    found = consumer.offsets_for_times([TopicPartition(topic, p, _ms(t)) for p in partitions], timeout=10)
    return {tp.partition: ends[tp.partition] if tp.offset in (-1, OFFSET_END) else tp.offset for tp in found}


def replay(settings: Settings, source_topic: str, since: datetime, until: datetime | None, to_topic: str,
           show_progress: bool = False) -> int:
    """Copy records with since <= timestamp < until (or up to the end at start); returns how many."""
    # A throwaway group that never commits: replay must not move the service's own offsets.
    consumer = make_reader(settings, "replay")
    producer = make_producer(settings)
    failures: list[str] = []
    try:
        meta = consumer.list_topics(source_topic, timeout=10).topics[source_topic]
        if meta.error is not None:
            raise RuntimeError(f"cannot replay {source_topic}: {meta.error}")
        partitions = sorted(meta.partitions)
        start = _offsets_at(consumer, source_topic, partitions, since)
        stop = _offsets_at(consumer, source_topic, partitions, until)
        todo = {p: stop[p] for p in partitions if start[p] < stop[p]}
        consumer.assign([TopicPartition(source_topic, p, start[p]) for p in todo])
        copied = 0
        # An upper bound: transaction markers take offsets too and are never delivered.
        bar = progress(sum(todo[p] - start[p] for p in todo), f"replay {source_topic}", "record", enabled=show_progress)
        while todo:
            for msg in consumer.consume(500, 1.0):
                if msg.error() and msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.pop(msg.partition(), None)
                    continue
                if msg.error():
                    raise RuntimeError(f"reading {source_topic}: {msg.error()}")
                p = msg.partition()
                if p not in todo or msg.offset() >= todo[p]:
                    continue
                headers = [*(msg.headers() or []), ("replayed_from", f"{source_topic}:{p}:{msg.offset()}".encode())]
                produce(producer, to_topic, msg.value(), msg.key(), headers=headers,
                        on_delivery=lambda err, m: err and failures.append(str(err)))
                producer.poll(0)
                copied += 1
                bar.update(1)
                if msg.offset() + 1 >= todo[p]:
                    del todo[p]
        bar.close()
        if producer.flush(30) or failures:
            raise RuntimeError(f"replay delivery failed: {failures[:3] or 'flush timed out'}")
        log.info("replayed", source=source_topic, to=to_topic, records=copied)
        return copied
    finally:
        consumer.close()
