"""Product image download: SSRF-safe, bounded in bytes, pixels and time, and never raising on bad data.

Image URLs come from sellers, so they are untrusted: only http(s); every resolved address of every hop
(redirects are followed by hand) must be public unless allow-listed; the connection goes to exactly the
addresses that were checked (no second DNS lookup to rebind); the body is streamed up to a byte cap and
the pixel count is checked from the header before anything is decoded.
"""
from __future__ import annotations

import io
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Sequence

import httpcore
import httpx
import structlog
from PIL import Image, ImageOps, UnidentifiedImageError

from consumer.config import Settings

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 3
# Cloud instance-metadata endpoints: refused even when an allow-listed CIDR covers them.
METADATA_ADDRESSES = frozenset(
    ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_NAT64 = ip_network("64:ff9b::/96")
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)

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


def is_public(ip: IPv4Address | IPv6Address) -> bool:
    """Globally routable unicast (IPv4 embedded in IPv6 is judged as the IPv4 address)."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or ip in METADATA_ADDRESSES
    )


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend that resolves once, checks every address, then connects only to those."""

    def __init__(self, allowed: Sequence[str]):
        self._hosts, self._nets = set(), []
        for entry in allowed:
            try:
                self._nets.append(ip_network(entry.strip(), strict=False))
            except ValueError:
                self._hosts.add(entry.strip().lower().rstrip("."))

    def resolve(self, host: str, port: int) -> list[IPv4Address | IPv6Address]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise _Refused("dns_error") from None
        ips = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
        host_allowed = host.lower().rstrip(".") in self._hosts
        for ip in ips:
            allowed = host_allowed or any(ip in net for net in self._nets)
            if ip in METADATA_ADDRESSES or not (is_public(ip) or allowed):
                raise _Refused("blocked_address")
        return ips

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error = None
        for ip in self.resolve(host, port):
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over the guarded backend (httpx exposes no public network-backend hook, so
    this sets the pool HTTPTransport.handle_request uses). TLS still verifies against the URL's host."""

    def __init__(self, backend: _GuardedBackend, connections: int):
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=connections,
            max_keepalive_connections=connections,
            network_backend=backend,
        )


def _decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes → RGB image; the pixel count is checked from the header before decoding."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise _Refused("decompression_bomb")
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            # Catalogue photos are on white; transparent pixels would otherwise turn black.
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
            return img
        return img.convert("RGB")
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

    A whole fetch (all hops and the body) is bounded by connect + read timeout, so a slow-drip server
    cannot hold a batch longer than that (per-read timeouts alone would allow it).
    """

    def __init__(self, settings: Settings):
        self._max_bytes = settings.image_max_bytes
        self._max_pixels = settings.image_max_pixels
        self._budget_s = settings.image_connect_timeout_s + settings.image_read_timeout_s
        workers = max(1, settings.image_fetch_concurrency)
        self._client = httpx.Client(
            transport=_GuardedTransport(_GuardedBackend(settings.image_allowed_hosts), workers),
            timeout=httpx.Timeout(settings.image_read_timeout_s, connect=settings.image_connect_timeout_s),
            follow_redirects=False,
            trust_env=False,  # a proxy would connect on our behalf and bypass the address check
            headers={"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "shelver-image-fetcher"},
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-fetch")

    def fetch(self, url: str | None) -> FetchResult:
        if not url:
            return FetchResult(None, "no_url")
        try:
            return FetchResult(_decode_image(self._download(url), self._max_pixels), None)
        except _Refused as exc:
            return FetchResult(None, exc.reason)
        except httpx.TimeoutException:
            return FetchResult(None, "timeout")
        except httpx.ConnectError:
            return FetchResult(None, "connect_error")
        except httpx.TransportError:
            return FetchResult(None, "network_error")
        except Exception:
            log.warning("image_fetch_failed", url=url[:200], exc_info=True)
            return FetchResult(None, "fetch_error")

    def fetch_many(self, urls: Sequence[str | None]) -> list[FetchResult]:
        return list(self._executor.map(self.fetch, urls))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _download(self, url: str) -> bytes:
        deadline = time.monotonic() + self._budget_s
        target = _checked_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            with self._client.stream("GET", target) as response:
                if response.is_redirect:
                    target = _checked_url(str(response.url.join(response.headers["location"])))
                    continue
                if response.status_code != 200:
                    raise _Refused(f"http_{response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not content_type.startswith("image/"):
                    raise _Refused("not_an_image")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _Refused("too_large")
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _Refused("too_large")
                    if time.monotonic() > deadline:
                        raise _Refused("timeout")
                return bytes(body)
        raise _Refused("too_many_redirects")


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


__all__ = ["FetchResult", "ImageFetcher", "is_public", "MAX_REDIRECTS"]
