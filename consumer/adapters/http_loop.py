"""Image transfers on libcurl's multi interface, all driven from one thread.

Why: on a 2-core machine the image half's CPU is CPU the model does not get. Fetching with the
standard library's ``http.client``, one thread per image, cost 0.43-0.59 core-ms per catalogue image
(HTTP + decode); libcurl driving a whole batch from one thread, handed over once per batch, 0.18
(``python benchmarks/curl_cost.py``); the fetcher on this loop, guard included, 0.20-0.24.

This module only moves bytes. What may be fetched is decided before a transfer starts, by the fetcher
(``consumer.adapters.images``): the URL checked, its name resolved once and every address checked. Here
each transfer is pinned to exactly those addresses (``CURLOPT_RESOLVE``: libcurl asks no resolver), and
the socket callback opens no socket to an address the same SSRF rule refuses for the transfer's host and
port, whatever libcurl's URL parser made of the URL. No proxy, ever; http and https only; redirects are
not followed here (the fetcher checks every hop); bodies are not decompressed.

Time: each transfer ends by its deadline (``CURLOPT_TIMEOUT_MS``: DNS is done, so connect, TLS, headers
and body), connects by the connect cap, and a transfer that receives nothing for the read cap ends too.
:meth:`CurlLoop.cancel` aborts every transfer in flight at once, from any thread.
"""
from __future__ import annotations

import math
import os
import queue
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable, Sequence

import certifi
import structlog

log = structlog.get_logger(__name__)


def _import_pycurl():
    """pycurl, bound to the libcurl its wheel carries.

    TensorFlow's library carries a libcurl of its own (8.11) and makes its symbols global: loaded after it,
    pycurl's extension would bind to that one and refuse to start (older than it was built for). Deep
    binding (glibc) makes the extension and its libraries look up their own symbols first, whatever was
    loaded before them."""
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))
    try:
        import pycurl as module
    finally:
        sys.setdlopenflags(flags)
    return module


pycurl = _import_pycurl()

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Longest wait between two rounds while transfers run, whatever libcurl's timers say (see CurlLoop._wait).
MAX_WAIT_MS = 50
_REQUEST_HEADERS = ["Accept: image/*", "Accept-Encoding: identity"]
_USER_AGENT = "shelver-image-fetcher"

# libcurl's error codes (curl/curl.h), as the fetcher reports them.
_TIMED_OUT = 28
_TLS_ERRORS = frozenset({35, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91, 98})
_CONNECT_ERRORS = frozenset({7})


@dataclass
class Transfer:
    """One GET: the URL as checked, the addresses it may connect to, and when it must end."""

    url: str
    host: str  # as it appears in the URL (IPv6 without brackets), lowercase
    port: int
    addresses: Sequence[IPv4Address | IPv6Address]
    deadline: float  # time.monotonic()
    max_bytes: int
    permit: Callable[[IPv4Address | IPv6Address], str | None]  # the SSRF rule for this host and port
    pinned: bool  # the host is a name: libcurl is told its addresses (a literal needs none)
    # the outcome, set by the loop: the body, or why it failed
    body: bytearray = field(default_factory=bytearray)
    error: str | None = None  # a FetchResult reason
    location: str | None = None  # a redirect's Location (the body is not read)


def _ca_options() -> tuple[str | None, str | None]:
    """(CAINFO, CAPATH) as httpx's default context picks them: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi."""
    cert_file, cert_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cert_file and os.path.isfile(cert_file):
        return cert_file, None
    if cert_dir and os.path.isdir(cert_dir):
        return None, cert_dir
    return certifi.where(), None


class CurlLoop:
    """A thread that runs every transfer handed to it; :meth:`run` hands over a batch and waits for it."""

    def __init__(self, max_connections: int, connect_s: float, read_s: float, longest_transfer_s: float = 60.0):
        self._connect_s, self._read_s = connect_s, read_s
        # A transfer's pin must outlive its wait for a free connection: it is loaded when the transfer
        # starts and read when it connects, both before its deadline.
        self._pin_cache_s = math.ceil(longest_transfer_s) + 1
        self._cainfo, self._capath = _ca_options()  # read once, as the fetcher's TLS context was
        self._multi = pycurl.CurlMulti()
        # At most this many connections at once (the fetch concurrency); more transfers wait their turn.
        self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections)
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_connections)  # idle keep-alive connections kept
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[pycurl.Curl, tuple[Transfer, _Batch]] = {}
        self._cancelled = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-http", daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------------------------

    def run(self, transfers: Sequence[Transfer]) -> None:
        """Runs ``transfers`` concurrently; returns when every one has its outcome (each by its deadline)."""
        if not transfers:
            return
        batch = _Batch(len(transfers))
        if self._cancelled.is_set() or self._stopped.is_set():
            for t in transfers:
                t.error = "cancelled"
            return
        self._inbox.put((list(transfers), batch))
        self._wake()
        # Every transfer ends by its deadline or on cancel; should the loop itself have ended (closed, or
        # failed) after this batch was queued, its transfers are marked cancelled here instead.
        while not batch.done.wait(1.0):
            if not self._thread.is_alive():
                self._drain_inbox()

    def cancel(self) -> None:
        """Abort every transfer in flight and refuse new ones (outcome ``cancelled``)."""
        self._cancelled.set()
        self._wake()

    def close(self) -> None:
        self.cancel()
        self._stopped.set()
        self._wake()
        self._thread.join(10)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the loop is gone)

    # -- the loop's thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        """perform() moves every transfer that can move, in one call: the loop takes the GIL a few times per
        round, not once per socket event and header line (a thread that holds the GIL in Python, as the
        Kafka loop does, made each of those wait up to a switch interval)."""
        try:
            while not self._stopped.is_set():
                self._take_inbox()
                if self._cancelled.is_set():
                    self._abort_all()
                if self._active:
                    while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                        pass
                    self._finish_done()
                self._wait()
        except Exception:  # never leave a caller waiting on a dead loop
            log.exception("image_http_loop_failed")
            self._cancelled.set()
        finally:
            self._stopped.set()
            self._abort_all()
            self._drain_inbox()
            self._multi.close()

    def _wait(self) -> None:
        """Until a transfer's socket is ready, libcurl's next timeout, or a wake-up (new work, cancel)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        wait_ms = None
        if self._active:
            readable, writable, exceptional = self._multi.fdset()
            masks: dict[int, int] = {}
            for fds, mask in ((readable, select.POLLIN), (writable, select.POLLOUT), (exceptional, select.POLLPRI)):
                for fd in fds:
                    masks[fd] = masks.get(fd, 0) | mask
            for fd, mask in masks.items():
                poller.register(fd, mask)
            timeout_ms = self._multi.timeout()
            # libcurl lists no socket numbered past FD_SETSIZE: at worst those transfers move every MAX_WAIT_MS
            wait_ms = MAX_WAIT_MS if timeout_ms < 0 else min(timeout_ms, MAX_WAIT_MS)
        poller.poll(wait_ms)

    def _queued(self):
        """(transfers, batch) handed over and not yet taken, oldest first, without waiting."""
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drain_inbox(self) -> None:
        """Marks every queued, never started transfer cancelled (cancelled, or the loop has ended)."""
        for transfers, batch in self._queued():
            for t in transfers:
                t.error = "cancelled"
                batch.one_done()

    def _take_inbox(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        if self._cancelled.is_set():
            self._drain_inbox()
            return
        for transfers, batch in self._queued():
            for t in transfers:
                try:
                    handle = self._handle(t)
                    self._multi.add_handle(handle)
                except Exception:
                    log.warning("image_transfer_not_started", exc_info=True)
                    t.error = "fetch_error"
                    batch.one_done()
                    continue
                self._active[handle] = (t, batch)

    def _finish_done(self) -> None:
        while True:
            queued, ok, failed = self._multi.info_read()
            for handle in ok:
                self._finish(handle, None)
            for handle, code, message in failed:
                self._finish(handle, code)
            if queued == 0:
                break

    def _finish(self, handle: pycurl.Curl, code: int | None) -> None:
        transfer, batch = self._active.pop(handle)
        try:
            if transfer.error is None:
                if code is not None:
                    transfer.error = _reason(code, transfer.deadline)
                else:
                    _judge_response(transfer, handle)
        except Exception:  # one odd response fails its own transfer, never the loop nor its caller
            log.warning("image_response_not_judged", exc_info=True)
            transfer.error = "fetch_error"
        finally:
            self._multi.remove_handle(handle)
            handle.close()
            batch.one_done()  # the caller waits on this count: it must come down on every path

    def _abort_all(self) -> None:
        for handle, (transfer, batch) in list(self._active.items()):
            transfer.error = "cancelled"
            del self._active[handle]
            self._multi.remove_handle(handle)  # closes its connection: nothing more is read or sent
            handle.close()
            batch.one_done()

    def _handle(self, t: Transfer) -> pycurl.Curl:
        h = pycurl.Curl()
        left_ms = max(1, math.ceil((t.deadline - time.monotonic()) * 1000))
        h.setopt(pycurl.URL, t.url)
        if t.pinned:  # the name resolves to the checked addresses only: libcurl asks no resolver
            pins = ",".join(f"[{a}]" if a.version == 6 else str(a) for a in t.addresses)
            # "+": a transient entry of the multi handle's DNS cache, pruned once older than the longest
            # transfer; a plain entry would stay for the process's life, one per host ever fetched. Every
            # transfer loads its own pin again, so an older one is never what a transfer connects by.
            h.setopt(pycurl.RESOLVE, [f"+{t.host}:{t.port}:{pins}"])
        h.setopt(pycurl.DNS_CACHE_TIMEOUT, self._pin_cache_s)  # the cache's age limit, read by every lookup
        h.setopt(pycurl.OPENSOCKETFUNCTION, lambda purpose, address: _open_checked(t, address))
        h.setopt(pycurl.PROXY, "")  # no proxy, whatever the environment says: it would connect for us
        h.setopt(pycurl.NOPROXY, "*")
        h.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        h.setopt(pycurl.FOLLOWLOCATION, 0)  # the fetcher checks every hop itself
        h.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        h.setopt(pycurl.NOSIGNAL, 1)
        # One deadline for connect, TLS, headers and body; the connect cap within it.
        h.setopt(pycurl.TIMEOUT_MS, left_ms)
        h.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, min(left_ms, math.ceil(self._connect_s * 1000))))
        # Nothing received for the read cap (whole seconds: libcurl's unit) ends the transfer too.
        h.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        h.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(self._read_s)))
        h.setopt(pycurl.MAXFILESIZE_LARGE, t.max_bytes)
        if self._cainfo:
            h.setopt(pycurl.CAINFO, self._cainfo)
        if self._capath:
            h.setopt(pycurl.CAPATH, self._capath)
        h.setopt(pycurl.SSL_VERIFYPEER, 1)  # the certificate must chain to a trusted CA ...
        h.setopt(pycurl.SSL_VERIFYHOST, 2)  # ... and name the URL's host
        h.setopt(pycurl.USERAGENT, _USER_AGENT)
        h.setopt(pycurl.HTTPHEADER, _REQUEST_HEADERS)
        h.setopt(pycurl.WRITEFUNCTION, lambda chunk: _on_body(t, chunk))
        return h


class _Batch:
    """Counts a batch's transfers down; the caller waits on ``done``."""

    def __init__(self, count: int):
        self.left = count
        self.done = threading.Event()

    def one_done(self) -> None:
        self.left -= 1  # only the loop's thread counts down
        if self.left <= 0:
            self.done.set()


def _open_checked(t: Transfer, address) -> object:
    """libcurl's socket(2), only for an address the SSRF rule admits for this transfer's host and port:
    whatever libcurl made of the URL, it connects nowhere the guard would refuse."""
    try:
        reason = t.permit(ip_address(str(address.addr[0]).split("%")[0]))
    except (ValueError, IndexError, TypeError):
        reason = "blocked_address"
    if reason:
        t.error = reason
        return pycurl.SOCKET_BAD
    try:
        sock = socket.socket(address.family, address.socktype, address.protocol)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write
    except OSError:
        return pycurl.SOCKET_BAD
    return sock


def _judge_response(t: Transfer, handle: pycurl.Curl) -> None:
    """A completed response: an image to decode, a redirect for the fetcher to check, or the reason not."""
    status = handle.getinfo(pycurl.RESPONSE_CODE)
    if status in REDIRECTS:
        # Location, made absolute against the URL. Header bytes are the server's: read raw, as Latin-1
        # (getinfo decodes UTF-8 and raises on anything else), and judged by the fetcher as any URL.
        location = _header_text(handle.getinfo_raw(pycurl.REDIRECT_URL))
        if location:
            t.location = location
            t.body = bytearray()
            return
    if status != 200:
        t.error = f"http_{status}"
    elif not _header_text(handle.getinfo_raw(pycurl.CONTENT_TYPE)).split(";")[0].strip().lower().startswith("image/"):
        t.error = "not_an_image"


def _header_text(raw: bytes | None) -> str:
    return raw.decode("latin-1") if raw else ""


def _on_body(t: Transfer, chunk: bytes) -> int | None:
    """Bodies are kept up to the cap (a declared length over it is refused before: MAXFILESIZE). The status
    and type are judged once the transfer ends: libcurl allows no question about a transfer under way."""
    if len(t.body) + len(chunk) > t.max_bytes:
        t.error = "too_large"
        return 0  # aborts the transfer: a body is never held past the cap
    t.body += chunk
    return None


def _reason(code: int, deadline: float) -> str:
    if code == _TIMED_OUT or time.monotonic() >= deadline:
        return "timeout"
    if code in _TLS_ERRORS:
        return "tls_error"
    if code in _CONNECT_ERRORS:
        return "connect_error"
    if code == 63:  # CURLE_FILESIZE_EXCEEDED: the declared length is over the cap
        return "too_large"
    return "network_error"
