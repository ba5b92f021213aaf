"""Partition state: what is assigned, paused, revoked and lost, in immutable sets.

Each change returns a new ``Partitions``; the service swaps its reference, so a scrape reading
``assigned`` or ``paused`` from another thread always sees one consistent set. Flow control itself
(which partitions to pause or resume) is the pure rule ``consumer.batching.flow_control``; ``flow_step``
applies it to the consumer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from confluent_kafka import TopicPartition

from consumer.batching import flow_control
from consumer.logs import get_logger

log = get_logger("shelver.service")

TP = tuple[str, int]


@dataclass(frozen=True)
class Partitions:
    assigned: frozenset[TP] = frozenset()
    paused: frozenset[TP] = frozenset()  # paused because a batch's worth of theirs is held
    revoked: frozenset[TP] = frozenset()  # given up in a rebalance (drained and committed first)
    lost: frozenset[TP] = frozenset()  # taken without a revoke: their offsets are never committed from here
    changed: bool = False  # a rebalance since the last flow-control step: the new assignment starts unpaused

    def assign(self, tps: Iterable[TP]) -> Partitions:
        tps = frozenset(tps)
        return replace(self, assigned=self.assigned | tps, revoked=self.revoked - tps, lost=self.lost - tps,
                       changed=True)

    def revoke(self, tps: Iterable[TP]) -> Partitions:
        tps = frozenset(tps)
        return replace(self, assigned=self.assigned - tps, revoked=self.revoked | tps, changed=True)

    def lose(self, tps: Iterable[TP]) -> Partitions:
        tps = frozenset(tps)
        return replace(self, assigned=self.assigned - tps, lost=self.lost | tps, changed=True)

    def unpaused(self) -> Partitions:
        """After a rebalance: every assigned partition resumed, nothing paused."""
        return replace(self, paused=frozenset(), changed=False)

    def flow(self, pause: Iterable[TP], resume: Iterable[TP]) -> Partitions:
        return replace(self, paused=(self.paused | frozenset(pause)) - frozenset(resume))


def flow_step(consumer, state: Partitions, held: dict[TP, int], high: int) -> tuple[Partitions, int]:
    """Pause each partition of which ``high`` events are held, resume it at half: the new state and how many
    partitions were newly paused. Per partition, not the whole assignment: a paused partition's prefetched
    messages are dropped by librdkafka, and pausing all of them made the partitions first in each new fetch
    response win. Polling goes on either way, so slow inference never exceeds ``max.poll.interval.ms``."""
    if state.changed:  # a rebalance: the new assignment starts unpaused
        if state.assigned:
            consumer.resume([TopicPartition(t, p) for t, p in state.assigned])
        state = state.unpaused()
    pause, resume = flow_control(held, set(state.paused), state.assigned, high, high // 2)
    if pause:
        consumer.pause([TopicPartition(t, p) for t, p in pause])
    if resume:
        consumer.resume([TopicPartition(t, p) for t, p in resume])
    new = state.flow(pause, resume)
    if pause or resume:
        log.debug("flow control", paused=len(new.paused), newly_paused=len(pause), resumed=len(resume))
    return new, len(pause)
