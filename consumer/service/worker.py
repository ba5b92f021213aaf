"""The inference worker: one thread that scores whole batches, in the order they are queued.

Batches come in through a bounded queue (``pipeline_depth``; the loop keeps serving Kafka while it
is full) and go back through an unbounded one that the main thread drains between polls. A failure
is recorded on the batch (``batch.error``) for the main thread to act on; the thread never stops on it.
"""
from __future__ import annotations

import queue
import threading
import time

from consumer import scoring
from consumer.service.records import Batch


def infer(batch: Batch) -> None:
    """Score the batch's good events with the batch's own model: ``decisions`` and ``infer_s``, or ``error``."""
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


class InferenceWorker:
    def __init__(self, depth: int, heartbeats):
        self.heartbeats = heartbeats  # waiting on an empty queue is not a stall; a long batch may be
        self.todo: queue.Queue[Batch | None] = queue.Queue(maxsize=depth)
        self.done: queue.Queue[Batch] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="infer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        """The thread runs (or was never started: nothing to wait for yet)."""
        return self.thread.ident is None or self.thread.is_alive()

    def idle(self) -> bool:
        """Nothing is queued for the model."""
        return self.todo.empty()

    def full(self) -> bool:
        return self.todo.full()

    def submit(self, batch: Batch, timeout: float) -> bool:
        """Queue a batch; False when the queue stayed full for ``timeout`` seconds."""
        try:
            self.todo.put(batch, timeout=timeout)
            return True
        except queue.Full:
            return False

    def finished(self) -> list[Batch]:
        """The batches scored since the last call (their ``inferred`` set), without waiting."""
        out = []
        while True:
            try:
                batch = self.done.get_nowait()
            except queue.Empty:
                return out
            batch.inferred = True
            out.append(batch)

    def stop(self) -> None:
        """Abandon what is still queued (after a failure: never committed) and end the thread after its batch."""
        while not self.todo.empty():
            self.todo.get_nowait()
        self.todo.put(None)

    def _loop(self) -> None:
        while (batch := self.todo.get()) is not None:
            self.heartbeats.inference(busy=True)
            infer(batch)
            self.done.put(batch)
            self.heartbeats.inference(busy=False)
