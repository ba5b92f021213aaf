"""The inference worker: one thread that scores whole batches, in the order they are queued.

Batches come in through a bounded queue (``pipeline_depth``; the loop keeps serving Kafka while it
is full) and go back through an unbounded one that the main thread drains between polls. A failure
is recorded on the batch (``batch.error``) for the main thread to act on; the thread never stops on it.

A batch the model fails on is scored again one event at a time (``isolate``), so one event the model
cannot read goes to the dead-letter topic instead of failing its batch on every restart (a crash loop).
Only when the model also fails on a plain canary product is the fault the model's, and the batch fails.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

from consumer import scoring
from consumer.service.records import Batch

CANARY_TEXT = "Cotton crew-neck T-shirt"  # any plain product: a model that cannot score it is broken


def _categorize(model, texts: Sequence[str], pixels: Sequence) -> list:
    decisions = model.categorize(texts, pixels)
    if len(decisions) != len(texts):
        raise RuntimeError(f"{len(decisions)} decisions for {len(texts)} events")
    return decisions


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def isolate(model, texts: Sequence[str], pixels: Sequence, failure: Exception) -> tuple[list, dict[int, str]]:
    """After the model failed on a whole batch (``failure``): each event scored alone. Returns the decisions
    (None where the event failed alone) and why each failed. Raises ``failure`` when the model fails on a
    plain canary too (text and a white image): then nothing is the events' fault and nothing is dead-lettered
    (a broken image path would otherwise dead-letter every event with an image, whatever else the batch held)."""
    decisions, failed = [], {}
    for i, (text, px) in enumerate(zip(texts, pixels)):
        try:
            decisions += _categorize(model, [text], [px])
        except Exception as exc:  # noqa: BLE001 - judged below, against the canary
            decisions.append(None)
            failed[i] = _why(exc)
    if failed:  # is the model broken, or these events?
        try:
            white = np.full((*model.image_size, 3), 255, np.uint8)
            _categorize(model, [CANARY_TEXT], [white])
        except Exception:  # noqa: BLE001 - the model's fault: the batch fails, nothing goes to the DLQ
            raise failure from None
    return decisions, failed


def infer(batch: Batch) -> None:
    """Score the batch's good events with the batch's own model: ``decisions`` and ``infer_s``, or ``error``.
    An event the model fails on alone keeps a None decision and its reason (``inference_failed``) in
    ``item.error``: its record is a dead letter (`RecordBuilder.records`)."""
    try:
        images, _ = batch.images.result()
        t0 = time.perf_counter()
        texts, pixels = [scoring.text_of(i.event) for i in batch.good], [img for img, _ in images]
        try:
            batch.decisions = _categorize(batch.model, texts, pixels)
        except Exception as exc:  # noqa: BLE001 - the model or one event: `isolate` tells which
            batch.decisions, failed = isolate(batch.model, texts, pixels, exc)
            for i, why in failed.items():
                batch.good[i].error = scoring.InvalidEvent("inference_failed", why)
        batch.infer_s = time.perf_counter() - t0
    except Exception as exc:
        batch.error = f"inference failed: {_why(exc)}"


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
