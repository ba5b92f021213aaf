"""Which review offsets are finished, and what to commit (pure; unit-tested).

Reviewers finish items out of order, but a Kafka offset commit is one position per partition. The
position committed is the first offset still open (fetched, not finished); the finished offsets
above it travel in the commit's **metadata** (``d:<deltas from the position>``), so a restarted
reader skips them and shows no finished item again. An item is finished only once its correction
has a successful delivery report, so a restart loses no decision either.
"""
from __future__ import annotations

META_PREFIX = "d:"
# The broker's offset.metadata.max.bytes defaults to 4096; past this many characters the oldest finished
# offsets are left out (they show again after a restart; the correction is the same, the latest wins).
META_LIMIT = 3500


def encode_done(position: int, done: set[int]) -> str:
    deltas = sorted(o - position for o in done if o >= position)
    text = META_PREFIX + ",".join(map(str, deltas))
    while len(text) > META_LIMIT and deltas:
        deltas = deltas[len(deltas) // 4 or 1:]
        text = META_PREFIX + ",".join(map(str, deltas))
    return text


def decode_done(position: int, metadata: str | None) -> set[int]:
    """The finished offsets named by a commit's metadata (an unknown or broken text names none)."""
    if not metadata or not metadata.startswith(META_PREFIX):
        return set()
    body = metadata[len(META_PREFIX):]
    try:
        return {position + int(d) for d in body.split(",") if d} if body else set()
    except ValueError:
        return set()


class PartitionLedger:
    """One review partition: offsets fetched and not finished, finished ones above the first open one."""

    def __init__(self, committed: int | None = None, metadata: str | None = None):
        self.open: set[int] = set()
        self.done: set[int] = decode_done(committed, metadata) if committed is not None else set()
        self.start = committed  # where reading resumed (None: the group had no position here)
        self.high: int | None = committed  # one past the last offset fetched

    def fetched(self, offset: int) -> bool:
        """Records an offset read from the topic; False when it was finished before (do not show it)."""
        self.high = offset + 1 if self.high is None else max(self.high, offset + 1)
        if offset in self.done:
            return False
        self.open.add(offset)
        return True

    def finish(self, offset: int) -> None:
        self.open.discard(offset)
        self.done.add(offset)

    def position(self) -> tuple[int, str] | None:
        """(offset to commit, metadata), or None when nothing was read here yet."""
        if self.high is None:
            return None
        position = min(self.open) if self.open else self.high
        self.done = {o for o in self.done if o >= position}
        return position, encode_done(position, self.done)


__all__ = ["PartitionLedger", "decode_done", "encode_done"]
