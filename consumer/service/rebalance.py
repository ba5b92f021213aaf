"""Draining, rebalances and lost partitions: what happens to batches in flight when partitions go.

A revoke (the partitions are still ours) drains: every formed batch is finished, delivered and
committed first. A loss (session timeout, ``max.poll.interval.ms`` exceeded: the partitions are
already another member's) drops what is not yet produced and never commits their offsets.

``Rebalancing`` is a part of ``Service`` (a mixin): it uses the service's batcher, in-flight batches,
commit ledger and schedule, and ``_submit``/``_pump``/``_commit_completed``. The callbacks keep their
names (``_on_assign``, ``_on_revoke``, ``_on_lost``, ``_lose``) because ``run`` binds them at subscribe.
"""
from __future__ import annotations

import time

from consumer.logs import get_logger

log = get_logger("shelver.service")

_DRAIN_POLL_S = 0.05  # serving delivery reports while draining


def _tps(partitions) -> frozenset:
    return frozenset((p.topic, p.partition) for p in partitions)


class Rebalancing:
    def _drain(self) -> None:
        """Finish every pending and in-flight batch, deliver, and commit."""
        for items in self.batcher.take_all():
            self._submit(items)
        while self.inflight:
            self._pump()
            self.delivery.poll(_DRAIN_POLL_S)
            self._commit_completed()
        self._commit_completed(force=True)  # guarantee: nothing delivered stays uncommitted past a drain

    # ---- rebalance callbacks (run inside consume() on the main thread) -------------------------
    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.partitions = self.partitions.assign(_tps(partitions))
        self.metrics.on_assign(partitions)
        self.last_message = time.monotonic()  # waiting for a rebalance is not idleness

    def _on_revoke(self, consumer, partitions) -> None:
        if time.monotonic() - self.polled_at > self.s.max_poll_interval_ms / 1000:
            # We stopped polling past max.poll.interval.ms: librdkafka has already left the group and
            # reports it as a revoke; the partitions are another member's now.
            return self._lose(_tps(partitions))
        log.info("revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self.failure is None:
            self._drain()  # while we still own them: finish, deliver, commit
        self.partitions = self.partitions.revoke(_tps(partitions))

    def _on_lost(self, consumer, partitions) -> None:
        self._lose(_tps(partitions))

    def _lose(self, lost: frozenset) -> None:
        """Partitions taken from us without a revoke (session timeout, max.poll.interval.ms exceeded)."""
        log.warning("partitions lost", partitions=sorted(f"{t}[{p}]" for t, p in lost))
        self.batcher.drop(lambda it: it.tp in lost)
        for batch in self.inflight:  # formed but not yet produced: the new owner produces them
            batch.drop(lost)
        self.ledger.lose(lost)  # guarantee: their offsets now belong to another member; never commit them
        self.schedule.lose(lost)  # nor those already waiting for the next commit
        if self.failure is None:
            self._drain()
        self.partitions = self.partitions.lose(lost)

