"""Product image download: SSRF-safe, bounded in bytes, pixels, memory and time, and never raising on bad data.

Image URLs come from sellers, so they are untrusted: only http(s) on ports 80/443 (other ports only
when allow-listed), with a host libcurl reads as the guard does (no percent-escapes, no numeric IPv4
forms but the dotted quad); every resolved address of every hop (redirects are followed by hand, never from
https down to http) must be public unless allow-listed, an IPv4 address embedded in an IPv6 one
(IPv4-mapped, IPv4-compatible, NAT64, 6to4) judged as that IPv4 address; the connection goes to
exactly the addresses that were checked (no second DNS lookup to rebind: the transfer is pinned to
them, and the socket callback admits no address the rule refuses); the body is streamed up to a byte
cap. The bytes move on libcurl's multi interface, one thread for every transfer
(``consumer.adapters.http_loop``), with connections kept alive per host; TLS verifies the certificate
against the URL's host.

Time: one deadline per fetch (``image_total_timeout_s``) covers DNS, connect, every redirect hop,
headers and body. Names are resolved by the hosts file, then by dnspython's resolver with a lifetime
(what is left of the deadline, at most the connect timeout): no thread waits on a hung lookup. Answers
are kept for their TTL (30 s at most), as a kept-alive connection kept them before. Per-read timeouts
alone let a server that drips one byte per second hold a fetch, and its whole batch, for minutes; here a
transfer ends at the deadline whatever the server does. :meth:`ImageFetcher.cancel` aborts in-flight
downloads, so a stopping service never waits for an image server.

Memory: only the accepted formats are parsed; the pixel count and aspect ratio are checked from the
header; JPEGs are decoded at reduced scale and everything else box-reduced right after decoding to a
few times the model's input (``models.image.shrink_for``); and decoding holds a share of a pool-wide
pixel budget, so a batch of huge images is decoded a few at a time instead of all at full size.
"""
from __future__ import annotations

import ctypes
import io
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Sequence

import dns.exception
import dns.resolver
import httpx
import structlog
from PIL import Image, ImageOps, UnidentifiedImageError

from consumer.adapters.allowlist import AllowRule
from consumer.adapters.http_loop import CurlLoop, Transfer
from consumer.config import Settings
from models.pixels import draft_for, eight_bit, shrink_for

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



# Longest time a name's checked addresses are reused without asking DNS again (the answer's TTL when shorter).
PIN_TTL_S = 30.0


class _Guard:
    """Resolves a name once (within the deadline) and checks every address and port against the rule; the
    fetcher pins the transfer to exactly those addresses."""

    def __init__(self, allowed: Sequence[str], resolver: dns.resolver.Resolver | None = None):
        self.rules = [AllowRule.parse(entry) for entry in allowed]
        self._resolver = resolver or system_resolver()
        self._hosts = _HostsFile()
        self._pins: dict[str, tuple[list, float]] = {}  # name -> (addresses, reuse until)
        self._lock = threading.Lock()

    def needs_dns(self, host: str) -> bool:
        """Whether resolving ``host`` may wait on the network (not a literal, the hosts file or a fresh pin)."""
        return not (_is_literal(host) or self._hosts.lookup(host) or self._fresh_pin(host) is not None)

    def _fresh_pin(self, host: str) -> list | None:
        """The name's checked addresses while their TTL lasts, else None."""
        with self._lock:
            pin = self._pins.get(host)
        return pin[0] if pin is not None and pin[1] > time.monotonic() else None

    def addresses(self, host: str, deadline: float, cap: float | None) -> list[IPv4Address | IPv6Address]:
        """A name's addresses, IPv4 first: a literal as is, else the hosts file, else a fresh pin, else DNS
        (A, then AAAA), every query bounded by what is left of the deadline (at most ``cap``)."""
        if _is_literal(host):
            return [ip_address(host.split("%")[0])]
        if known := self._hosts.lookup(host):
            return list(dict.fromkeys(sorted(known, key=lambda ip: ip.version)))
        if (pinned := self._fresh_pin(host)) is not None:
            return pinned
        found: list = []
        ttl = PIN_TTL_S
        for rdtype in ("A", "AAAA"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("image fetch deadline passed")
            lifetime = left if cap is None else min(cap, left)
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
            if answer.rrset is not None:
                ttl = min(ttl, answer.rrset.ttl)
        if not found:
            raise _Refused("dns_error")
        found = list(dict.fromkeys(found))
        with self._lock:
            now = time.monotonic()
            if len(self._pins) >= 10_000:  # sellers' hosts are many: keep the table bounded
                self._pins = {h: p for h, p in self._pins.items() if p[1] > now}
            self._pins[host] = (found, now + ttl)
        return found

    def refusal(self, host: str, port: int, ips: Sequence[IPv4Address | IPv6Address]) -> str | None:
        """Why (host, port) at these addresses may not be fetched; None if every address passes the rule."""
        for ip in ips:
            reason = address_allowed(self.rules, host, ip, port)
            if reason:
                return reason
        return None

    def permit(self, host: str, port: int):
        """The socket callback's check: an address libcurl is about to connect to must pass the same rule."""
        return lambda ip: address_allowed(self.rules, host, ip, port)


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
            img = eight_bit(ImageOps.exif_transpose(img))  # a 16-bit PNG: scaled, not clipped to white
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


# A batch's bodies are decoded by several threads only from this many bytes on (about 10 ms of JPEG decoding).
PARALLEL_DECODE_BYTES = 1 << 20


class ImageFetcher:
    """Fetches product images concurrently; one FetchResult per URL, in order.

    A batch's transfers are handed to one libcurl loop at once (at most ``image_fetch_concurrency``
    connections), and its bodies are decoded in the calling thread, or, when they are large, by up to
    one thread per core, one chunk each: one hand-off per batch and per chunk, not per image.
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
        self._connect_s = settings.image_connect_timeout_s
        self._target_size = tuple(target_size) if target_size else None
        self._budget = PixelBudget(settings.image_decode_budget_pixels)
        self._cancelled = threading.Event()
        workers = max(1, settings.image_fetch_concurrency)
        self._guard = _Guard(settings.image_allowed_hosts, resolver)
        # No proxy, ever (the loop tells libcurl to use none, whatever the environment says): a proxy would
        # connect on our behalf and bypass the address check. Redirects are followed by hand, each hop checked.
        self._loop = CurlLoop(workers, settings.image_connect_timeout_s, settings.image_read_timeout_s,
                              longest_transfer_s=settings.image_total_timeout_s)
        # DNS lookups of a batch's distinct names, and decoding in chunks (one per core at most).
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-fetch")
        self._decoders = max(1, min(workers, os.cpu_count() or 1))
        self._closed = False
        self._stop_by = float("inf")  # set by cancel(grace_s): no fetch runs past it

    @property
    def budget(self) -> PixelBudget:
        return self._budget

    def fetch(self, url: str | None, target_size: tuple[int, int] | None = None) -> FetchResult:
        """One image; ``target_size``: the model's (height, width), None: the one given at construction."""
        return self.fetch_many([url], target_size)[0]

    def fetch_many(self, urls: Sequence[str | None], target_size: tuple[int, int] | None = None) -> list[FetchResult]:
        """Every URL concurrently, results in order; ``target_size`` as in :meth:`fetch`."""
        size = tuple(target_size) if target_size else self._target_size
        results: list[FetchResult | None] = [None] * len(urls)
        # One deadline per URL, from now: DNS, connect, every hop, headers and body.
        deadline = min(time.monotonic() + self._total_s, self._stop_by)
        targets: dict[int, httpx.URL] = {}
        for i, url in enumerate(urls):
            if not url:
                results[i] = FetchResult(None, "no_url")
            elif self._stopping():
                results[i] = FetchResult(None, "cancelled")
            else:
                try:
                    targets[i] = _checked_url(url)
                except _Refused as exc:
                    results[i] = FetchResult(None, exc.reason)
        bodies: dict[int, bytes] = {}
        try:
            self._download(targets, deadline, results, bodies)
        except Exception:
            log.warning("image_fetch_failed", exc_info=True)
            for i in targets:
                if results[i] is None and i not in bodies:
                    results[i] = FetchResult(None, "cancelled" if self._cancelled.is_set() else "fetch_error")
        for i, result in self._decode(bodies, size).items():
            results[i] = result
        return [r if r is not None else FetchResult(None, "fetch_error") for r in results]

    def _stopping(self) -> bool:
        return self._cancelled.is_set() or time.monotonic() >= self._stop_by

    def _download(self, targets: dict[int, httpx.URL], deadline: float, results: list, bodies: dict) -> None:
        """Every hop of every URL: resolve and check, transfer (the whole round at once), then the redirects."""
        hops = dict.fromkeys(targets, 0)
        pending = list(targets)
        while pending:
            transfers = self._prepare({i: targets[i] for i in pending}, deadline, results)
            self._loop.run(list(transfers.values()))
            pending = []
            for i, t in transfers.items():
                if self._cancelled.is_set():
                    results[i] = FetchResult(None, "cancelled")
                elif t.error is not None:
                    results[i] = FetchResult(None, t.error)
                elif t.location is not None:
                    hops[i] += 1
                    try:
                        hop = _next_hop(targets[i], t.location, hops[i])
                    except _Refused as exc:
                        results[i] = FetchResult(None, exc.reason)
                        continue
                    targets[i] = hop
                    pending.append(i)
                else:
                    bodies[i] = bytes(t.body)

    def _prepare(self, targets: dict[int, httpx.URL], deadline: float, results: list) -> dict[int, Transfer]:
        """A transfer per URL whose host resolves to addresses the rule admits; a FetchResult for the rest."""
        names = {url.raw_host.decode("ascii") for url in targets.values()}
        slow = [n for n in names if self._guard.needs_dns(n)]
        resolved: dict[str, object] = {}
        if len(slow) > 1:  # distinct names wait on DNS side by side; one name (or none) in this thread
            try:
                futures = {n: self._executor.submit(self._lookup, n, deadline) for n in slow}
            except RuntimeError:  # shut down: the fetcher was cancelled
                futures = {}
            for n, fut in futures.items():
                resolved[n] = fut.result()
        transfers: dict[int, Transfer] = {}
        for i, url in targets.items():
            host = url.raw_host.decode("ascii")
            port = url.port or (443 if url.scheme == "https" else 80)
            if self._stopping():
                results[i] = FetchResult(None, "cancelled")
                continue
            if deadline - time.monotonic() <= 0:
                results[i] = FetchResult(None, "timeout")
                continue
            looked = resolved.get(host)
            if looked is None:
                looked = resolved[host] = self._lookup(host, deadline)
            if isinstance(looked, str):
                results[i] = FetchResult(None, looked)
                continue
            reason = self._guard.refusal(host, port, looked)
            if reason:
                results[i] = FetchResult(None, reason)
                continue
            transfers[i] = Transfer(url=str(url), host=host, port=port, addresses=looked, deadline=deadline,
                                    max_bytes=self._max_bytes, permit=self._guard.permit(host, port),
                                    pinned=not _is_literal(host))
        return transfers

    def _lookup(self, host: str, deadline: float) -> list | str:
        """The name's addresses (kept as a pin for its TTL), or the reason it failed."""
        try:
            return self._guard.addresses(host, deadline, self._connect_s)
        except _Refused as exc:
            return "cancelled" if self._cancelled.is_set() else exc.reason
        except TimeoutError:
            return "timeout"

    def _decode(self, bodies: dict[int, bytes], size) -> dict[int, FetchResult]:
        """Bodies → images, in up to one chunk per core (one hand-off per chunk)."""
        items = sorted(bodies.items())
        # Small images decode faster than threads hand work over and take turns at the GIL: in parallel only
        # when there is enough to decode (catalogue thumbnails, 2-5 KB each, stay in this thread).
        parallel = self._decoders if sum(len(b) for _, b in items) >= PARALLEL_DECODE_BYTES else 1
        chunks = [items[k::parallel] for k in range(min(parallel, len(items)))]
        if len(chunks) <= 1:
            return dict(self._decode_chunk(items, size))
        try:
            futures = [self._executor.submit(self._decode_chunk, chunk, size) for chunk in chunks]
        except RuntimeError:  # shut down: the fetcher was cancelled
            return {i: FetchResult(None, "cancelled") for i, _ in items}
        out: dict[int, FetchResult] = {}
        for fut, chunk in zip(futures, chunks):
            try:
                out.update(fut.result())
            except Exception:  # cancelled before it ran
                out.update({i: FetchResult(None, "cancelled") for i, _ in chunk})
        return out

    def _decode_chunk(self, items: list[tuple[int, bytes]], size) -> list[tuple[int, FetchResult]]:
        out = []
        for i, data in items:
            try:
                # Waiting for the pixel budget is not bounded by the download deadline: it is our own CPU
                # work, finite (pixel cap x batch), and cancel() still ends the wait at shutdown.
                image = decode_image(data, self._max_pixels, self._max_aspect, size, self._budget)
                out.append((i, FetchResult(image, None)))
            except _Refused as exc:
                out.append((i, FetchResult(None, "cancelled" if self._cancelled.is_set() else exc.reason)))
            except Exception:
                log.warning("image_decode_failed", exc_info=True)
                out.append((i, FetchResult(None, "fetch_error")))
        return out

    def cancel(self, grace_s: float = 0.0) -> None:
        """Abort every download in flight and refuse new ones (safe from any thread or a signal handler).

        With ``grace_s`` (a stopping service), fetches may still finish for that long, so a healthy
        batch keeps its images, then whatever is left is aborted: however many URLs are queued and
        whatever the servers do, fetching is over ``grace_s`` after the call. Aborted fetches end
        with error ``cancelled``.
        """
        if grace_s > 0:
            self._stop_by = min(self._stop_by, time.monotonic() + grace_s)
            timer = threading.Timer(grace_s, self.cancel)
            timer.daemon = True
            timer.start()
            return
        self._cancelled.set()
        self._loop.cancel()
        self._budget.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Cancel what is in flight, wait for the workers (now quick), release the connections."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._loop.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_literal(host: str) -> bool:
    try:
        ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


def _next_hop(current: httpx.URL, location: str, hops: int) -> httpx.URL:
    """The redirect's target, checked like the first URL; never from https down to http."""
    if hops > MAX_REDIRECTS:
        raise _Refused("too_many_redirects")
    hop = _checked_url(str(current.join(location)))
    if current.scheme == "https" and hop.scheme == "http":
        # the rest of the chain (and the image) would travel in clear, and whoever forged the plain-text
        # hop chooses what comes next
        raise _Refused("insecure_redirect")
    return hop


# A host name the guard and libcurl read alike: letters, digits, "-" and "_" in dot-separated labels
# (IDNs arrive as punycode). Anything else, such as a percent-escape, libcurl decodes into another name.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", re.IGNORECASE)
# A last label that is a number: libcurl reads the whole name as an IPv4 address ("127.1", "0x7f.0.0.1").
_NUMBER_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)


def _checked_url(url: str) -> httpx.URL:
    """The URL as the fetcher will check and pin it, or _Refused. Its host must mean the same to libcurl:
    a name libcurl reads differently would be resolved by libcurl itself, past the guard's resolver and
    deadline (its socket callback would still refuse a blocked address)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise _Refused("bad_url") from None
    if parsed.scheme not in ("http", "https"):
        raise _Refused("bad_scheme")
    if not parsed.host or parsed.port == 0:  # port 0: the fetcher would pin port 80, libcurl would use 0
        raise _Refused("bad_url")
    host = parsed.raw_host.decode("ascii")
    if not _is_literal(host) and (
        not _HOST_NAME.fullmatch(host) or _NUMBER_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1])
    ):
        raise _Refused("bad_url")
    return parsed


__all__ = [
    "ACCEPTED_FORMATS", "AllowRule", "FetchResult", "ImageFetcher", "PixelBudget", "address_allowed",
    "decode_image", "embedded_ipv4", "is_public", "system_resolver", "MAX_REDIRECTS", "STANDARD_PORTS",
]
