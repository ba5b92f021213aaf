"""Real HTTP servers that misbehave on purpose (for the fetch-deadline tests and benchmarks/hostile_images.py)."""
from __future__ import annotations

import io
import socketserver
import threading

from PIL import Image

HOP_DELAY_S = 1.2  # under the 5 s per-read timeout: only a total deadline stops a chain of these
_buf = io.BytesIO()
Image.new("RGB", (60, 80), (200, 30, 40)).save(_buf, "JPEG")
JPEG = _buf.getvalue()
DRIP_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


class SlowHandler(socketserver.BaseRequestHandler):
    """Minimal HTTP/1.1: /drip drips its headers at 1 byte/s; /hop/N waits, then redirects to /hop/N-1."""

    def handle(self):
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            request += chunk
        path = request.split(b" ", 2)[1].decode()
        self.server.requests.append(path)
        self.server.got_request.set()
        try:
            if path == "/drip":
                for byte in DRIP_HEADERS:
                    self.request.sendall(bytes([byte]))
                    if self.server.stop.wait(1.0):
                        return
            elif path.startswith("/hop/"):
                left = int(path.rsplit("/", 1)[1])
                if self.server.stop.wait(HOP_DELAY_S):
                    return
                if left == 0:
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(JPEG)}\r\n\r\n"
                    self.request.sendall(head.encode() + JPEG)
                else:
                    self.request.sendall(f"HTTP/1.1 302 Found\r\nLocation: /hop/{left - 1}\r\n"
                                         f"Content-Length: 0\r\n\r\n".encode())
            else:
                self.request.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass  # the fetcher hung up: expected


class SlowServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.requests: list[str] = []
        self.got_request = threading.Event()
        self.stop = threading.Event()




def start_slow_server() -> tuple[SlowServer, str]:
    """A running SlowServer on 127.0.0.1 and its base URL; stop with ``stop_slow_server``."""
    srv = SlowServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def stop_slow_server(srv: SlowServer) -> None:
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
