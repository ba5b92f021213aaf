"""The review queue: the review topic read by its own consumer group, items leased to one reviewer at a time.

* **Reading.** One thread owns the group consumer (``review_group_id``, subscribed to the review topic) and
  fetches each review record's product (title, description, image URL) from the event it was made from
  (``source_topic``/``source_partition``/``source_offset``) with a throwaway reader. At most
  ``review_max_items`` items are held; past that the assignment is paused.
* **Leases.** A reviewer holds at most one item; an item is leased to one reviewer for ``review_lease_s``
  (renewed each time it is shown), so two reviewers never see the same item at the same time. Skip hands
  it back (the same reviewer does not get it again). Several ``shelver review`` replicas share the group:
  each holds its own partitions, and a revoked partition's items are dropped from this one.
* **Deciding.** A decision publishes a ``CategoryCorrected`` record (key = product id) with the server's
  reviewer, the review record's model version and the product's text (the review record carries no
  source distribution, so every instance recomputes it from the text), waits for its delivery report,
  and only then marks the offset finished and commits it (`consumer.review.ledger`; the commit is sent
  asynchronously, in order, so the page does not wait for it). A failed delivery
  leaves the item with its reviewer and publishes nothing more.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from confluent_kafka import KafkaException, TopicPartition

from consumer.adapters.kafka_io import make_consumer, make_producer, make_reader, produce
from consumer.config import Settings
from consumer.logs import get_logger
from consumer.review.ledger import PartitionLedger
from consumer.scoring import text_of
from schemas import CategoryAssigned, CategoryCorrected, ProductEvent
from schemas.wire import WireFormatError, make_codec

log = get_logger("shelver.review")


class DecisionError(Exception):
    """The decision was not recorded; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Item:
    partition: int
    offset: int
    record: CategoryAssigned
    event: ProductEvent | None = None
    holder: str | None = None
    lease_until: float = 0.0
    deciding: bool = False
    skipped_by: set[str] = field(default_factory=set)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return f"{self.partition}-{self.offset}"

    def free(self, now: float) -> bool:
        return not self.deciding and (self.holder is None or self.lease_until <= now)


class ReviewQueue:
    def __init__(self, settings: Settings, *, lease_s: float | None = None, max_items: int | None = None):
        self.settings = settings
        self.topic = settings.review_topic
        self.lease_s = settings.review_lease_s if lease_s is None else lease_s
        self.max_items = settings.review_max_items if max_items is None else max_items
        self.codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        self._lock = threading.RLock()
        self._items: dict[str, Item] = {}
        self._ledgers: dict[int, PartitionLedger] = {}
        self._paused = False
        self._stop = threading.Event()
        self.decided = 0
        self.consumer = make_consumer(settings, {"group.id": settings.review_group_id, "fetch.min.bytes": 1,
                                                 "fetch.wait.max.ms": 100})
        self.producer = make_producer(settings, {"linger.ms": 0})
        self._events = make_reader(settings, "review-events", {"fetch.min.bytes": 1, "fetch.wait.max.ms": 10})
        self._thread = threading.Thread(target=self._run, name="review-queue", daemon=True)

    # ---- the reading thread -------------------------------------------------------------------
    def start(self) -> ReviewQueue:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)
        self.producer.flush(10)
        self._events.close()

    def _on_assign(self, consumer, partitions) -> None:
        committed = consumer.committed(partitions, 10)
        with self._lock:
            self._paused = False  # a new assignment starts unpaused; flow control pauses it again if need be
            for tp in committed:
                offset = tp.offset if tp.offset >= 0 else None
                self._ledgers[tp.partition] = PartitionLedger(offset, tp.metadata)
        log.info("review partitions assigned", partitions=[tp.partition for tp in partitions])

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {tp.partition for tp in partitions}
        self._commit_all(gone)
        with self._lock:
            for key in [k for k, it in self._items.items() if it.partition in gone]:
                del self._items[key]
            for p in gone:
                self._ledgers.pop(p, None)
        log.info("review partitions revoked", partitions=sorted(gone))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._flow_control()
                msgs = self.consumer.consume(50, 0.1)
                fresh = [self._item(m) for m in msgs]
                fresh = [it for it in fresh if it is not None]
                for it in fresh:
                    it.event = self._product(it.record)
                with self._lock:
                    for it in fresh:
                        if it.partition in self._ledgers:  # not revoked while its product was fetched
                            self._items[it.id] = it
        except Exception:  # noqa: BLE001 - logged; the page then says the queue stopped
            log.error("review queue stopped", exc_info=True)
        finally:
            self._commit_all()
            try:
                self.consumer.close()
            except RuntimeError:
                pass

    def _flow_control(self) -> None:
        with self._lock:
            full = len(self._items) >= self.max_items
        if full != self._paused:
            assignment = self.consumer.assignment()
            (self.consumer.pause if full else self.consumer.resume)(assignment)
            self._paused = full

    def _item(self, msg) -> Item | None:
        if msg.error():
            log.warning("review topic read error", error=str(msg.error()))
            return None
        with self._lock:
            ledger = self._ledgers.get(msg.partition())
            if ledger is None or not ledger.fetched(msg.offset()):
                return None
        try:
            record = CategoryAssigned.from_avro(self.codec.decode(msg.value(), "category_assigned", msg.topic()))
        except (WireFormatError, ValueError) as exc:
            log.warning("undecodable review record skipped", partition=msg.partition(), offset=msg.offset(),
                        error=str(exc)[:200])
            with self._lock:
                ledger.finish(msg.offset())
            return None
        return Item(msg.partition(), msg.offset(), record)

    def _product(self, record: CategoryAssigned, timeout_s: float = 5.0) -> ProductEvent | None:
        """The event the review record was made from (None: no longer retained, or undecodable)."""
        tp = TopicPartition(record.source_topic, record.source_partition, record.source_offset)
        try:
            self._events.assign([tp])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = self._events.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF: the offset is gone or not there
                        return None
                    continue
                if msg.offset() != record.source_offset:
                    return None  # compacted or deleted: the next record is another product
                event = ProductEvent.from_avro(self.codec.decode(msg.value(), "product_event", msg.topic()))
                if event.product_id != record.product_id:  # e.g. the topic was recreated: another product now
                    log.warning("review item points at another product's event", product_id=record.product_id,
                                found=event.product_id, source=f"{tp.topic}[{tp.partition}]@{tp.offset}")
                    return None  # its text would go out in this product's correction
                return event
        except (KafkaException, WireFormatError, ValueError) as exc:
            log.warning("product of a review item unavailable", product_id=record.product_id, error=str(exc)[:200])
        return None

    # ---- what the pages call ------------------------------------------------------------------
    def next_for(self, reviewer: str) -> Item | None:
        """The reviewer's current item (its lease renewed), else the oldest free one they have not skipped,
        else the oldest free one they skipped: skipped items stay held, so a reviewer who skipped every held
        item would otherwise get nothing, and the queue, full of them, would read nothing new."""
        now = time.monotonic()
        with self._lock:
            mine = [it for it in self._items.values() if it.holder == reviewer and (it.lease_until > now or it.deciding)]
            if mine:
                item = mine[0]
            else:
                free = [it for it in self._items.values() if it.free(now)]
                if not free:
                    return None
                item = min(free, key=lambda it: (reviewer in it.skipped_by, it.record.processed_at, it.partition,
                                                 it.offset))
                item.holder = reviewer
            item.lease_until = now + self.lease_s
            return item

    def _held(self, reviewer: str, item_id: str) -> Item:
        item = self._items.get(item_id)
        if item is None:
            raise DecisionError(409, "this item is no longer in the queue")
        if item.holder != reviewer or (item.lease_until <= time.monotonic() and not item.deciding):
            raise DecisionError(409, "this item is not yours (its lease ran out or another reviewer has it)")
        if item.deciding:
            raise DecisionError(409, "a decision on this item is being recorded")
        return item

    def skip(self, reviewer: str, item_id: str) -> None:
        with self._lock:
            item = self._held(reviewer, item_id)
            item.holder, item.lease_until = None, 0.0
            item.skipped_by.add(reviewer)

    def decide(self, reviewer: str, item_id: str, category: str | None, known: tuple[str, ...] | None = None,
               timeout_s: float = 10.0) -> CategoryCorrected:
        """Publishes the correction (``category`` None: accept the model's), waits for its delivery report,
        then finishes and commits the item. Raises DecisionError when nothing was recorded."""
        with self._lock:
            item = self._held(reviewer, item_id)
            chosen = category or item.record.category
            if known is not None and chosen not in known:
                raise DecisionError(422, f"unknown category {chosen!r}")
            item.deciding = True
        try:
            correction = CategoryCorrected(
                product_id=item.record.product_id, category=chosen, source_distribution=None,
                model_version=item.record.model_version, text=text_of(item.event) if item.event else None,
                reviewer=reviewer, corrected_at=datetime.now(timezone.utc))
            self._publish(correction, timeout_s)
        except BaseException:
            with self._lock:
                item.deciding = False
            raise
        with self._lock:
            ledger = self._ledgers.get(item.partition)
            self._items.pop(item.id, None)
            self.decided += 1
            position = None
            if ledger is not None:
                ledger.finish(item.offset)
                position = ledger.position()
        if position is not None:
            self._commit(item.partition, *position)
        return correction

    def _publish(self, correction: CategoryCorrected, timeout_s: float) -> None:
        topic = self.settings.corrections_topic
        done = threading.Event()
        outcome: list = []

        def report(err, _msg):
            outcome.append(err)
            done.set()

        value = self.codec.encode(correction.to_avro(), "category_corrected", topic)
        try:
            produce(self.producer, topic, value, correction.product_id.encode(), on_delivery=report)
        except KafkaException as exc:
            raise DecisionError(503, f"the correction could not be sent: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            self.producer.poll(0.005)
        if not done.is_set() or outcome[0] is not None:
            why = "no delivery report in time" if not done.is_set() else str(outcome[0])
            raise DecisionError(503, f"the correction was not delivered ({why}); the item stays yours, try again")

    def _commit(self, partition: int, offset: int, metadata: str) -> None:
        """Sent once the correction is delivered; the page does not wait for it (a crash before the broker
        has it shows the item again, and deciding it again writes the same correction). Commits of one
        partition are sent in order, and the broker applies them in order."""
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, partition, offset, metadata=metadata)],
                                 asynchronous=True)
        except KafkaException as exc:  # e.g. revoked meanwhile: the next owner shows the item again
            log.warning("review commit failed", partition=partition, offset=offset, error=str(exc)[:200])

    def _commit_all(self, partitions: set[int] | None = None) -> None:
        """At shutdown and before partitions are given up: their positions, synchronously, so nothing sent
        asynchronously is left behind."""
        with self._lock:
            offsets = [TopicPartition(self.topic, p, *ledger.position()) for p, ledger in self._ledgers.items()
                       if ledger.position() is not None and (partitions is None or p in partitions)]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("review commit at shutdown failed", error=str(exc)[:200])

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self._lock:
            return {"held": len(self._items), "leased": sum(1 for it in self._items.values() if not it.free(now)),
                    "partitions": sorted(self._ledgers), "decided": self.decided, "running": self._thread.is_alive()}


__all__ = ["DecisionError", "Item", "ReviewQueue"]
