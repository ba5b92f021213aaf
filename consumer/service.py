"""The consume loop: poll → micro-batch → decode → fetch images ‖ infer ‖ produce → commit in order.

Threads: the main thread owns both Kafka clients (poll, decode, DLQ, serialize, produce, commit); a
small pool fetches each batch's images while the previous batch is still in inference; one worker
thread runs ``categorize`` on whole batches. Batches flow through a bounded queue
(``pipeline_depth``); a partition of which a batch's worth is held is paused on its own (flow
control in ``consumer.batching``) and polling continues, so slow inference never exceeds
``max.poll.interval.ms`` and no partition starves behind the others.

At-least-once: offsets are committed synchronously, per partition only up to the end of a
delivered prefix of batches (``consumer.commits``): every result and DLQ record before them has a
successful delivery report. Commits are coalesced, one per ``commit_interval_ms`` at most, and
everything delivered is committed before partitions are given up or the service stops. A record
refused for itself alone (too large, invalid) goes to the DLQ instead, cut to fit
(``consumer.dead_letters``), so no input can stop the service; a failure of
the pipeline (broker, authorization, fatal client error) stops it without committing, and the
group redelivers.

Exactly-once (``processing_guarantee=exactly_once``): each batch's results, dead letters and input
offsets are committed in one producer transaction, batch after batch in consume order; a failed
transaction is aborted and the service exits, so a restart resumes from the committed offsets;
a fenced (zombie) instance exits without committing. Readers must use isolation.level=read_committed.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message, TopicPartition

from consumer import scoring
from consumer import dead_letters
from consumer.batching import MicroBatcher, flow_control
from consumer.commits import CommitLedger, CommitSchedule
from consumer.config import Settings
from consumer.kafka_io import make_consumer, make_producer
from consumer.logs import get_logger
from consumer.metrics import Metrics
from models.categorizer import Categorizer
from schemas import ProductEvent
from schemas.wire import make_codec

log = get_logger("shelver.service")
_MIN_HELD_PER_PARTITION = 16  # events held per partition before it is paused, whatever the batch size
_POLL_CAP_S = 0.5  # longest single consume(); bounds how late stop requests and commits are noticed
# A transaction's records dropped because another of its records failed first: not their own fault.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class PipelineFailed(RuntimeError):
    """A delivery or inference failure: stop without committing anything not yet committed."""


@dataclass
class Item:
    msg: Message
    event: ProductEvent | None = None
    error: scoring.InvalidEvent | None = None
    decode_s: float = 0.0
    dropped: bool = False  # its partition was lost before the batch was emitted: produce nothing for it

    @property
    def tp(self) -> tuple[str, int]:
        return self.msg.topic(), self.msg.partition()


@dataclass
class Out:
    """One record handed to the producer, and enough to replace it if it is refused for itself alone."""
    item: Item
    kind: str  # "result", "review" or "dlq"
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list | None = None
    kept: int | None = None  # dead letters: bytes of the original value kept (None: all of it)
    code: str | None = None  # dead letters: the error code (the `error` header)


@dataclass
class Batch:
    seq: int
    items: list[Item]
    started: float  # perf_counter when the batch was formed
    images: Future | None = None  # -> (list[scoring.Image], fetch seconds)
    decisions: list | None = None
    inferred: bool = False  # decisions (or an error) are back from the inference thread
    infer_s: float = 0.0
    error: str | None = None  # inference failure, set by the worker
    emitted: float = 0.0  # when all its records were handed to the producer
    delivered: float = 0.0  # when the last delivery report arrived
    pending: int = 0  # delivery reports still outstanding
    outs: list[Out] = field(default_factory=list)  # its records, in produce order
    swaps: dict[int, Out] = field(default_factory=dict)  # exactly-once: id(refused out) -> its replacement
    txn_errors: list[KafkaError] = field(default_factory=list)  # exactly-once: other failures in this transaction
    acked: list[Out] = field(default_factory=list)  # successful delivery reports (exactly-once: this transaction's)
    stats: dict = field(default_factory=dict)
    model: Categorizer | None = None  # scores the whole batch; a model reload swaps only between batches

    @property
    def decode_s(self) -> float:
        return sum(i.decode_s for i in self.items)

    @property
    def good(self) -> list[Item]:
        return [i for i in self.items if i.event is not None]

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset to commit once this batch is delivered: its last + 1."""
        last: dict[tuple[str, int], int] = {}
        for it in self.items:
            last[it.tp] = max(last.get(it.tp, -1), it.msg.offset() + 1)
        return last


class Service:
    def __init__(self, settings: Settings, categorizer: Categorizer, fetcher=None, *,
                 max_events: int | None = None, idle_exit_s: float | None = None, consumer_extra=None,
                 metrics: Metrics | None = None, reloader=None):
        from consumer.images import ImageFetcher  # the fetcher pulls in httpx; only the service needs it

        self.s, self.model = settings, categorizer
        self.own_fetcher = fetcher is None
        # The model's input size lets the fetcher decode big images at reduced scale (hard-fetch); each
        # batch passes its own model's size (scoring.fetch_images), so a reloaded model gets its own.
        self.fetcher = fetcher or ImageFetcher(settings, target_size=categorizer.image_size)
        self.codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        self.metrics, self.reloader = metrics or Metrics(stall_s=settings.liveness_stall_s), reloader
        self.metrics.attach(self)
        self.consumer = make_consumer(settings, {**self.metrics.consumer_config(settings.stats_interval_ms),
                                                 **(consumer_extra or {})})
        self.eos = settings.processing_guarantee == "exactly_once"
        self.producer = make_producer(settings, transactional=self.eos)
        self.txn_open = False
        self.max_events, self.idle_exit_s = max_events, idle_exit_s
        self.review_threshold = (settings.review_threshold if settings.review_threshold is not None
                                 else getattr(categorizer, "default_review_threshold", None))  # hitl
        self.batcher: MicroBatcher[Item] = MicroBatcher(settings.max_batch_size, settings.max_batch_wait_ms / 1000,
                                                        key=lambda it: (it.msg.topic(), it.msg.partition()))
        self.todo: queue.Queue[Batch | None] = queue.Queue(maxsize=settings.pipeline_depth)
        self.done: queue.Queue[Batch] = queue.Queue()
        self.inflight: deque[Batch] = deque()  # formed, not yet delivered, in consume order
        self.ledger = CommitLedger()  # which offsets may be committed (delivered prefix per partition)
        # when they are: coalesced in at-least-once mode; exactly-once commits them in every batch's transaction
        self.schedule = CommitSchedule(0.0 if self.eos else settings.commit_interval_ms / 1000)
        self.dlq_budget = dead_letters.value_budget(int(settings.kafka_options.get(
            "message.max.bytes", dead_letters.DEFAULT_MESSAGE_MAX_BYTES)))
        self.fetch_pool = ThreadPoolExecutor(settings.pipeline_depth + 1, thread_name_prefix="fetch")
        self.worker = threading.Thread(target=self._infer_loop, name="infer", daemon=True)
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.paused: set[tuple[str, int]] = set()  # partitions paused because we hold enough of theirs
        self.pauses = 0  # partition pauses so far (benchmarks report it)
        self.assignment_changed = False
        self.assignment: set[tuple[str, int]] = set()
        self.seq = 0
        self.completed = 0  # events (results + DLQ) delivered, their offsets committed or scheduled
        self.t_start = time.perf_counter()
        self.last_message: float | None = None  # idle clock; starts at the first assignment
        self.polled_at = time.monotonic()  # when consume() last returned: the group's view of our liveness

    def stop(self) -> None:
        """Ask the loop to finish in-flight work, commit and return (signal-handler safe)."""
        self.stopping.set()
        if self.own_fetcher:  # image fetches get one more fetch deadline at most, then are aborted
            self.fetcher.cancel(grace_s=self.s.image_total_timeout_s)

    # ---- main thread -------------------------------------------------------------------------
    def run(self) -> int:
        log.info("starting", settings=self.s.redacted(), model_version=self.model.model_version)
        topics = [t for t in (self.s.input_topic, self.s.replay_topic) if t]
        if self.eos:  # fences older epochs of this transactional.id and aborts their open transaction
            self._txn(self.producer.init_transactions, 60)
        self.worker.start()
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        try:
            while not self.stopping.is_set() and not self._limits_reached():
                self._pump()
                self._backpressure()
                # Take what is already fetched without waiting; block (for one message, not for a
                # whole batch: consume() waits until num_messages or the timeout) only when nothing is.
                msgs = self.consumer.consume(self.s.max_batch_size, 0)
                if not msgs:
                    timeout = 0.01 if self.inflight else self.batcher.wait_s(time.monotonic(), _POLL_CAP_S)
                    msgs = self.consumer.consume(1, timeout)
                self._accept(msgs)
                self.polled_at = time.monotonic()  # the group's view of our liveness
                # An idle model (nothing queued for it) takes whatever is waiting, without a batch window.
                while self.batcher.ready(time.monotonic(), idle=self.todo.empty()) and not self.todo.full():
                    self._submit(self.batcher.take())
            self._drain()
            log.info("stopped", events=self.completed)
            return 0
        except BaseException as exc:
            self.failure = self.failure or f"{type(exc).__name__}: {exc}"
            self.metrics.pipeline_failures.inc()
            log.error("pipeline failed; exiting without committing", error=self.failure)
            if isinstance(exc, PipelineFailed):
                return 1
            raise
        finally:
            self._shutdown()

    def _accept(self, msgs: list[Message]) -> None:
        """Decode and validate as messages arrive (overlapping inference); poison is kept for the DLQ."""
        now = time.monotonic()
        items, stamps = [], []
        for msg in msgs:
            if msg.error():
                if msg.error().fatal():
                    raise PipelineFailed(f"consumer error: {msg.error()}")
                log.warning("consumer error", error=str(msg.error()))
                if msg.error().code() == KafkaError._MAX_POLL_EXCEEDED and self.assignment:  # evicted
                    self._lose(frozenset(self.assignment))
                continue
            t0 = time.perf_counter()
            item = Item(msg)
            try:
                item.event = scoring.decode(self.codec, msg.value(), msg.topic())
            except scoring.InvalidEvent as exc:
                item.error = exc
            item.decode_s = time.perf_counter() - t0
            items.append(item)
            kind, ts = msg.timestamp()
            stamps.append(ts / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else time.time())  # oldest first across partitions
        if items:
            self.last_message = now
            self.batcher.add(items, now, stamps)

    def _submit(self, items: list[Item]) -> None:
        """Form a batch: start its image fetch, queue it for inference (blocks if full)."""
        batch = Batch(self.seq, items, time.perf_counter(), model=self.model)
        self.seq += 1
        self.metrics.on_batch_formed(batch)
        self.ledger.open(batch.seq, batch.next_offsets())  # consume order: the commit rule depends on it
        good = batch.good
        if good:
            urls = [it.event.image_url for it in good]
            batch.images = self.fetch_pool.submit(scoring.fetch_images, self.fetcher, batch.model, urls)
        self.inflight.append(batch)
        if not good:  # only poison: nothing to infer, its dead letters go out in turn
            batch.inferred = True
            return
        while True:
            try:
                self.todo.put(batch, timeout=0.05)
                return
            except queue.Full:
                self._pump()

    def _pump(self) -> None:
        """Produce finished batches in consume order, serve delivery reports, commit what is complete."""
        self.metrics.heartbeats.beat()
        if self.reloader is not None:  # batches keep the model they were formed with
            self.model = self.reloader.swap(self.model)
        while True:
            try:
                self.done.get_nowait().inferred = True
            except queue.Empty:
                break
        for batch in list(self.inflight):
            if batch.emitted:
                continue
            if not batch.inferred:
                break  # in order: a later batch's records never go out before an earlier one's
            self._emit(batch)
        self.producer.poll(0)
        self._commit_completed()

    # ---- the one place a batch's records are produced ------------------------------------------
    def _emit(self, batch: Batch) -> None:
        if batch.error:
            raise PipelineFailed(batch.error)
        batch.outs = self._records(batch)
        if self.eos:
            return self._emit_transaction(batch)
        for out in batch.outs:
            self._send(batch, out)
        batch.emitted = time.perf_counter()

    def _emit_transaction(self, batch: Batch) -> None:
        """Exactly-once: the batch's records, then (in ``_commit``) its offsets, in one transaction.

        A record refused for itself alone in a delivery report dooms the transaction: it is aborted,
        the producer replaced (librdkafka leaves the refused partition unusable in that epoch), and
        the batch re-sent with that record replaced (each round replaces at least one, and
        replacements only shrink, so this ends)."""
        idle_rounds = 0  # rounds that failed only because an earlier failure purged their records
        while True:
            self._txn(self.producer.begin_transaction)
            self.txn_open = True
            batch.swaps, batch.txn_errors, batch.pending, batch.acked = {}, [], 0, []  # an aborted round delivered nothing
            for out in batch.outs:
                self._send(batch, out)
            batch.emitted = time.perf_counter()
            self.producer.flush()  # every delivery report of this transaction is in
            if not batch.swaps and not batch.txn_errors and batch.pending == 0:
                return self._commit_completed()  # commits the transaction with the offsets
            self._txn(self.producer.abort_transaction, 30)  # guarantee: none of its records become visible
            self.txn_open = False
            idle_rounds = 0 if batch.swaps else idle_rounds + 1
            if not all(e.code() in _PURGED for e in batch.txn_errors) or idle_rounds > 2:
                raise PipelineFailed(f"transaction aborted: {'; '.join(map(str, batch.txn_errors[:3]))}")
            batch.outs = [batch.swaps.get(id(o), o) for o in batch.outs]
            # A new producer with the same transactional.id: a fresh epoch, every partition usable again.
            self.producer = make_producer(self.s, transactional=True)
            # guarantee: waits until the broker has finished the abort (its markers written; a topic
            # limit under 78 bytes can never take one: CONCURRENT_TRANSACTIONS until we stop, README).
            self._txn(self.producer.init_transactions, 60)

    def _txn(self, call, *args) -> None:
        """A transactional call; a fenced instance or an abortable failure stops without committing."""
        for _ in range(5):
            try:
                return call(*args)
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.fatal() and not err.txn_requires_abort():
                    continue
                if err.fatal():  # e.g. fenced by a newer instance with the same transactional.id
                    raise PipelineFailed(f"fatal transactional error (fenced?): {err}") from exc
                raise PipelineFailed(f"transaction failed: {err}") from exc
        raise PipelineFailed(f"transactional call kept failing: {call.__name__}")

    def _records(self, batch: Batch) -> list[Out]:
        """Every record the batch owes: a result per good event, a dead letter per poison event."""
        images = batch.images.result()[0] if batch.images else []
        decided = iter(zip(batch.decisions or [], images))
        outs = []
        for it in batch.items:
            if it.event is None:
                outs.append(self._dead_letter(it, it.error.code, it.error.reason))
                continue
            decision, (_, image_error) = next(decided)
            msg = it.msg
            record = scoring.result(
                it.event, decision, image_error, batch.model,
                source_topic=msg.topic(), source_partition=msg.partition(), source_offset=msg.offset(),
                replayed=msg.topic() == self.s.replay_topic, review_threshold=self.review_threshold,
            )
            value = self.codec.encode(record.to_avro(), "category_assigned", self.s.output_topic)
            outs.append(Out(it, "result", self.s.output_topic, it.event.product_id.encode(), value))
            if record.needs_review and self.s.review_topic:
                # A record of the batch like the result: the batch commits only after it is delivered too.
                outs.append(Out(it, "review", self.s.review_topic, it.event.product_id.encode(),
                                self.codec.encode(record.to_avro(), "category_assigned", self.s.review_topic)))
        return [o for o in outs if not o.item.dropped]  # lost partitions: the new owner produces them

    def _dead_letter(self, it: Item, code: str, reason: str, kept: int | None = None) -> Out:
        """The original bytes and key with error headers; cut to ``kept`` bytes when too large to deliver."""
        msg = it.msg
        key, value, extra = msg.key(), msg.value(), []
        if kept is not None:
            key, value, extra = dead_letters.truncated(key, value, kept)
        return Out(it, "dlq", self.s.dlq_topic, key, value, headers=[
            ("error", code.encode()),
            ("error_reason", reason.encode()[:4096]),
            ("source_topic", msg.topic().encode()),
            ("source_partition", str(msg.partition()).encode()),
            ("source_offset", str(msg.offset()).encode()),
            *extra,
        ], kept=kept, code=code)

    def _replacement(self, out: Out, err: KafkaError) -> Out | None:
        """What to send instead of a record refused for itself alone; None when nothing can fit."""
        it = out.item
        if out.kind in ("result", "review"):  # the event goes to the DLQ with the reason its record was refused
            return self._dead_letter(it, f"{out.kind}_undeliverable", dead_letters.describe(err))
        code = next(v.decode() for k, v in out.headers if k == "error")
        reason = next(v.decode() for k, v in out.headers if k == "error_reason")
        if err.code() not in dead_letters.SIZE_ERRORS:  # invalid as it is: keep only the headers
            kept = None if out.kept == 0 else 0
        else:
            kept = dead_letters.next_cut(len(it.msg.value() or b""), out.kept, self.dlq_budget)
        return None if kept is None else self._dead_letter(it, code, reason, kept)

    def _send(self, batch: Batch, out: Out) -> None:
        batch.pending += 1
        while True:
            try:
                self.producer.produce(out.topic, out.value, out.key, headers=out.headers,
                                      on_delivery=partial(self._delivered, batch, out))
                return
            except BufferError:  # local queue full: serve delivery reports until there is room
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused before it left, e.g. larger than message.max.bytes
                batch.pending -= 1
                self._refused(batch, out, exc.args[0], reported=False)
                return

    def _delivered(self, batch: Batch, out: Out, err: KafkaError | None, msg: Message) -> None:
        batch.pending -= 1  # delivery reports are served on the main thread (producer.poll/flush)
        batch.delivered = time.perf_counter()
        if err is not None:
            self._refused(batch, out, err, reported=True)
        else:
            batch.acked.append(out)  # what the metrics count once the batch is committed

    def _refused(self, batch: Batch, out: Out, err: KafkaError, reported: bool) -> None:
        """A record was not delivered: replace it if it alone is at fault, else fail the pipeline."""
        replacement = self._replacement(out, err) if dead_letters.is_record_error(err) else None
        if self.eos and reported:  # the transaction is doomed: replace in the next attempt (_emit_transaction)
            log.warning("record refused in a transaction", topic=out.topic, kind=out.kind,
                        error=dead_letters.describe(err), replaced=replacement is not None)
            if replacement is None:
                batch.txn_errors.append(err)
            else:
                batch.swaps[id(out)] = replacement
            return
        if replacement is None:
            self.failure = self.failure or f"delivery to {out.topic} failed: {err}"
            return
        it = replacement.item
        log.warning("record refused; sent to the DLQ instead", topic=out.topic, kind=out.kind,
                    error=dead_letters.describe(err), source=f"{it.msg.topic()}[{it.msg.partition()}]@{it.msg.offset()}",
                    kept_bytes=replacement.kept)
        # guarantee: the batch is not complete (pending > 0) until the replacement is delivered too.
        self._send(batch, replacement)

    # ---- the one place offsets are committed ----------------------------------------------------
    def _commit_completed(self, force: bool = False) -> None:
        if self.failure:
            raise PipelineFailed(self.failure)
        done = [b for b in self.inflight if b.emitted and b.pending == 0]
        for batch in done:
            self.ledger.complete(batch.seq)  # every record of it has a successful delivery report
            self.inflight.remove(batch)
        self.schedule.add(self.ledger.take())
        # guarantee: per partition only the end of a delivered prefix, never a lost partition's offsets.
        due = self.schedule.due(time.monotonic(), force=force)
        self._commit([TopicPartition(t, p, o) for (t, p), o in due.items()])
        for batch in done:
            self.completed += len(batch.items)
            self._log_batch(batch)

    def _commit(self, parts: list[TopicPartition]) -> None:
        if self.eos:
            if not self.txn_open:
                return  # exactly-once: offsets are only ever committed inside a batch's transaction
            if parts:  # guarantee: the offsets commit with the records, or neither does
                self._txn(self.producer.send_offsets_to_transaction, parts, self.consumer.consumer_group_metadata())
            self._txn(self.producer.commit_transaction)
            self.txn_open = False
            if parts:
                self.metrics.commits.inc()
            return
        for attempt in range(3):
            try:
                if parts:
                    self.consumer.commit(offsets=parts, asynchronous=False)
                    self.metrics.commits.inc()
                return
            except KafkaException as exc:  # e.g. partitions already reassigned: redelivery, not loss
                if exc.args[0].retriable() and attempt < 2:  # e.g. the coordinator is still loading
                    continue
                log.warning("commit failed; events will be redelivered", error=str(exc.args[0]))
                return

    def _log_batch(self, batch: Batch) -> None:
        now = time.perf_counter()
        self.metrics.on_batch_done(batch, now)
        images, fetch_s = batch.images.result() if batch.images else ([], 0.0)
        ok = sum(1 for img, _ in images if img is not None)
        total = now - batch.started + batch.decode_s
        log.info(
            "batch", seq=batch.seq, events=len(batch.good), dlq=len(batch.items) - len(batch.good),
            images_ok=ok, images_failed=sum(1 for img, e in images if img is None and e != "no_url"),
            decode_ms=round(batch.decode_s * 1e3, 1), fetch_ms=round(fetch_s * 1e3, 1),
            infer_ms=round(batch.infer_s * 1e3, 1),
            deliver_ms=round(max(0.0, batch.delivered - batch.emitted) * 1e3, 1),
            commit_ms=round((now - max(batch.delivered, batch.emitted)) * 1e3, 1),
            total_ms=round(total * 1e3, 1), batch_eps=round(len(batch.items) / max(total, 1e-9), 1),
            overall_eps=round(self.completed / (now - self.t_start), 1),
        )

    def _backpressure(self) -> None:
        """Pause each partition of which we already hold a batch's worth, resume it at half.

        Per partition, not the whole assignment: a paused partition's prefetched messages are dropped by
        librdkafka, and pausing all of them made the partitions first in each new fetch response win.
        Polling goes on either way, so slow inference never exceeds ``max.poll.interval.ms``.
        """
        if self.assignment_changed:  # a rebalance: the new assignment starts unpaused
            if self.assignment:
                self.consumer.resume([TopicPartition(t, p) for t, p in self.assignment])
            self.paused, self.assignment_changed = set(), False
        # At least 16: with tiny batches, pausing on every held message would throw away the prefetch each time.
        high = max(self.s.max_batch_size, _MIN_HELD_PER_PARTITION)
        pause, resume = flow_control(self.batcher.counts(), self.paused, self.assignment, high, high // 2)
        if pause:
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
            self.pauses += len(pause)
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        self.paused = (self.paused | pause) - resume
        if pause or resume:
            log.debug("flow control", paused=len(self.paused), newly_paused=len(pause), resumed=len(resume))

    def _drain(self) -> None:
        """Finish every pending and in-flight batch, deliver, and commit."""
        for items in self.batcher.take_all():
            self._submit(items)
        while self.inflight:
            self._pump()
            self.producer.poll(0.05)
            self._commit_completed()
        self._commit_completed(force=True)  # guarantee: nothing delivered stays uncommitted past a drain

    def _limits_reached(self) -> bool:
        if self.max_events is not None and self.completed >= self.max_events:
            return True
        if not self.idle_exit_s or self.last_message is None or self.inflight or len(self.batcher):
            return False
        return time.monotonic() - self.last_message > self.idle_exit_s

    # ---- rebalance callbacks (run inside consume() on the main thread) -------------------------
    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.assignment |= {(p.topic, p.partition) for p in partitions}
        self.metrics.on_assign(partitions)
        self.last_message = time.monotonic()  # waiting for a rebalance is not idleness
        self.assignment_changed = True

    def _on_revoke(self, consumer, partitions) -> None:
        if time.monotonic() - self.polled_at > self.s.max_poll_interval_ms / 1000:
            # We stopped polling past max.poll.interval.ms: librdkafka has already left the group and
            # reports it as a revoke; the partitions are another member's now.
            return self._lose(frozenset((p.topic, p.partition) for p in partitions))
        log.info("revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self.failure is None:
            self._drain()  # while we still own them: finish, deliver, commit
        self.assignment -= {(p.topic, p.partition) for p in partitions}
        self.assignment_changed = True

    def _on_lost(self, consumer, partitions) -> None:
        self._lose(frozenset((p.topic, p.partition) for p in partitions))

    def _lose(self, lost: frozenset) -> None:
        """Partitions taken from us without a revoke (session timeout, max.poll.interval.ms exceeded)."""
        log.warning("partitions lost", partitions=sorted(f"{t}[{p}]" for t, p in lost))
        self.batcher.drop(lambda it: it.tp in lost)
        for batch in self.inflight:  # formed but not yet produced: the new owner produces them
            for it in batch.items:
                it.dropped = it.dropped or (not batch.emitted and it.tp in lost)
        self.ledger.lose(lost)  # guarantee: their offsets now belong to another member; never commit them
        self.schedule.lose(lost)  # nor those already waiting for the next commit
        if self.failure is None:
            self._drain()
        self.assignment -= lost
        self.assignment_changed = True

    def _shutdown(self) -> None:
        self.stopping.set()
        while not self.todo.empty():  # only after a failure: abandoned, never committed
            self.todo.get_nowait()
        self.todo.put(None)
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)
        if self.own_fetcher:
            self.fetcher.close()
        if self.txn_open:  # after a failure: its records never become visible, its offsets never commit
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort failed; the broker aborts it on timeout or at our restart", error=str(exc))
        self.producer.flush(10)
        # Leave the group now so the partitions move at once; after a failure the revoke handler
        # it triggers does not drain or commit.
        self.consumer.close()

    # ---- inference thread ----------------------------------------------------------------------
    def _infer_loop(self) -> None:
        while (batch := self.todo.get()) is not None:
            self.metrics.heartbeats.inference(busy=True)  # waiting on an empty queue is not a stall
            try:
                images, _ = batch.images.result()
                t0 = time.perf_counter()
                batch.decisions = batch.model.categorize([scoring.text_of(i.event) for i in batch.good],
                                                        [img for img, _ in images])
                batch.infer_s = time.perf_counter() - t0
                if len(batch.decisions) != len(batch.good):
                    raise RuntimeError(f"{len(batch.decisions)} decisions for {len(batch.good)} events")
            except Exception as exc:
                batch.error = f"inference failed: {type(exc).__name__}: {exc}"
            self.done.put(batch)
            self.metrics.heartbeats.inference(busy=False)
