"""The fetcher's HTTP/1.1 transport against real local servers: keep-alive reuse, a server that drops
idle connections, chunked bodies (whole and cut short), and TLS certificate verification."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from consumer.adapters.images import ImageFetcher
from consumer.config import Settings
from hostile_images import encoded

JPEG = encoded(Image.new("RGB", (64, 48), (30, 160, 40)), "JPEG")


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.server.connections.append(self.client_address)
        if self.path == "/chunked.jpg" or self.path == "/cut-chunked.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(JPEG) // 2
            for part in (JPEG[:half], JPEG[half:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                if self.path == "/cut-chunked.jpg":
                    self.close_connection = True  # hang up after the first chunk, no terminating chunk
                    return
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)
        if self.server.drop_idle:
            self.close_connection = True  # closes without saying so (no "Connection: close")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def keep_alive_server():
    srv = _Server(("127.0.0.1", 0), _KeepAliveHandler)
    srv.connections, srv.drop_idle = [], False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _fetcher(**kw) -> ImageFetcher:
    return ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"], image_total_timeout_s=5.0, **kw))


def test_sequential_fetches_from_one_host_reuse_one_keep_alive_connection(keep_alive_server):
    srv, base = keep_alive_server
    with _fetcher() as fetcher:
        results = [fetcher.fetch(f"{base}/a{i}.jpg") for i in range(5)]
    assert [r.error for r in results] == [None] * 5 and results[0].image.size == (64, 48)
    assert len(srv.connections) == 5 and len(set(srv.connections)) == 1  # one client port for all five


def test_a_server_that_drops_idle_connections_costs_a_new_connection_not_a_failed_fetch(keep_alive_server):
    srv, base = keep_alive_server
    srv.drop_idle = True
    with _fetcher() as fetcher:
        results = [fetcher.fetch(f"{base}/a{i}.jpg") for i in range(4)]
    assert [r.error for r in results] == [None] * 4
    assert len(set(srv.connections)) == 4


def test_a_chunked_body_is_reassembled_and_one_cut_short_is_a_network_error(keep_alive_server):
    _, base = keep_alive_server
    with _fetcher() as fetcher:
        whole = fetcher.fetch(f"{base}/chunked.jpg")
        cut = fetcher.fetch(f"{base}/cut-chunked.jpg")
    assert whole.error is None and whole.image.size == (64, 48)
    assert cut.image is None and cut.error == "network_error"


def test_a_connection_refused_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connect is refused
        with _fetcher() as fetcher:  # the allow-list entry "127.0.0.1" admits any port
            assert fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg").error == "connect_error"


@pytest.fixture
def untrusted_tls_server(loopback_certificate, monkeypatch):
    """A real HTTPS server whose self-signed certificate the fetcher has no reason to trust."""
    ctx, cert = loopback_certificate
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    srv = _Server(("127.0.0.1", 0), _KeepAliveHandler)
    srv.connections, srv.drop_idle = [], False
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"https://127.0.0.1:{srv.server_port}", cert
    srv.shutdown()
    srv.server_close()


def test_an_https_server_with_an_untrusted_certificate_is_refused_as_a_tls_error(untrusted_tls_server, monkeypatch):
    srv, base, cert = untrusted_tls_server
    with _fetcher() as fetcher:
        assert fetcher.fetch(f"{base}/a.jpg").error == "tls_error"
    assert srv.connections == []  # no request was sent over the unverified connection
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # control: trusted, the same server serves the image
    with _fetcher() as fetcher:
        results = [fetcher.fetch(f"{base}/a{i}.jpg") for i in range(3)]
    assert [r.error for r in results] == [None] * 3


def test_a_tls_server_that_drops_idle_connections_costs_a_new_connection_not_a_failed_fetch(untrusted_tls_server,
                                                                                            monkeypatch):
    srv, base, cert = untrusted_tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv.drop_idle = True  # an idle TLS connection looks readable (session tickets), so reuse is tried
    with _fetcher() as fetcher:
        results = [fetcher.fetch(f"{base}/a{i}.jpg") for i in range(4)]
    assert [r.error for r in results] == [None] * 4
    assert len(set(srv.connections)) == 4
