"""Would a C HTTP client bring the image half's CPU down? Core-ms per image (this process's CPU time, all
threads) for HTTP + decode of catalogue images from a local image server in its own process, four ways:

- ``fetcher``: the service's ``ImageFetcher`` as it is now (until 2026-12-05: ``http.client`` over guarded
  sockets, a thread per fetch; since: the guard in front of one libcurl loop, a hand-off per batch);
- ``curl, in the caller``: libcurl's multi interface driving a batch's transfers from the calling thread,
  which then decodes them (the floor of a C client: no guard, no other thread);
- ``curl, handoff per image``: the same loop behind a thread pool, one handoff per image (the shape the
  fetcher's threads would keep: resolve and decode in the pool, the transfer in the loop);
- ``curl, handoff per batch``: the caller hands a batch's URLs to the loop at once and decodes the bodies
  itself.

Measured for issue #18 before the fetcher moved to libcurl (pycurl is a runtime dependency since).

    python benchmarks/curl_cost.py            # 1,024 catalogue images, model input 192x144
"""

from __future__ import annotations

import io
import queue
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MAX_PIXELS, MAX_ASPECT = 100_000_000, 20.0


class CurlLoop:
    """One thread drives every transfer through libcurl's multi socket API (epoll via selectors)."""

    def __init__(self):
        import pycurl

        self._pycurl = pycurl
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._timeout: float | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="curl-loop").start()

    def _on_socket(self, what, fd, multi, data):
        pycurl = self._pycurl
        if what == pycurl.POLL_REMOVE:
            try:
                self._selector.unregister(fd)
            except KeyError:
                pass
            return
        events = (selectors.EVENT_READ if what & pycurl.POLL_IN else 0) | (
            selectors.EVENT_WRITE if what & pycurl.POLL_OUT else 0)
        try:
            self._selector.modify(fd, events, fd)
        except KeyError:
            self._selector.register(fd, events, fd)

    def _on_timer(self, ms):
        self._timeout = None if ms < 0 else ms / 1000

    def get_many(self, urls: list[str]) -> list[bytes]:
        """Bodies of every URL, in order (one handoff each way for the whole list)."""
        done = threading.Event()
        bodies: list[bytes | None] = [None] * len(urls)
        self._inbox.put((urls, bodies, done))
        self._wake_w.send(b"x")
        done.wait()
        return bodies

    def _run(self):
        pycurl = self._pycurl
        while True:
            events = self._selector.select(self._timeout)
            if not events:
                self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
            for key, mask in events:
                if key.data is None:
                    self._wake_r.recv(4096)
                    while not self._inbox.empty():
                        urls, bodies, done = self._inbox.get()
                        state = {"left": len(urls), "done": done}
                        for i, url in enumerate(urls):
                            handle, buf = pycurl.Curl(), io.BytesIO()
                            handle.setopt(pycurl.URL, url)
                            handle.setopt(pycurl.WRITEDATA, buf)
                            handle.setopt(pycurl.NOSIGNAL, 1)
                            handle.job = (bodies, i, buf, state)
                            self._multi.add_handle(handle)
                    self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
                else:
                    flags = (pycurl.CSELECT_IN if mask & selectors.EVENT_READ else 0) | (
                        pycurl.CSELECT_OUT if mask & selectors.EVENT_WRITE else 0)
                    self._multi.socket_action(key.data, flags)
            while True:
                queued, ok, failed = self._multi.info_read()
                for handle in ok + [f[0] for f in failed]:
                    bodies, i, buf, state = handle.job
                    bodies[i] = buf.getvalue()
                    self._multi.remove_handle(handle)
                    handle.close()
                    state["left"] -= 1
                    if state["left"] == 0:
                        state["done"].set()
                if queued == 0:
                    break


def curl_in_caller():
    """A function fetching a batch with libcurl's multi interface in the calling thread (handles reused)."""
    import pycurl

    multi, handles = pycurl.CurlMulti(), []

    def get_many(urls: list[str]) -> list[bytes]:
        while len(handles) < len(urls):
            handles.append(pycurl.Curl())
        buffers = []
        for handle, url in zip(handles, urls):
            buffers.append(io.BytesIO())
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.WRITEDATA, buffers[-1])
            handle.setopt(pycurl.NOSIGNAL, 1)
            multi.add_handle(handle)
        while True:
            status, active = multi.perform()
            if status == pycurl.E_CALL_MULTI_PERFORM:
                continue
            if not active:
                break
            multi.select(1.0)
        for handle in handles[:len(urls)]:
            multi.remove_handle(handle)
        return [b.getvalue() for b in buffers]

    return get_many


def per_image_ms(fn, urls: list[str], batch: int = 32) -> float:
    fn(urls[:batch])  # warm-up: connections
    start = time.process_time()
    for i in range(0, len(urls), batch):
        fn(urls[i:i + batch])
    return (time.process_time() - start) / len(urls) * 1e3


def main() -> None:
    from image_cost import arguments, fetch_cost
    from image_server import image_server

    from consumer.adapters.images import decode_image
    from training.data import data_dir

    count, size = arguments(__doc__)

    def decode(body: bytes):
        return decode_image(body, MAX_PIXELS, MAX_ASPECT, size)

    root = data_dir(None) / "images"
    names = sorted(p.name for p in root.glob("*.jpg"))[:count]
    with image_server(root) as (base, _pid):
        urls = [f"{base}/{n}" for n in names]
        for threads in (16, 1):
            print(f"fetcher, {threads:2d} threads: {fetch_cost(base, names, threads, size):.3f} core-ms per image")
        in_caller = curl_in_caller()
        print(f"curl, in the caller: "
              f"{per_image_ms(lambda b: [decode(x) for x in in_caller(b)], urls):.3f} core-ms per image")
        loop = CurlLoop()
        for threads in (16, 1):
            with ThreadPoolExecutor(threads) as pool:
                ms = per_image_ms(lambda b: list(pool.map(lambda u: decode(loop.get_many([u])[0]), b)), urls)
            print(f"curl, handoff per image, {threads:2d} threads: {ms:.3f} core-ms per image")
        print(f"curl, handoff per batch, decode in the caller: "
              f"{per_image_ms(lambda b: [decode(x) for x in loop.get_many(b)], urls):.3f} core-ms per image")


if __name__ == "__main__":
    main()
