"""Model rollout without a restart: load and warm the new categorizer beside the serving one.

A reload is asked for by SIGHUP or happens when the configured artifact pointer
(``SHELVER_ARTIFACT_DIR`` as a symlink or pointer file) names another folder. Loading and
warm-up run on this module's thread while the old model keeps serving; the service swaps the
new one in on its main thread *between* batches (``swap``), and every batch keeps the model it
was formed with, so a batch is never scored by two models and, per partition, versions only
move forward. A failed load leaves the old model serving.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from consumer.logs import get_logger

log = get_logger("shelver.reload")


class ModelReloader:
    def __init__(self, load: Callable[[], object], pointer: Callable[[], Path] | None = None,
                 poll_s: float = 0.0, metrics=None, on_swap: Callable[[object, object], None] | None = None):
        """``load`` builds and warms a categorizer from the current configuration; ``pointer``
        resolves the configured artifact (checked every ``poll_s`` seconds when both are set);
        ``on_swap(old, new)`` runs on the main thread right after a swap."""
        self._load, self._pointer, self._poll_s, self._metrics = load, pointer, poll_s, metrics
        self._on_swap = on_swap
        self._target = self._resolve()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._ready: object | None = None
        self._load_s = 0.0  # how long loading and warming the ready model took
        self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)

    def start(self) -> ModelReloader:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def request(self) -> None:
        """Ask for a reload (safe in a signal handler: it only sets an event)."""
        self._wake.set()

    def swap(self, current):
        """On the main thread, between batches: the newly loaded categorizer if one is ready, else ``current``."""
        with self._lock:
            new, self._ready = self._ready, None
        if new is None:
            return current
        log.info("model swapped", old_version=getattr(current, "model_version", None),
                 new_version=new.model_version, taxonomy_version=getattr(new, "taxonomy_version", None),
                 load_s=round(self._load_s, 1))
        if self._metrics is not None:
            self._metrics.set_model(new)
        if self._on_swap is not None:
            self._on_swap(current, new)
        return new

    def _resolve(self) -> Path | None:
        if self._pointer is None:
            return None
        try:
            return self._pointer()
        except Exception as exc:  # noqa: BLE001 - a pointer being rewritten or broken: try again next round
            log.warning("artifact pointer unreadable", error=str(exc))
            return self._target if hasattr(self, "_target") else None

    def _run(self) -> None:
        timeout = self._poll_s if self._pointer is not None and self._poll_s > 0 else None
        while not self._stop.is_set():
            asked = self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            target = self._resolve()
            if not asked and target == self._target:
                continue
            log.info("reloading model", reason="signal" if asked else "artifact pointer changed",
                     artifact=str(target) if target else None)
            self._target = target
            started = time.monotonic()
            try:
                model = self._load()
            except Exception as exc:  # noqa: BLE001 - a bad artifact must not stop the service
                log.error("model reload failed; the current model keeps serving", error=f"{type(exc).__name__}: {exc}")
                if self._metrics is not None:
                    self._metrics.reloads.labels("failed").inc()
                continue
            if self._metrics is not None:
                self._metrics.reloads.labels("ok").inc()
            with self._lock:
                self._ready, self._load_s = model, time.monotonic() - started
