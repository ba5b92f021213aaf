"""The micro-batching rule, kept pure (no Kafka, no clock of its own) so its bounds are unit-testable.

A batch closes when it holds ``max_size`` items or when its oldest item has waited ``max_wait_s``:
size bounds inference latency and memory, the wait bounds the latency of a quiet stream.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(self, max_size: int, max_wait_s: float):
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be >= 1 and max_wait_s >= 0")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._items: deque[tuple[float, T]] = deque()  # (arrival time, item), oldest first

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[T], now: float) -> None:
        self._items.extend((now, item) for item in items)

    def room(self) -> int:
        """How many more items fit in the current batch (at least 1 so a poll always makes progress)."""
        return max(1, self.max_size - len(self._items))

    def ready(self, now: float) -> bool:
        return len(self._items) >= self.max_size or (
            bool(self._items) and now - self._items[0][0] >= self.max_wait_s
        )

    def wait_s(self, now: float, cap: float) -> float:
        """How long the caller may block polling before the next batch is due (``cap`` when empty)."""
        if not self._items:
            return cap
        if len(self._items) >= self.max_size:
            return 0.0
        return max(0.0, min(cap, self._items[0][0] + self.max_wait_s - now))

    def take(self) -> list[T]:
        """The oldest ``max_size`` items (or fewer); later items keep their arrival times."""
        n = min(self.max_size, len(self._items))
        return [self._items.popleft()[1] for _ in range(n)]

    def take_all(self) -> list[list[T]]:
        """Everything pending, split into batches of at most ``max_size`` (used when draining)."""
        out = []
        while self._items:
            out.append(self.take())
        return out

    def drop(self, predicate: Callable[[T], bool]) -> int:
        """Forget pending items matching ``predicate`` (messages of partitions no longer ours)."""
        before = len(self._items)
        self._items = deque(x for x in self._items if not predicate(x[1]))
        return before - len(self._items)
