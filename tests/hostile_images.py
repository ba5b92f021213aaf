"""Hostile product images, served over real local HTTP (for tests/test_image_memory.py and ad-hoc RSS runs).

Each is small on the wire and huge in pixels: what a seller can send to exhaust the service's memory.
"""
from __future__ import annotations

import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (the pixel data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def hostile_routes() -> dict[str, tuple[str, bytes]]:
    """path -> (content type, body)."""
    strip = Image.new("RGB", (20000, 1), (0, 0, 0))
    big = Image.new("RGB", (5000, 4000), (255, 255, 255))  # 20 MP, a few tens of KB as PNG
    big.paste((200, 30, 40), (1500, 1000, 3500, 3000))
    return {
        "/strip.png": ("image/png", encoded(strip, "PNG")),  # 20000x1: a 533 MP canvas when padded
        "/20mp.png": ("image/png", encoded(big, "PNG", compress_level=9)),
        "/20mp.jpg": ("image/jpeg", encoded(big, "JPEG", quality=80)),
        "/bomb.png": ("image/png", png_header_only(100_000, 100_000)),  # 10 GP claimed
        "/39mp.png": ("image/png", encoded(Image.new("L", (6000, 6500), 255), "PNG", compress_level=9)),  # under the cap
    }


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        content_type, body = self.server.routes.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in self.server.routes else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True


def start_hostile_server() -> tuple[HostileServer, str]:
    srv = HostileServer(("127.0.0.1", 0), _Handler)
    srv.routes = hostile_routes()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: the most resident memory it has had."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")
