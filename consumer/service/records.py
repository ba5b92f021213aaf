"""The record types a batch moves through the service with: an input ``Item``, an output ``Out``, a ``Batch``."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from consumer import scoring
from models.categorizer import Categorizer
from schemas import ProductEvent


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

    def drop(self, lost: frozenset) -> None:
        """Partitions lost: if not yet produced, their items are not (the new owner produces them)."""
        for it in self.items:
            it.dropped = it.dropped or (not self.emitted and it.tp in lost)

    def summary(self, now: float, completed: int, elapsed: float) -> dict:
        """The fields of the ``batch`` log line once it is committed (``completed`` events in ``elapsed`` s)."""
        images, fetch_s = self.images.result() if self.images else ([], 0.0)
        total = now - self.started + self.decode_s
        return dict(
            seq=self.seq, events=sum(1 for i in self.items if i.error is None),
            dlq=sum(1 for i in self.items if i.error is not None),
            images_ok=sum(1 for img, _ in images if img is not None),
            images_failed=sum(1 for img, e in images if img is None and e != "no_url"),
            decode_ms=round(self.decode_s * 1e3, 1), fetch_ms=round(fetch_s * 1e3, 1),
            infer_ms=round(self.infer_s * 1e3, 1),
            deliver_ms=round(max(0.0, self.delivered - self.emitted) * 1e3, 1),
            commit_ms=round((now - max(self.delivered, self.emitted)) * 1e3, 1),
            total_ms=round(total * 1e3, 1), batch_eps=round(len(self.items) / max(total, 1e-9), 1),
            overall_eps=round(completed / elapsed, 1),
        )
