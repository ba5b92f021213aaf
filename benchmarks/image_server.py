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
    """On-CPU seconds of one of this process's threads: the scheduler's nanoseconds where the kernel
    has them (per-thread ticks lose up to 10 ms each, 0.2 s over the 40 threads of a run)."""
    try:
        return int(Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# What each of the service process's threads does, by the name it runs under (Python's name where
# it has one, else the kernel's): the split of "the rest of the service" in the report.
THREAD_GROUPS = (
    ("litert", "inference"),  # the interpreters' threads: models.engine names them, XNNPACK's too
    ("image-http", "image HTTP"),  # consumer.adapters.http_loop.CurlLoop: every transfer
    ("image-fetch", "image DNS + decode of large batches"),  # consumer.adapters.images.ImageFetcher's pool
    # the service's per-batch pool: hands a batch to the fetcher, decodes small images, then prepare_images
    ("fetch", "image decode + resize"),
    ("infer", "inference thread (text, KL)"),  # its image chunks run on the litert threads
    ("rdk:", "librdkafka"),
    ("service", "Kafka loop (poll, Avro, produce, commit)"),
)


def thread_group(python_name: str | None, comm: str) -> str:
    for prefix, group in THREAD_GROUPS:
        if comm.startswith(prefix) or (python_name or "").startswith(prefix):
            return group
    return "other"


class CpuMeter:
    """CPU seconds over a window: this process by thread group (inference first), the broker, the images."""

    def __init__(self, broker_pid: int | None, server_pid: int | None):
        self.pids = {"broker": broker_pid, "images": server_pid}
        self._start = self._now()

    @staticmethod
    def _threads() -> dict[str, tuple[str, float]]:
        """Task id → (group, CPU seconds) for every thread of this process alive now."""
        names = {t.native_id: t.name for t in threading.enumerate()}
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            except OSError:  # the thread ended between the listing and the read
                continue
            out[tid] = (thread_group(names.get(int(tid)), comm), thread_cpu_s(int(tid)))
        return out

    def _now(self) -> dict:
        t = os.times()
        now = {"process": t.user + t.system, "threads": self._threads()}
        now.update({k: process_cpu_s(pid) for k, pid in self.pids.items()})
        return now

    def stop(self) -> dict:
        """Core-seconds since construction: process, inference, rest (of the service), broker, images, and
        ``by_thread`` (group → seconds; threads that ended inside the window are only in the process total)."""
        end = self._now()
        d = {k: (None if end[k] is None or self._start[k] is None else end[k] - self._start[k])
             for k in ("process", *self.pids)}
        by_thread: dict[str, float] = {}
        for tid, (group, cpu) in end["threads"].items():
            by_thread[group] = by_thread.get(group, 0.0) + cpu - self._start["threads"].get(tid, (group, 0.0))[1]
        d["by_thread"] = by_thread
        d["inference"] = by_thread.get("inference", 0.0)
        d["rest"] = d["process"] - d["inference"]
        return d


def main() -> None:
    sys.path.insert(0, str(REPO))
    from consumer.cli.sample import serve_directory

    with serve_directory(Path(sys.argv[1])) as url:
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
