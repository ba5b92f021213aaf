"""The consume loop: poll → micro-batch → decode → fetch images ‖ infer ‖ produce → commit in order.

The main thread owns the Kafka consumer and the delivery strategy; a small pool fetches each batch's
images while the previous batch is in inference (``InferenceWorker``). Records are built by
``RecordBuilder``, sent and committed by the ``Delivery`` of the configured guarantee; which offsets
may be committed is ``CommitLedger``'s rule, when is ``CommitSchedule``'s; partitions are paused one by one
(``flow_step``) so polling never stops; ``Rebalancing`` drains or drops. See docs/delivery-guarantees.md.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaError, Message, TopicPartition

from consumer import scoring
from consumer.batching import MicroBatcher
from consumer.commits import CommitLedger, CommitSchedule
from consumer.config import Settings
from consumer.adapters.kafka_io import close_within, make_consumer
from consumer.logs import get_logger
from consumer.metrics import Metrics
from consumer.service.builders import RecordBuilder, arrival, decode
from consumer.service.delivery import PipelineFailed, make_delivery
from consumer.service.partitions import Partitions, flow_step
from consumer.service.rebalance import Rebalancing
from consumer.service.records import Batch, Item
from consumer.service.worker import InferenceWorker
from models.categorizer import Categorizer
from schemas.wire import RegistryUnavailable, make_codec

log = get_logger("shelver.service")
_MIN_HELD_PER_PARTITION = 16  # events held per partition before it is paused, whatever the batch size
_POLL_CAP_S = 0.5  # longest single consume(); bounds how late stop requests and commits are noticed
_BUSY_POLL_S, _QUEUE_WAIT_S = 0.01, 0.05  # consume() with batches in flight; a full inference queue


class Service(Rebalancing):
    def __init__(self, settings: Settings, categorizer: Categorizer, fetcher=None, *,
                 max_events: int | None = None, idle_exit_s: float | None = None, consumer_extra=None,
                 metrics: Metrics | None = None, reloader=None):
        from consumer.adapters.images import ImageFetcher  # the fetcher pulls in httpx; only the service needs it

        self.s, self.model, self.own_fetcher = settings, categorizer, fetcher is None
        self.fetcher = fetcher or ImageFetcher(settings, target_size=categorizer.image_size)  # decodes to model size
        self.codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        self.metrics, self.reloader = metrics or Metrics(stall_s=settings.liveness_stall_s), reloader
        self.metrics.attach(self)
        self.consumer = make_consumer(settings, {**self.metrics.consumer_config(settings.stats_interval_ms),
                                                 **(consumer_extra or {})})
        self.max_events, self.idle_exit_s, self.t_start = max_events, idle_exit_s, time.perf_counter()
        self.builder = RecordBuilder.from_settings(settings, self.codec, categorizer)
        self.failure: str | None = None
        self.delivery = make_delivery(settings, self.builder, self.metrics, self._fail, self._commit_completed)
        self.batcher: MicroBatcher[Item] = MicroBatcher(settings.max_batch_size, settings.max_batch_wait_ms / 1000,
                                                        key=lambda it: it.tp)
        self.worker = InferenceWorker(settings.pipeline_depth, self.metrics.heartbeats)
        self.inflight: deque[Batch] = deque()  # formed, not yet delivered, in consume order
        self.max_inflight = settings.pipeline_depth + 9  # queued, inferring, 8 awaiting reports: a stalled output's bound
        self.ledger = CommitLedger()  # which offsets may be committed (delivered prefix per partition)
        self.schedule = CommitSchedule(self.delivery.commit_interval_s)  # when they are
        self.fetch_pool = ThreadPoolExecutor(settings.pipeline_depth + 1, thread_name_prefix="fetch")
        self.stopping, self.partitions = threading.Event(), Partitions()
        self.high = max(settings.max_batch_size, _MIN_HELD_PER_PARTITION)  # held before a pause (tiny batches: prefetch)
        self.pauses = self.seq = self.completed = 0  # pauses: benchmarks; completed: events delivered and committed
        self.last_message: float | None = None  # idle clock; starts at the first assignment
        self.polled_at = time.monotonic()  # when consume() last returned: the group's view of our liveness

    assignment = property(lambda self: self.partitions.assigned)
    paused = property(lambda self: self.partitions.paused)

    def _fail(self, reason: str) -> None:
        self.failure = self.failure or reason

    def stop(self) -> None:
        """Ask the loop to finish in-flight work, commit and return (signal-handler safe)."""
        self.stopping.set()
        if self.own_fetcher:  # image fetches get one more fetch deadline at most, then are aborted
            self.fetcher.cancel(grace_s=self.s.image_total_timeout_s)

    def run(self) -> int:
        log.info("starting", settings=self.s.redacted(), model_version=self.model.model_version)
        self.delivery.start()
        self.worker.start()
        self.consumer.subscribe([t for t in (self.s.input_topic, self.s.replay_topic) if t], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self.stopping.is_set() and not self._limits_reached():
                self._pump()
                self.partitions, paused = flow_step(self.consumer, self.partitions, self.batcher.counts(), self.high)
                self.pauses += paused
                # Take what is already fetched without waiting; block (for one message) only when nothing is.
                msgs = self.consumer.consume(self.s.max_batch_size, 0)
                if not msgs:
                    wait = _BUSY_POLL_S if self.inflight else self.batcher.wait_s(time.monotonic(), _POLL_CAP_S)
                    msgs = self.consumer.consume(1, wait)
                self._accept(msgs)
                self.polled_at = time.monotonic()
                # An idle model (nothing queued for it) takes whatever is waiting, without a batch window.
                while (self.batcher.ready(time.monotonic(), idle=self.worker.idle()) and not self.worker.full()
                       and len(self.inflight) < self.max_inflight):
                    self._submit(self.batcher.take())
            self._drain()
            log.info("stopped", events=self.completed)
            return 0
        except BaseException as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            self.metrics.pipeline_failures.inc()
            log.error("pipeline failed; exiting without committing", error=self.failure)
            if isinstance(exc, (PipelineFailed, RegistryUnavailable)):  # known ends: exit 1; others are bugs
                return 1
            raise
        finally:
            self._shutdown()

    def _accept(self, msgs: list[Message]) -> None:
        """Decode and validate as messages arrive (overlapping inference); poison is kept for the DLQ."""
        now, items = time.monotonic(), []
        for msg in msgs:
            if msg.error():
                if msg.error().fatal():
                    raise PipelineFailed(f"consumer error: {msg.error()}")
                log.warning("consumer error", error=str(msg.error()))
                if msg.error().code() == KafkaError._MAX_POLL_EXCEEDED and self.assignment:  # evicted
                    self._lose(self.assignment)
                continue
            items.append(decode(self.codec, msg))
        # None of a partition lost above (its new owner produces them: never ours to commit); oldest first.
        if items := [it for it in items if it.tp in self.assignment]:
            self.last_message = now
            self.batcher.add(items, now, [arrival(it.msg) for it in items])

    def _submit(self, items: list[Item]) -> None:
        """Form a batch: start its image fetch, queue it for inference (serving Kafka while the queue is full)."""
        batch = Batch(self.seq, items, time.perf_counter(), model=self.model)
        self.seq += 1
        self.metrics.on_batch_formed(batch)
        self.ledger.open(batch.seq, batch.next_offsets())  # consume order: the commit rule depends on it
        if good := batch.good:
            batch.images = self.fetch_pool.submit(scoring.fetch_images, self.fetcher, batch.model,
                                                  [it.event.image_url for it in good])
        self.inflight.append(batch)
        if not good:  # only poison: nothing to infer, its dead letters go out in turn
            batch.inferred = True
            return
        while not self.worker.submit(batch, _QUEUE_WAIT_S):
            self._pump()

    def _pump(self) -> None:
        """Produce finished batches in consume order, serve delivery reports, commit what is complete."""
        self._check_waits()  # a heartbeat; guarantee: no wait past its deadline, none on a dead inference thread
        if self.reloader is not None:  # batches keep the model they were formed with
            self.model = self.reloader.swap(self.model)
        self.worker.finished()
        for batch in [b for b in self.inflight if not b.emitted]:
            if not batch.inferred:
                break  # in order: a later batch's records never go out before an earlier one's
            if batch.error:
                raise PipelineFailed(batch.error)
            batch.outs = self.builder.records(batch)
            self.delivery.emit(batch)
        self.delivery.poll(0)
        self._commit_completed()

    def _commit_completed(self, force: bool = False) -> None:
        """The one place offsets are committed: per partition the end of a delivered prefix, when due."""
        if self.failure:
            raise PipelineFailed(self.failure)
        done = [b for b in self.inflight if b.emitted and b.pending == 0]
        for batch in done:
            self.ledger.complete(batch.seq)  # every record of it has a successful delivery report
            self.inflight.remove(batch)
        self.schedule.add(self.ledger.take())
        due = self.schedule.due(time.monotonic(), force=force)  # guarantee: never a lost partition's offsets
        self.delivery.commit(self.consumer, [TopicPartition(t, p, o) for (t, p), o in due.items()])
        for batch in done:
            self.completed += len(batch.items)
            now = time.perf_counter()
            self.metrics.on_batch_done(batch, now)
            log.info("batch", **batch.summary(now, self.completed, now - self.t_start))

    def _limits_reached(self) -> bool:
        if self.max_events is not None and self.completed >= self.max_events:
            return True
        if not self.idle_exit_s or self.last_message is None or self.inflight or len(self.batcher):
            return False
        return time.monotonic() - self.last_message > self.idle_exit_s

    def _shutdown(self) -> None:
        self.stopping.set()
        self.worker.stop()  # after a failure, what is still queued is abandoned, never committed
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)
        if self.own_fetcher:
            self.fetcher.close()
        self.delivery.abort()
        self.delivery.close()
        # Leave the group now so the partitions move at once (bounded); after a failure the revoke handler does not drain.
        close_within(self.consumer)
