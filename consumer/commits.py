"""The commit rule, kept pure: commit only a delivered prefix, per partition; never a lost partition's offsets.

At-least-once and exactly-once both rest on this: an offset is committed only when every record
(result or dead letter) of every batch that read that partition up to that offset has been delivered.
A batch that completes before an earlier one on the same partition waits for it, so a crash can
only re-deliver, never skip. Partitions lost to another member are forgotten with their open
offsets: that member now owns them, and a late commit from here would move its position.
"""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable, Mapping

TP = tuple[str, int]  # (topic, partition)


class CommitLedger:
    def __init__(self) -> None:
        self._open: dict[TP, deque[tuple[Hashable, int]]] = {}  # per partition, in consume order
        self._done: set[Hashable] = set()

    def open(self, batch: Hashable, offsets: Mapping[TP, int]) -> None:
        """A batch was formed; ``offsets`` is, per partition it read, the offset after its last record."""
        for tp, offset in offsets.items():
            q = self._open.setdefault(tp, deque())
            if q and q[-1][1] >= offset:
                raise ValueError(f"{tp}: offset {offset} opened after {q[-1][1]}; batches must follow consume order")
            q.append((batch, offset))

    def complete(self, batch: Hashable) -> None:
        """Every record of ``batch`` has a successful delivery report."""
        self._done.add(batch)

    def lose(self, partitions: Iterable[TP]) -> None:
        """Partitions now owned by another member: their open offsets are never committed from here."""
        for tp in partitions:
            self._open.pop(tp, None)

    def take(self) -> dict[TP, int]:
        """Per partition, the offset to commit now (end of its delivered prefix); forgets what it returns."""
        out: dict[TP, int] = {}
        for tp, q in list(self._open.items()):
            while q and q[0][0] in self._done:
                out[tp] = q.popleft()[1]  # a later completed batch never jumps an open one
            if not q:
                del self._open[tp]
        still_open = {b for q in self._open.values() for b, _ in q}
        self._done &= still_open
        return out

    def open_partitions(self) -> set[TP]:
        return set(self._open)

    def __len__(self) -> int:
        """Open (batch, partition) entries: zero when everything formed has been taken or lost."""
        return sum(len(q) for q in self._open.values())


class CommitSchedule:
    """At-least-once: delivered offsets wait up to ``interval_s`` and then go in one commit.

    A commit per batch made the broker append to ``__consumer_offsets`` and answer a round trip for
    every few events at a fixed production rate (measured: 2.1 vs 1.3 broker core-ms per event at
    110 events/s). Waiting only delays commits, never moves one ahead of its delivery; a crash
    redelivers at most about ``interval_s`` of events. The first commit, and the first after a
    quiet spell, is not held back; ``force`` (draining, a revoke, shutting down) takes everything.
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._pending: dict[TP, int] = {}
        self._last: float | None = None  # when offsets were last handed out for a commit

    def add(self, offsets: Mapping[TP, int]) -> None:
        """Offsets from ``CommitLedger.take``: per partition they only grow, so the newest one wins."""
        self._pending.update(offsets)

    def lose(self, partitions: Iterable[TP]) -> None:
        """Partitions now owned by another member: their waiting offsets are never committed from here."""
        for tp in partitions:
            self._pending.pop(tp, None)

    def due(self, now: float, force: bool = False) -> dict[TP, int]:
        """What to commit now: everything waiting once the interval has passed (or ``force``), else nothing."""
        if not self._pending or not (force or self._last is None or now - self._last >= self.interval_s):
            return {}
        out, self._pending, self._last = self._pending, {}, now
        return out

    def __len__(self) -> int:
        return len(self._pending)
