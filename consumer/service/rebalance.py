"""Draining, rebalances and lost partitions: what happens to batches in flight when partitions go.

A revoke (the partitions are still ours) drains: every formed batch is finished, delivered and
committed first, within ``drain_timeout_s``: past it, or when the inference thread is gone, the drain
raises ``PipelineFailed`` and the service exits 1 without committing what is still in flight (a wedged
model must not hold the group's rebalance for ``max.poll.interval.ms``, nor a SIGTERM until SIGKILL). A loss (session timeout, ``max.poll.interval.ms`` exceeded: the partitions are
already another member's) drops what is not yet produced and never commits their offsets.

``Rebalancing`` is a part of ``Service`` (a mixin): it uses the service's batcher, in-flight batches,
commit ledger and schedule, and ``_submit``/``_pump``/``_commit_completed``. The callbacks keep their
names (``_on_assign``, ``_on_revoke``, ``_on_lost``, ``_lose``) because ``run`` binds them at subscribe.
"""
from __future__ import annotations

import time

from consumer.logs import get_logger
from consumer.service.delivery import PipelineFailed

log = get_logger("shelver.service")

_DRAIN_POLL_S = 0.05  # serving delivery reports while draining


def _tps(partitions) -> frozenset:
    return frozenset((p.topic, p.partition) for p in partitions)


class Rebalancing:
    drain_deadline: float | None = None  # set while draining

    def _drain(self) -> None:
        """Finish every pending and in-flight batch, deliver, and commit, before ``drain_timeout_s`` passes."""
        self.drain_deadline = time.monotonic() + self.s.drain_timeout_s  # _pump checks it on every turn
        try:
            for items in self.batcher.take_all():
                self._submit(items)
            while self.inflight:
                self._pump()
                self.delivery.poll(_DRAIN_POLL_S)
                self._commit_completed()
            self._commit_completed(force=True)  # guarantee: nothing delivered stays uncommitted past a drain
        finally:
            self.drain_deadline = None

    def _check_waits(self) -> None:
        """Every turn of the loop: a main-loop heartbeat (/livez); the inference thread is alive while batches
        wait on it, and a drain is within its deadline."""
        self.metrics.heartbeats.beat()
        if not self.worker.alive() and any(not b.inferred for b in self.inflight):
            raise PipelineFailed("the inference thread is gone; exiting without committing")
        if self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
            stuck = sum(1 for b in self.inflight if not b.inferred)
            raise PipelineFailed(f"drain not done within drain_timeout_s={self.s.drain_timeout_s:g} s "
                                 f"({len(self.inflight)} batches in flight, {stuck} not inferred); "
                                 "exiting without committing them")

    # ---- rebalance callbacks (run inside consume() on the main thread) -------------------------
    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.partitions = self.partitions.assign(_tps(partitions))
        self.metrics.on_assign(partitions)
        self.last_message = time.monotonic()  # waiting for a rebalance is not idleness

    def _on_revoke(self, consumer, partitions) -> None:
        self._in_callback(self._revoke, partitions)

    def _on_lost(self, consumer, partitions) -> None:
        self._in_callback(self._lose, _tps(partitions))

    def _in_callback(self, step, arg) -> None:
        """librdkafka callbacks must not raise (confluent-kafka then fails consume() with a SystemError):
        a failure is recorded, and the loop raises it as soon as consume() returns."""
        try:
            step(arg)
        except PipelineFailed as exc:
            self._fail(str(exc))

    def _revoke(self, partitions) -> None:
        if time.monotonic() - self.polled_at > self.s.max_poll_interval_ms / 1000:
            # We stopped polling past max.poll.interval.ms: librdkafka has already left the group and
            # reports it as a revoke; the partitions are another member's now.
            return self._lose(_tps(partitions))
        log.info("revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        try:
            if self.failure is None:
                self._drain()  # while we still own them: finish, deliver, commit
        finally:
            self.partitions = self.partitions.revoke(_tps(partitions))

    def _lose(self, lost: frozenset) -> None:
        """Partitions taken from us without a revoke (session timeout, max.poll.interval.ms exceeded)."""
        log.warning("partitions lost", partitions=sorted(f"{t}[{p}]" for t, p in lost))
        self.batcher.drop(lambda it: it.tp in lost)
        for batch in self.inflight:  # formed but not yet produced: the new owner produces them
            batch.drop(lost)
        self.ledger.lose(lost)  # guarantee: their offsets now belong to another member; never commit them
        self.schedule.lose(lost)  # nor those already waiting for the next commit
        try:
            if self.failure is None:
                self._drain()
        finally:
            self.partitions = self.partitions.lose(lost)

