"""Progress of the long CLI commands (``replay``, ``produce-sample``).

On a terminal a tqdm bar; otherwise (CI, ``kubectl logs``, a Job) a bar's carriage returns are
noise, so one structured log line every ``interval_s`` seconds and one at the end instead.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from consumer.logs import get_logger

log = get_logger("shelver.progress")


class ProgressLines:
    """Counts work and emits ``emit(done, total, rate)`` at most once per ``interval_s`` and at close."""

    def __init__(self, total: int | None, interval_s: float, emit: Callable[[int, int | None, float], None],
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done = total, 0
        self._interval, self._emit, self._clock = interval_s, emit, clock
        self._started = self._last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._emit(self.done, self.total, self._rate(now))

    def close(self) -> None:
        self._emit(self.done, self.total, self._rate(self._clock()))

    def _rate(self, now: float) -> float:
        return self.done / max(now - self._started, 1e-9)

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None, desc: str, unit: str, enabled: bool = True, interval_s: float = 10.0):
    """A context manager with ``update(n)``: a tqdm bar on a terminal, periodic log lines otherwise."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def emit(done: int, total: int | None, rate: float) -> None:
        log.info("progress", task=desc, done=done, total=total, unit=unit, per_second=round(rate, 1))

    return ProgressLines(total, interval_s, emit)
