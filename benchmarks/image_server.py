"""The catalogue's images over local HTTP from a separate process, the way a CDN serves them.

In the service's own process the server's request handling would compete with the fetcher and the
Kafka loop for the GIL, a cost no deployment pays; in its own process its CPU is its own and the
benchmark reports it (``CpuMeter``) next to the broker's and the service's.

    python benchmarks/image_server.py DIR   # prints the base URL, serves until terminated
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def image_server(root: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a server process for ``root``, stopped on exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, __file__, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()  # printed once the socket listens
        if not url.startswith("http://"):
            raise RuntimeError(f"image server did not start (exit {proc.poll()})")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (None if unknown or gone)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def thread_cpu_s(native_id: int) -> float:
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuMeter:
    """CPU seconds over a window: this process (and its LiteRT inference workers), the broker, the images."""

    def __init__(self, broker_pid: int | None, server_pid: int | None):
        self.pids = {"broker": broker_pid, "images": server_pid}
        self._start = self._now()

    @staticmethod
    def _inference_threads() -> float:
        """The interpreters' threads, Python's and XNNPACK's alike: models.engine names them litert…"""
        total = 0.0
        for tid in os.listdir("/proc/self/task"):
            try:
                if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("litert"):
                    total += thread_cpu_s(int(tid))
            except OSError:  # the thread ended between the listing and the read
                pass
        return total

    def _now(self) -> dict[str, float | None]:
        t = os.times()
        now = {"process": t.user + t.system, "inference": self._inference_threads()}
        now.update({k: process_cpu_s(pid) for k, pid in self.pids.items()})
        return now

    def stop(self) -> dict[str, float | None]:
        """Core-seconds spent since construction: inference, rest (of the service), broker, images."""
        end = self._now()
        d = {k: (None if end[k] is None or self._start[k] is None else end[k] - self._start[k]) for k in end}
        d["rest"] = d["process"] - d["inference"]
        return d


def main() -> None:
    sys.path.insert(0, str(REPO))
    from consumer.sample import serve_directory

    with serve_directory(Path(sys.argv[1])) as url:
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
