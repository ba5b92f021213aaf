"""How a batch's records and offsets reach Kafka: one interface, one implementation per guarantee.

``AtLeastOnce``: records are produced as batches finish; offsets are committed by the consumer,
per partition only up to a delivered prefix, coalesced to one commit per ``commit_interval_ms``.
A record refused for itself alone is replaced by a dead letter (cut to fit) and the batch waits
for that instead; any other delivery failure stops the service without committing.

``Transactional`` (exactly-once): each batch's records and its input offsets go in one producer
transaction; a transaction doomed by a refused record is aborted and retried with that record
replaced; a fenced or otherwise failed transaction stops the service without committing.

The service loop calls only ``start``, ``emit``, ``poll``, ``commit``, ``abort`` and ``close``
and never asks which guarantee it runs under. Every Kafka timeout of the delivery path is below;
every transactional step has a deadline (``transaction_timeout_s``, retries included): past it the
step raises ``PipelineFailed`` and the service exits 1 without committing.
"""
from __future__ import annotations

import threading
import time
from functools import partial
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from consumer import dead_letters
from consumer.config import Settings
from consumer.adapters.kafka_io import make_producer, produce
from consumer.logs import get_logger
from consumer.service.builders import RecordBuilder
from consumer.service.records import Batch, Out

log = get_logger("shelver.service")

# ---- every timeout and retry count of the delivery path --------------------------------------------
INIT_TIMEOUT_S = 60  # init_transactions: fences older epochs, waits for the broker to finish an abort
ROUND_ABORT_TIMEOUT_S = 30  # aborting a transaction doomed by a refused record, before the next round
CLOSE_ABORT_TIMEOUT_S = 10  # aborting the open transaction after a failure, at shutdown (at most)
CLOSE_FLUSH_TIMEOUT_S = 10  # delivering what is queued at shutdown (at most)
# flush, send_offsets_to_transaction, commit_transaction: settings.transaction_timeout_s each, retries included;
# at-least-once offset commits: settings.commit_timeout_s, retries included
TXN_ATTEMPTS = 5  # a transactional call that fails retriably is tried this often
COMMIT_ATTEMPTS = 3  # at-least-once: a consumer commit that fails retriably is tried this often
IDLE_ROUNDS = 2  # exactly-once: rounds failing only from purged records before the batch is given up
# A transaction's records dropped because another of its records failed first: not their own fault.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class PipelineFailed(RuntimeError):
    """A delivery or inference failure: stop without committing anything not yet committed."""


class Delivery:
    """Produces batches' records and commits offsets under one guarantee (the base: produce and replace)."""

    commit_interval_s: float = 0.0  # how long delivered offsets may wait to be coalesced into one commit

    def __init__(self, settings: Settings, builder: RecordBuilder, metrics, fail: Callable[[str], None]):
        self.s, self.builder, self.metrics, self.fail = settings, builder, metrics, fail
        self.producer = self._new_producer()

    def _new_producer(self):
        return make_producer(self.s)

    def start(self) -> None:
        """Before the first poll."""

    def emit(self, batch: Batch) -> None:
        """Hand every record of ``batch.outs`` to the producer, in order."""
        raise NotImplementedError

    def poll(self, timeout: float) -> None:
        """Serve delivery reports (they run on the calling thread)."""
        self.producer.poll(timeout)

    def commit(self, consumer, parts: list[TopicPartition]) -> None:
        """Commit these offsets of ``consumer``'s group: every record before them has been delivered."""
        raise NotImplementedError

    def abort(self, timeout_s: float = CLOSE_ABORT_TIMEOUT_S) -> None:
        """After a failure: make sure nothing not yet committed becomes committed."""

    def close(self, timeout_s: float = CLOSE_FLUSH_TIMEOUT_S) -> None:
        self.producer.flush(max(0.0, min(timeout_s, CLOSE_FLUSH_TIMEOUT_S)))

    # ---- producing, and replacing a record refused for itself alone ------------------------------
    def _send(self, batch: Batch, out: Out) -> None:
        batch.pending += 1
        try:
            produce(self.producer, out.topic, out.value, out.key, headers=out.headers,
                    on_delivery=partial(self._delivered, batch, out))
        except KafkaException as exc:  # refused before it left, e.g. larger than message.max.bytes
            batch.pending -= 1
            self._refused(batch, out, exc.args[0], reported=False)

    def _delivered(self, batch: Batch, out: Out, err: KafkaError | None, msg: Message) -> None:
        batch.pending -= 1  # delivery reports are served on the main thread (producer.poll/flush)
        batch.delivered = time.perf_counter()
        if err is not None:
            self._refused(batch, out, err, reported=True)
        else:
            batch.acked.append(out)  # what the metrics count once the batch is committed

    def _refused(self, batch: Batch, out: Out, err: KafkaError, reported: bool) -> None:
        """A record was not delivered: replace it if it alone is at fault, else fail the pipeline."""
        replacement = self.builder.replacement(out, err) if dead_letters.is_record_error(err) else None
        if replacement is None:
            self.fail(f"delivery to {out.topic} failed: {err}")
            return
        it = replacement.item
        log.warning("record refused; sent to the DLQ instead", topic=out.topic, kind=out.kind,
                    error=dead_letters.describe(err), source=f"{it.msg.topic()}[{it.msg.partition()}]@{it.msg.offset()}",
                    kept_bytes=replacement.kept)
        # guarantee: the batch is not complete (pending > 0) until the replacement is delivered too.
        self._send(batch, replacement)


class AtLeastOnce(Delivery):
    def __init__(self, settings: Settings, builder: RecordBuilder, metrics, fail: Callable[[str], None]):
        super().__init__(settings, builder, metrics, fail)
        self.commit_interval_s = settings.commit_interval_ms / 1000
        self.commit_timeout_s = settings.commit_timeout_s

    def emit(self, batch: Batch) -> None:
        for out in batch.outs:
            self._send(batch, out)
        batch.emitted = time.perf_counter()

    def commit(self, consumer, parts: list[TopicPartition]) -> None:
        deadline = time.monotonic() + self.commit_timeout_s  # all attempts together
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                if parts:
                    _commit_within(consumer, parts, deadline - time.monotonic(), self.commit_timeout_s)
                    self.metrics.commits.inc()
                return
            except KafkaException as exc:  # e.g. partitions already reassigned: redelivery, not loss
                if exc.args[0].retriable() and attempt < COMMIT_ATTEMPTS - 1:  # e.g. the coordinator is loading
                    continue
                log.warning("commit failed; events will be redelivered", error=str(exc.args[0]))
                return


class Transactional(Delivery):
    """Exactly-once. ``settle`` is called inside each batch's transaction once all its records are
    delivered: the service then computes the offsets and calls ``commit``, which commits the transaction."""

    def __init__(self, settings: Settings, builder: RecordBuilder, metrics, fail: Callable[[str], None],
                 settle: Callable[[], None]):
        super().__init__(settings, builder, metrics, fail)
        self.settle = settle
        self.txn_open = False
        self.step_s = settings.transaction_timeout_s  # each transactional step's deadline, retries included

    def _new_producer(self):
        return make_producer(self.s, transactional=True)

    def start(self) -> None:  # fences older epochs of this transactional.id and aborts their open transaction
        self._txn(self.producer.init_transactions, timeout_s=INIT_TIMEOUT_S)

    def emit(self, batch: Batch) -> None:
        """The batch's records, then (in ``commit``) its offsets, in one transaction.

        A record refused for itself alone (in a delivery report, or by produce() before it left) dooms
        the transaction: it is aborted, the producer replaced (librdkafka leaves the refused partition
        unusable in that epoch), and the batch re-sent with that record replaced (each round replaces at
        least one, and replacements only shrink, so this ends)."""
        idle_rounds = 0  # rounds that failed only because an earlier failure purged their records
        while True:
            self._txn(self.producer.begin_transaction)
            self.txn_open = True
            batch.swaps, batch.txn_errors, batch.pending, batch.acked = {}, [], 0, []  # an aborted round delivered nothing
            for out in batch.outs:
                self._send(batch, out)
            batch.emitted = time.perf_counter()
            # Every delivery report of this transaction is in, or the deadline has passed (an unreachable
            # broker or transaction coordinator): guarantee: then stop without committing.
            if self.producer.flush(self.step_s) > 0:
                raise PipelineFailed(f"transaction's records not delivered within {self.step_s:g} s "
                                     f"(broker or transaction coordinator unreachable?)")
            if not batch.swaps and not batch.txn_errors and batch.pending == 0:
                return self.settle()  # commits the transaction with the offsets
            self._txn(self.producer.abort_transaction, timeout_s=ROUND_ABORT_TIMEOUT_S)  # guarantee: none of its records visible
            self.txn_open = False
            idle_rounds = 0 if batch.swaps else idle_rounds + 1
            if not all(e.code() in _PURGED for e in batch.txn_errors) or idle_rounds > IDLE_ROUNDS:
                raise PipelineFailed(f"transaction aborted: {'; '.join(map(str, batch.txn_errors[:3]))}")
            batch.outs = [batch.swaps.get(id(o), o) for o in batch.outs]
            # A new producer with the same transactional.id: a fresh epoch, every partition usable again.
            self.producer = self._new_producer()
            # guarantee: waits until the broker has finished the abort (its markers written; a topic
            # limit under 78 bytes can never take one: CONCURRENT_TRANSACTIONS until we stop: docs/delivery-guarantees.md).
            self._txn(self.producer.init_transactions, timeout_s=INIT_TIMEOUT_S)

    def commit(self, consumer, parts: list[TopicPartition]) -> None:
        if not self.txn_open:
            return  # exactly-once: offsets are only ever committed inside a batch's transaction
        if parts:  # guarantee: the offsets commit with the records, or neither does
            self._txn(self.producer.send_offsets_to_transaction, parts, consumer.consumer_group_metadata(),
                      timeout_s=self.step_s)
        self._txn(self.producer.commit_transaction, timeout_s=self.step_s)
        self.txn_open = False
        if parts:
            self.metrics.commits.inc()

    def abort(self, timeout_s: float = CLOSE_ABORT_TIMEOUT_S) -> None:
        if self.txn_open:  # after a failure: its records never become visible, its offsets never commit
            try:
                self.producer.abort_transaction(max(0.0, min(timeout_s, CLOSE_ABORT_TIMEOUT_S)))
            except KafkaException as exc:
                log.warning("abort failed; the broker aborts it on timeout or at our restart", error=str(exc))

    def _refused(self, batch: Batch, out: Out, err: KafkaError, reported: bool) -> None:
        # Refused before it left or in a report, alike: the round is doomed and the record is replaced in the
        # next one (emit), so every swap is keyed by a record of batch.outs. (A replacement sent within the
        # round and then refused by the broker was keyed by itself: the next round sent the original again
        # and met the same refusals, forever.)
        replacement = self.builder.replacement(out, err) if dead_letters.is_record_error(err) else None
        log.warning("record refused in a transaction", topic=out.topic, kind=out.kind,
                    error=dead_letters.describe(err), replaced=replacement is not None)
        if replacement is None:
            batch.txn_errors.append(err)
        else:
            batch.swaps[id(out)] = replacement

    def _txn(self, call, *args, timeout_s: float | None = None) -> None:
        """A transactional call; a fenced instance, an abortable failure or a missed deadline (``timeout_s``
        for all attempts together, each attempt given what is left) stops without committing."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for _ in range(TXN_ATTEMPTS):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                return call(*args) if left is None else call(*args, left)
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.fatal() and not err.txn_requires_abort():
                    continue
                if err.fatal():  # e.g. fenced by a newer instance with the same transactional.id
                    raise PipelineFailed(f"fatal transactional error (fenced?): {err}") from exc
                raise PipelineFailed(f"transaction failed: {err}") from exc
        if deadline is not None and time.monotonic() >= deadline:
            raise PipelineFailed(f"{call.__name__} not done within {timeout_s:g} s "
                                 f"(broker or transaction coordinator unreachable?)")
        raise PipelineFailed(f"transactional call kept failing: {call.__name__}")


def _commit_within(consumer, parts: list[TopicPartition], left_s: float, timeout_s: float) -> None:
    """A synchronous commit with a deadline: librdkafka's has none (a frozen group coordinator holds it
    indefinitely), so it runs on a helper thread; past the deadline the service stops without it."""
    if left_s <= 0:
        raise PipelineFailed(f"offset commit not done within {timeout_s:g} s (group coordinator unreachable?)")
    outcome: list[BaseException | None] = []

    def commit() -> None:
        try:
            consumer.commit(offsets=parts, asynchronous=False)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    helper = threading.Thread(target=commit, name="commit", daemon=True)
    helper.start()
    helper.join(left_s)
    if not outcome:
        raise PipelineFailed(f"offset commit not done within {timeout_s:g} s (group coordinator unreachable?)")
    if outcome[0] is not None:
        raise outcome[0]


def make_delivery(settings: Settings, builder: RecordBuilder, metrics, fail: Callable[[str], None],
                  settle: Callable[[], None]) -> Delivery:
    """The one place the guarantee is chosen."""
    if settings.processing_guarantee == "exactly_once":
        return Transactional(settings, builder, metrics, fail, settle)
    return AtLeastOnce(settings, builder, metrics, fail)
