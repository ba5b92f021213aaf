"""ImageFetcher against real local HTTP servers: limits, decoding and the SSRF guard (incl. redirects)."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from consumer.config import Settings
from consumer.adapters.images import FetchResult, ImageFetcher, is_public

MAX_BYTES = 50_000
MAX_PIXELS = 1_000_000


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (the pixel data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


JPEG = _encoded(Image.new("RGB", (64, 48), (200, 30, 40)), "JPEG")
ROUTES = {  # path -> (status, content type, body)
    "/ok.jpg": (200, "image/jpeg", JPEG),
    "/gray.png": (200, "image/png", _encoded(Image.new("L", (20, 10), 90), "PNG")),
    "/clear.png": (200, "image/png", _encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")),
    "/page.html": (200, "text/html; charset=utf-8", b"<html>hi</html>"),
    "/bomb.png": (200, "image/png", _png_header_only(2_000, 2_000)),  # over our 1M-pixel test limit
    "/huge.png": (200, "image/png", _png_header_only(100_000, 100_000)),  # over Pillow's own limit
    "/garbage.jpg": (200, "image/jpeg", b"definitely not a jpeg" * 10),
    "/truncated.jpg": (200, "image/jpeg", JPEG[: len(JPEG) // 2]),
    "/big.jpg": (200, "image/jpeg", JPEG + b"\0" * MAX_BYTES),
    "/photo.jpg": (200, "image/jpeg", _encoded(Image.new("RGB", (1600, 1200), (30, 120, 200)), "JPEG")),  # 31 KB
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.end_headers()
        elif parts.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif parts.path == "/slow":
            time.sleep(1.5)
            self._send(*ROUTES["/ok.jpg"])
        elif parts.path == "/stream-big":  # no Content-Length: only the streaming cap can stop it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"\0" * 10_000)
        elif parts.path in ROUTES:
            self._send(*ROUTES[parts.path])
        else:
            self._send(404, "text/plain", b"nope")

    def _send(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the fetcher hangs up on /slow and oversized bodies: broken pipes are expected


def _serve(host: str):
    server = QuietServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server():
    srv = _serve("127.0.0.1")
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def other_server():
    """A second real server on another loopback address: reachable, but not allow-listed by default."""
    srv = _serve("127.0.0.2")
    yield f"http://127.0.0.2:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def make_fetcher(allowed=("127.0.0.1",)) -> ImageFetcher:
    return ImageFetcher(
        Settings(
            image_allowed_hosts=list(allowed), image_connect_timeout_s=1.0, image_read_timeout_s=0.5,
            image_max_bytes=MAX_BYTES, image_max_pixels=MAX_PIXELS, image_fetch_concurrency=4,
        )
    )


@pytest.fixture(scope="module")
def fetcher():
    with make_fetcher() as f:
        yield f


def test_ok_jpeg_decodes_to_rgb(fetcher, server):
    result = fetcher.fetch(f"{server}/ok.jpg")
    assert result.error is None
    assert result.image.mode == "RGB" and result.image.size == (64, 48)
    r, g, b = result.image.getpixel((10, 10))
    assert r > 150 and g < 80 and b < 80


def test_grayscale_and_transparent_become_rgb(fetcher, server):
    gray = fetcher.fetch(f"{server}/gray.png").image
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (90, 90, 90)
    clear = fetcher.fetch(f"{server}/clear.png").image
    assert clear.mode == "RGB" and clear.getpixel((0, 0)) == (255, 255, 255)  # on white, not black


@pytest.mark.parametrize(
    "path, error",
    [
        ("/missing.jpg", "http_404"),
        ("/slow", "timeout"),
        ("/big.jpg", "too_large"),
        ("/stream-big", "too_large"),
        ("/page.html", "not_an_image"),
        ("/garbage.jpg", "not_an_image"),
        ("/truncated.jpg", "decode_error"),
        ("/bomb.png", "decompression_bomb"),
        ("/huge.png", "decompression_bomb"),
        ("/loop", "too_many_redirects"),
    ],
)
def test_failures_are_reported_not_raised(fetcher, server, path, error):
    assert fetcher.fetch(server + path) == FetchResult(None, error)


def test_redirect_within_the_allowed_server_is_followed(fetcher, server):
    result = fetcher.fetch(f"{server}/redirect?to=/ok.jpg")
    assert result.error is None and result.image.size == (64, 48)


def test_redirect_to_a_not_allowed_address_is_blocked(server, other_server):
    url = f"{server}/redirect?to={other_server}/ok.jpg"
    with make_fetcher(["127.0.0.1", "127.0.0.2"]) as both:  # control: the target is really reachable
        assert both.fetch(url).error is None
    with make_fetcher(["127.0.0.1"]) as only_first:
        assert only_first.fetch(url) == FetchResult(None, "blocked_address")
        assert only_first.fetch(f"{server}/redirect?to=file:///etc/passwd").error == "bad_scheme"


@pytest.mark.parametrize(
    "url, error",
    [
        (None, "no_url"),
        ("", "no_url"),
        ("file:///etc/passwd", "bad_scheme"),
        ("ftp://example.com/a.jpg", "bad_scheme"),
        ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
        ("http://[fd00:ec2::254]/", "blocked_address"),
        ("http://100.100.100.200/", "blocked_address"),
        ("http://0.0.0.0/", "blocked_address"),
        ("http://10.1.2.3/", "blocked_address"),
        ("http://[::ffff:127.0.0.1]/", "blocked_address"),
        ("http:///nohost.jpg", "bad_url"),
    ],
)
def test_refused_before_connecting(fetcher, url, error):
    assert fetcher.fetch(url) == FetchResult(None, error)


def test_loopback_server_is_blocked_unless_allow_listed(server, other_server):
    with make_fetcher([]) as strict:
        assert strict.fetch(f"{server}/ok.jpg").error == "blocked_address"
        assert strict.fetch(f"http://localhost:{server.rsplit(':', 1)[1]}/ok.jpg").error == "blocked_address"
    with make_fetcher(["127.0.0.0/8"]) as by_cidr:
        assert by_cidr.fetch(f"{other_server}/ok.jpg").error is None
    with make_fetcher(["localhost"]) as by_name:
        assert by_name.fetch(f"http://localhost:{server.rsplit(':', 1)[1]}/ok.jpg").error is None
        assert by_name.fetch(f"{server}/ok.jpg").error == "blocked_address"  # the IP itself is not listed


def test_metadata_address_stays_blocked_even_inside_an_allowed_cidr():
    with make_fetcher(["169.254.0.0/16"]) as fetcher:
        assert fetcher.fetch("http://169.254.169.254/").error == "blocked_address"


def test_is_public():
    assert is_public(ip_address("93.184.216.34")) and is_public(ip_address("2606:2800:220:1::1"))
    for private in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.1.1", "224.0.0.1",
                    "240.0.0.1", "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"):
        assert not is_public(ip_address(private)), private


def test_fetch_many_keeps_order_and_mixes_failures(fetcher, server):
    urls = [f"{server}/ok.jpg", None, f"{server}/missing.jpg", f"{server}/gray.png", "http://169.254.169.254/"]
    results = fetcher.fetch_many(urls)
    assert [r.error for r in results] == [None, "no_url", "http_404", None, "blocked_address"]
    assert results[0].image.size == (64, 48) and results[3].image.size == (20, 10)


# A model reload may change the input size: decoding must follow the model a batch is scored with.
OLD_MODEL, NEW_MODEL = (32, 32), (300, 300)  # (height, width)
PHOTO_FOR = {OLD_MODEL: (67, 50), NEW_MODEL: (800, 600)}  # 1600x1200 decoded at 1/8 (+ box /3), at 1/2


def sized_fetcher(target_size) -> ImageFetcher:
    return ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"], image_fetch_concurrency=2),
                        target_size=target_size)


def test_fetch_many_decodes_for_the_size_of_the_call_not_the_one_the_fetcher_was_built_with(server):
    url = f"{server}/photo.jpg"
    with sized_fetcher(OLD_MODEL) as fetcher:
        [default] = fetcher.fetch_many([url])
        [bigger] = fetcher.fetch_many([url], target_size=NEW_MODEL)
        [again] = fetcher.fetch_many([url], target_size=OLD_MODEL)
    assert default.image.size == again.image.size == PHOTO_FOR[OLD_MODEL]  # reduced for the small model
    assert bigger.image.size == PHOTO_FOR[NEW_MODEL]  # not the old model's reduced scale


class _Model:
    """What ``scoring.fetch_images`` uses of a categorizer: its input size, and prepare_images (here:
    the decoded images themselves, so the test sees the scale they were decoded at)."""

    def __init__(self, image_size):
        self.image_size = image_size

    def prepare_images(self, images):
        return list(images)


def test_a_batch_is_decoded_for_the_model_it_is_scored_with_after_a_reload(server):
    from consumer import scoring

    url = f"{server}/photo.jpg"
    with sized_fetcher(OLD_MODEL) as fetcher:  # Service.__init__ builds it for the model loaded at start
        [(before, error)], _ = scoring.fetch_images(fetcher, _Model(OLD_MODEL), [url])
        assert error is None and before.size == PHOTO_FOR[OLD_MODEL]
        [(after, error)], _ = scoring.fetch_images(fetcher, _Model(NEW_MODEL), [url])
        assert error is None and after.size == PHOTO_FOR[NEW_MODEL]
