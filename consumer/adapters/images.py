"""Product image download: SSRF-safe, bounded in bytes, pixels, memory and time, and never raising on bad data.

Image URLs come from sellers, so they are untrusted: only http(s) on ports 80/443 (other ports only
when allow-listed); every resolved address of every hop (redirects are followed by hand, never from
https down to http) must be public unless allow-listed, an IPv4 address embedded in an IPv6 one
(IPv4-mapped, IPv4-compatible, NAT64, 6to4) judged as that IPv4 address; the connection goes to
exactly the addresses that were checked (no second DNS lookup to rebind); the body is streamed up to
a byte cap. HTTP/1.1 is the standard library's ``http.client`` over sockets the guard connected, kept
alive per host; TLS verifies the certificate against the URL's host.

Time: one deadline per fetch (``image_total_timeout_s``) covers DNS, connect, every redirect hop,
headers and body. Names are resolved by the hosts file, then by dnspython's resolver with a lifetime
(what is left of the deadline, at most the connect timeout): no thread waits on a hung lookup. Per-read timeouts alone let a server that drips one byte per second hold a fetch,
and its whole batch, for minutes; here every socket operation waits at most until the deadline.
:meth:`ImageFetcher.cancel` aborts in-flight downloads (their sockets are shut down), so a stopping
service never waits for an image server.

Memory: only the accepted formats are parsed; the pixel count and aspect ratio are checked from the
header; JPEGs are decoded at reduced scale and everything else box-reduced right after decoding to a
few times the model's input (``models.image.shrink_for``); and decoding holds a share of a pool-wide
pixel budget, so a batch of huge images is decoded a few at a time instead of all at full size.
"""
from __future__ import annotations

import ctypes
import http.client
import io
import os
import select
import socket
import ssl
import threading
import time
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Sequence

import dns.exception
import dns.resolver
import httpx
import structlog
from PIL import Image, ImageOps, UnidentifiedImageError

from consumer.adapters.allowlist import AllowRule
from consumer.config import Settings
from models.pixels import draft_for, shrink_for

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 3
# Ports fetched without an allow-list entry naming them: the web's own.
STANDARD_PORTS = frozenset({80, 443})
# What sellers upload; Pillow's other ~40 parsers (PSD, TGA, EPS, ...) are attack surface we do not need.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# Cloud instance-metadata endpoints (AWS, GCP, Azure 169.254.169.254; ECS; AWS IPv6; Alibaba; Oracle)
# and Azure's wire server 168.63.129.16 (a public address every Azure VM reaches: agent, DNS, health):
# refused even when an allow-listed CIDR covers them.
METADATA_ADDRESSES = frozenset(
    ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192",
                            "168.63.129.16")
)
_NAT64 = ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address is the low 32 bits
_IPV4_COMPATIBLE = ip_network("::/96")  # deprecated ::a.b.c.d (also :: and ::1, judged as 0.0.0.0/0.0.0.1)
# Not globally routable though Python's tables call parts of it global (IANA: IETF protocol assignments).
_NOT_GLOBAL = (ip_network("192.0.0.0/24"),)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
HOSTS_FILE = "/etc/hosts"

# After decoding an image this large, hand freed heap memory back to the OS (see _release_freed_memory).
_TRIM_AFTER_PIXELS = 4_000_000
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc
except (OSError, AttributeError):
    _malloc_trim = None


def _release_freed_memory() -> None:
    """glibc keeps freed memory in per-thread arenas: each of 16 fetch threads that once decoded a
    20 MP image would otherwise keep its ~100 MB, so RSS grows with the thread count, not the budget."""
    if _malloc_trim is not None:
        _malloc_trim(0)


# Pillow only warns between MAX_IMAGE_PIXELS and twice that; make it an exception we report as a bomb.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class FetchResult:
    image: Image.Image | None  # RGB
    error: str | None  # short reason when image is None: no_url, blocked_address, timeout, http_404, ...


class _Refused(Exception):
    """A fetch that ends with a known reason (becomes FetchResult.error)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def embedded_ipv4(ip: IPv4Address | IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries, which is where a packet to it ends up: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``). None for an IPv4 address or an IPv6 address without one."""
    if not isinstance(ip, IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPv4Address | IPv6Address) -> bool:
    """Globally routable unicast; an IPv6 address that embeds an IPv4 address must pass as both."""
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    return ip.is_global and not any(ip in net for net in _NOT_GLOBAL) and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or ip in METADATA_ADDRESSES
    )


def address_allowed(rules: Sequence[AllowRule], host: str, ip, port: int) -> str | None:
    """None if (host, ip, port) may be fetched, else the refusal reason (pure; the SSRF rule)."""
    host = host.lower().rstrip(".")
    if ip in METADATA_ADDRESSES or embedded_ipv4(ip) in METADATA_ADDRESSES:
        return "blocked_address"
    # Allow-list entries match the address as resolved: "10.0.0.0/8" does not admit ::ffff:10.0.0.1.
    if any(r.matches(host, ip, port) for r in rules):
        return None
    if not is_public(ip):
        return "blocked_address"
    return None if port in STANDARD_PORTS else "blocked_port"


class _Scope:
    """Deadline and cancellation shared by the fetcher and its connections.

    The deadline is per thread (one fetch runs per worker thread at a time); the sockets of every
    live connection are registered so :meth:`cancel` can shut them down from another thread, which
    wakes a blocked ``recv`` at once.
    """

    def __init__(self):
        self.local = threading.local()
        self.cancelled = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def time_left(self, cap: float | None) -> float | None:
        """Seconds the next socket operation may wait: at most ``cap`` and what is left of the deadline."""
        if self.cancelled.is_set():
            raise _Refused("cancelled")
        deadline = getattr(self.local, "deadline", None)
        if deadline is None:
            return cap
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("image fetch deadline passed")
        return left if cap is None else min(cap, left)

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self.cancelled.is_set():
            _shut_down(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    """Shut a socket down (from any thread): a blocked recv returns, later ones fail."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the base method: also right under TLS
    except (OSError, TypeError):
        pass


class _DeadlineBound:
    """Every receive and send of the socket waits at most until the fetch's deadline (and ``cap``).

    http.client reads through ``recv_into`` (its buffered reader) and writes with ``sendall``; setting
    the timeout before each call is what bounds a server that drips one byte just inside a per-read
    timeout, header line after header line.
    """

    _scope: _Scope
    _cap: float | None

    def bound_by(self, scope: _Scope, cap: float | None) -> None:
        self._scope, self._cap = scope, cap

    def recv_into(self, *args, **kwargs):
        self.settimeout(self._scope.time_left(self._cap))
        return super().recv_into(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self.settimeout(self._scope.time_left(self._cap))
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_DeadlineBound, socket.socket):
    """A TCP socket bound to the fetch's deadline."""


class _DeadlineSSLSocket(_DeadlineBound, ssl.SSLSocket):
    """A TLS socket bound to the fetch's deadline (what the fetcher's SSL context wraps with)."""


class _HostsFile:
    """The hosts file, as getaddrinfo reads it before DNS (``localhost``, Kubernetes' own pod entries);
    re-read when it changes."""

    def __init__(self, path: str = HOSTS_FILE):
        self._path = path
        self._stamp: float | None = None
        self._table: dict[str, list[IPv4Address | IPv6Address]] = {}
        self._lock = threading.Lock()

    def lookup(self, host: str) -> list[IPv4Address | IPv6Address]:
        try:
            stamp = os.stat(self._path).st_mtime
        except OSError:
            return []
        with self._lock:
            if stamp != self._stamp:
                self._table, self._stamp = self._read(), stamp
            return self._table.get(host.lower().rstrip("."), [])

    def _read(self) -> dict[str, list]:
        table: dict[str, list] = {}
        try:
            lines = open(self._path, encoding="utf-8", errors="replace").read().splitlines()
        except OSError:
            return table
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                ip = ip_address(fields[0].split("%")[0])
            except ValueError:
                continue
            for name in fields[1:]:
                table.setdefault(name.lower().rstrip("."), []).append(ip)
        return table


def system_resolver() -> dns.resolver.Resolver:
    """dnspython's resolver configured from /etc/resolv.conf (nameservers, search list, ndots), no cache."""
    try:
        return dns.resolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        log.warning("no DNS configuration (/etc/resolv.conf): image hosts resolve from the hosts file only")
        return dns.resolver.Resolver(configure=False)


class _ConnectFailed(OSError):
    """No checked address of the host accepted the connection."""


class _GuardedConnector:
    """Resolves once (within the deadline), checks every address and port, then connects only to
    those: the connection goes to exactly the addresses that were checked, never through a proxy."""

    def __init__(self, allowed: Sequence[str], scope: _Scope, resolver: dns.resolver.Resolver | None = None):
        self._rules = [AllowRule.parse(entry) for entry in allowed]
        self._scope = scope
        self._resolver = resolver or system_resolver()
        self._hosts = _HostsFile()
        self._tls = httpx.create_ssl_context()  # certifi's CA bundle (or SSL_CERT_FILE), hostname checked
        self._tls.sslsocket_class = _DeadlineSSLSocket

    def _lookup(self, host: str, cap: float | None) -> list[IPv4Address | IPv6Address]:
        """A name's addresses, IPv4 first: a literal as is, else the hosts file, else DNS (A, then AAAA),
        every query bounded by what is left of the deadline (at most ``cap``)."""
        try:
            return [ip_address(host.split("%")[0])]
        except ValueError:
            pass
        if known := self._hosts.lookup(host):
            return sorted(known, key=lambda ip: ip.version)
        found: list = []
        for rdtype in ("A", "AAAA"):
            lifetime = self._scope.time_left(cap)
            try:
                answer = self._resolver.resolve(host, rdtype, search=True, lifetime=lifetime)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
                continue
            except dns.exception.Timeout:
                if found:  # a resolver that drops AAAA queries: the A answer stands
                    break
                raise TimeoutError("DNS resolution ran past its lifetime") from None
            except (dns.exception.DNSException, ValueError, UnicodeError):
                if found:
                    break
                raise _Refused("dns_error") from None
            found += [ip_address(r.address) for r in answer]
        if not found:
            raise _Refused("dns_error")
        return found

    def resolve(self, host: str, port: int, cap: float | None = None) -> list[IPv4Address | IPv6Address]:
        ips = list(dict.fromkeys(self._lookup(host, cap)))
        for ip in ips:
            reason = address_allowed(self._rules, host, ip, port)
            if reason:
                raise _Refused(reason)
        return ips

    def connect(self, scheme: str, host: str, port: int, connect_s: float, read_s: float) -> socket.socket:
        """A connected socket (TLS-wrapped and verified for https), registered with the scope."""
        error: OSError | None = None
        for ip in self.resolve(host, port, connect_s):
            sock = _DeadlineSocket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            self._scope.register(sock)
            try:
                sock.settimeout(self._scope.time_left(connect_s))
                sock.connect((str(ip), port))
            except OSError as exc:
                self._scope.forget(sock)
                sock.close()
                error = exc
                continue
            except BaseException:
                self._scope.forget(sock)
                sock.close()
                raise
            break
        else:
            if isinstance(error, TimeoutError):
                raise error
            raise _ConnectFailed(str(error))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write
        sock.bound_by(self._scope, read_s)
        if scheme != "https":
            return sock
        try:
            sock.settimeout(self._scope.time_left(connect_s))  # the handshake's bound
            tls = self._tls.wrap_socket(sock, server_hostname=host)  # verifies the certificate for the URL's host
        except BaseException:
            self._scope.forget(sock)
            sock.close()
            raise
        self._scope.forget(sock)  # wrap_socket took its file descriptor over
        tls.bound_by(self._scope, read_s)
        self._scope.register(tls)
        return tls


class _Connection(http.client.HTTPConnection):
    """http.client's HTTP/1.1 connection over a socket the guard connected (it never resolves a name).

    Why http.client rather than httpcore: a fetch over it costs less than half the CPU (0.26 against
    0.6 core-ms per image, sequential, keep-alive, local server), CPU the model does not get on a
    2-core machine. It bounds header lines (64 KiB) and their count (100).
    """

    def __init__(self, connector: _GuardedConnector, scope: _Scope, scheme: str, host: str, port: int,
                 timeouts: tuple[float, float]):
        super().__init__(host, port)
        self.default_port = 443 if scheme == "https" else 80  # the Host header omits the scheme's own port
        self._connector, self._scope, self._scheme, self._timeouts = connector, scope, scheme, timeouts
        self.key = (scheme, host, port)

    def connect(self) -> None:
        self.sock = self._connector.connect(self._scheme, self.host, self.port, *self._timeouts)

    def close(self) -> None:
        if self.sock is not None:
            self._scope.forget(self.sock)
        super().close()

    def stale(self) -> bool:
        """An idle plain connection the server has closed (or sent something unasked) is not reused."""
        if self.sock is None:
            return True
        if isinstance(self.sock, ssl.SSLSocket):
            return False  # TLS 1.3 session tickets make it readable; a failed reuse is retried instead
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


# What reusing a keep-alive connection the server has since closed raises (reset, broken pipe, an empty
# status line; under TLS, an unexpected EOF or a close_notify).
_CLOSED_WHILE_IDLE = (ConnectionError, http.client.BadStatusLine, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port), at most ``max_idle`` in all."""

    def __init__(self, connector: _GuardedConnector, scope: _Scope, max_idle: int, timeouts: tuple[float, float]):
        self._connector, self._scope, self._max_idle, self._timeouts = connector, scope, max_idle, timeouts
        self._idle: dict[tuple, list[_Connection]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def _checkout(self, key: tuple) -> _Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
                self._count -= 1
            if not conn.stale():
                return conn
            conn.close()

    def release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and not self._scope.cancelled.is_set():
            with self._lock:
                if self._count < self._max_idle:
                    self._idle.setdefault(conn.key, []).append(conn)
                    self._count += 1
                    return
        conn.close()

    def request(self, url: httpx.URL, headers: dict[str, str]) -> tuple[_Connection, http.client.HTTPResponse]:
        """Sends a GET and reads the response's head; the caller reads the body, then releases."""
        host = url.raw_host.decode("ascii")
        key = (url.scheme, host, url.port or (443 if url.scheme == "https" else 80))
        path = url.raw_path.decode("ascii")
        reused = self._checkout(key)
        for conn in ([reused] if reused else []) + [None]:
            conn = conn or _Connection(self._connector, self._scope, *key, self._timeouts)
            try:
                conn.request("GET", path, headers=headers)
                return conn, conn.getresponse()
            except _CLOSED_WHILE_IDLE:
                conn.close()
                if conn is not reused:
                    raise
                # the server closed an idle keep-alive connection as we reused it: once more, fresh
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
            self._count = 0
        for conn in idle:
            conn.close()


class PixelBudget:
    """A counting semaphore over decoded pixels: at most ``capacity`` pixels are being decoded at once.

    One request never needs more than the whole budget (it is clamped), so any image under the
    per-image cap can always proceed, alone if need be. Waiting ends at a deadline or on cancel.
    """

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self.in_use = 0
        self.peak = 0  # for tests and logs: the most pixels ever held at once
        self._cond = threading.Condition()
        self._cancelled = False

    def acquire(self, pixels: int, deadline: float | None) -> int:
        """Blocks until ``pixels`` (clamped) fit; returns the amount to :meth:`release`."""
        need = min(max(1, pixels), self.capacity)
        with self._cond:
            while self.in_use + need > self.capacity:
                if self._cancelled:
                    raise _Refused("cancelled")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _Refused("timeout")
                self._cond.wait(left)
            self.in_use += need
            self.peak = max(self.peak, self.in_use)
            return need

    def release(self, pixels: int) -> None:
        with self._cond:
            self.in_use -= pixels
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()


def decode_image(
    data: bytes,
    max_pixels: int,
    max_aspect: float,
    target_size: tuple[int, int] | None = None,
    budget: PixelBudget | None = None,
    deadline: float | None = None,
) -> Image.Image:
    """Bytes → RGB image, reduced for a model of ``target_size`` (height, width) when given.

    Size and aspect are checked from the header before anything is decoded; decoding holds its
    (reduced) pixel count from ``budget``; the result is shrunk before the budget is released, so
    only a few times the model's pixels per image outlive the call.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = img.size
        if width * height > max_pixels:
            raise _Refused("decompression_bomb")
        if min(width, height) < 1 or max(width, height) > max_aspect * min(width, height):
            # Padding a 20000x1 strip to the model's aspect is what builds a 533 MP canvas.
            raise _Refused("bad_aspect")
        if target_size is not None:
            img = draft_for(img, target_size)  # JPEG: img.size is now the reduced decode size
        held = budget.acquire(img.size[0] * img.size[1], deadline) if budget else 0
        try:
            img.load()
            if target_size is not None:
                img = shrink_for(img, target_size)
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # Catalogue photos are on white; transparent pixels would otherwise turn black.
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
                return img
            return img.convert("RGB")
        finally:
            if budget:
                budget.release(held)
            if width * height >= _TRIM_AFTER_PIXELS:
                _release_freed_memory()
    except _Refused:
        raise
    except _BOMB:
        raise _Refused("decompression_bomb") from None
    except UnidentifiedImageError:
        raise _Refused("not_an_image") from None
    except Exception:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError...
        raise _Refused("decode_error") from None


class ImageFetcher:
    """Fetches product images concurrently over one pooled client; one FetchResult per URL, in order.

    ``target_size`` (the model's (height, width)) lets decoding stop at a few times the pixels the
    model uses; without it images are returned at full size (still under the pixel cap and budget).
    ``fetch``/``fetch_many`` take the size per call too (the model the batch will be scored with,
    which a hot reload may have changed), so nothing shared is mutated and calls can overlap.
    ``resolver``: the DNS resolver (default: the system's configuration, :func:`system_resolver`).
    """

    def __init__(self, settings: Settings, target_size: tuple[int, int] | None = None, *,
                 resolver: dns.resolver.Resolver | None = None):
        self._max_bytes = settings.image_max_bytes
        self._max_pixels = settings.image_max_pixels
        self._max_aspect = settings.image_max_aspect
        self._total_s = settings.image_total_timeout_s
        self._timeout = (settings.image_connect_timeout_s, settings.image_read_timeout_s)
        self._target_size = tuple(target_size) if target_size else None
        self._budget = PixelBudget(settings.image_decode_budget_pixels)
        self._scope = _Scope()
        workers = max(1, settings.image_fetch_concurrency)
        # No proxy, ever (the connector reads no environment): a proxy would connect on our behalf and
        # bypass the address check. Redirects are followed by hand, each hop checked.
        connector = _GuardedConnector(settings.image_allowed_hosts, self._scope, resolver)
        self._pool = _ConnectionPool(connector, self._scope, workers, self._timeout)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-fetch")
        self._closed = False
        self._stop_by = float("inf")  # set by cancel(grace_s): no fetch runs past it

    @property
    def budget(self) -> PixelBudget:
        return self._budget

    def fetch(self, url: str | None, target_size: tuple[int, int] | None = None) -> FetchResult:
        """One image; ``target_size``: the model's (height, width), None: the one given at construction."""
        size = tuple(target_size) if target_size else self._target_size
        if not url:
            return FetchResult(None, "no_url")
        if self._scope.cancelled.is_set() or time.monotonic() >= self._stop_by:
            return FetchResult(None, "cancelled")
        deadline = min(time.monotonic() + self._total_s, self._stop_by)
        try:
            data = self._download(url, deadline)
            # Waiting for the pixel budget is not bounded by the download deadline: it is our own CPU
            # work, finite (pixel cap x batch), and cancel() still ends the wait at shutdown.
            image = decode_image(data, self._max_pixels, self._max_aspect, size, self._budget)
            return FetchResult(image, None)
        except _Refused as exc:
            return FetchResult(None, "cancelled" if self._scope.cancelled.is_set() else exc.reason)
        except (OSError, http.client.HTTPException) as exc:  # TimeoutError and ssl.SSLError are OSErrors
            if self._scope.cancelled.is_set():
                return FetchResult(None, "cancelled")
            if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                return FetchResult(None, "timeout")
            if isinstance(exc, ssl.SSLError):
                return FetchResult(None, "tls_error")
            return FetchResult(None, "connect_error" if isinstance(exc, _ConnectFailed) else "network_error")
        except Exception:
            if self._scope.cancelled.is_set():
                return FetchResult(None, "cancelled")
            log.warning("image_fetch_failed", url=url[:200], exc_info=True)
            return FetchResult(None, "fetch_error")

    def fetch_many(self, urls: Sequence[str | None], target_size: tuple[int, int] | None = None) -> list[FetchResult]:
        """Every URL concurrently, results in order; ``target_size`` as in :meth:`fetch`."""
        try:
            futures = [self._executor.submit(self.fetch, u, target_size) for u in urls]
        except RuntimeError:  # closed: the service is shutting down
            return [FetchResult(None, "cancelled") for _ in urls]
        out = []
        for fut in futures:
            try:
                out.append(fut.result())
            except CancelledError:
                out.append(FetchResult(None, "cancelled"))
        return out

    def cancel(self, grace_s: float = 0.0) -> None:
        """Abort every download in flight and refuse new ones (safe from any thread or a signal handler).

        With ``grace_s`` (a stopping service), fetches may still finish for that long, so a healthy
        batch keeps its images, then whatever is left is aborted: however many URLs are queued and
        whatever the servers do, fetching is over ``grace_s`` after the call. Aborted fetches end
        with error ``cancelled`` (a connect already under way ends at its connect timeout at most).
        """
        if grace_s > 0:
            self._stop_by = min(self._stop_by, time.monotonic() + grace_s)
            timer = threading.Timer(grace_s, self.cancel)
            timer.daemon = True
            timer.start()
            return
        self._scope.cancel()
        self._budget.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Cancel what is in flight, wait for the workers (now quick), release the connections."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._pool.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _download(self, url: str, deadline: float) -> bytes:
        self._scope.local.deadline = deadline  # every socket operation of this thread now ends by it
        try:
            target = _checked_url(url)
            for _ in range(MAX_REDIRECTS + 1):
                if deadline - time.monotonic() <= 0:
                    raise _Refused("timeout")
                conn, response = self._pool.request(target, _REQUEST_HEADERS)
                reusable = False  # only a connection whose response was read to its end goes back
                try:
                    location = response.getheader("location")
                    if response.status in _REDIRECTS and location:
                        hop = _checked_url(str(target.join(location)))
                        if target.scheme == "https" and hop.scheme == "http":
                            # the rest of the chain (and the image) would travel in clear, and whoever
                            # forged the plain-text hop chooses what comes next
                            raise _Refused("insecure_redirect")
                        target = hop
                        continue
                    if response.status != 200:
                        raise _Refused(f"http_{response.status}")
                    content_type = (response.getheader("content-type") or "").split(";")[0].strip().lower()
                    if not content_type.startswith("image/"):
                        raise _Refused("not_an_image")
                    declared = response.getheader("content-length") or ""
                    if declared.isdigit() and int(declared) > self._max_bytes:
                        raise _Refused("too_large")
                    body = bytearray()
                    while chunk := response.read(_READ_CHUNK):  # chunked or sized; IncompleteRead if cut
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise _Refused("too_large")
                    reusable = not response.will_close
                    return bytes(body)
                finally:
                    self._pool.release(conn, reusable)
            raise _Refused("too_many_redirects")
        finally:
            self._scope.local.deadline = None


# http.client adds Host and "Accept-Encoding: identity" (no compressed bodies to inflate).
_REQUEST_HEADERS = {"Accept": "image/*", "User-Agent": "shelver-image-fetcher"}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024


def _checked_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise _Refused("bad_url") from None
    if parsed.scheme not in ("http", "https"):
        raise _Refused("bad_scheme")
    if not parsed.host:
        raise _Refused("bad_url")
    return parsed


__all__ = [
    "ACCEPTED_FORMATS", "AllowRule", "FetchResult", "ImageFetcher", "PixelBudget", "address_allowed",
    "decode_image", "embedded_ipv4", "is_public", "system_resolver", "MAX_REDIRECTS", "STANDARD_PORTS",
]
