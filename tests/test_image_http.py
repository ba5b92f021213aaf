"""The fetcher's HTTP/1.1 transport (libcurl's multi interface) against real local servers: keep-alive
reuse, a server that drops idle connections, chunked bodies (whole and cut short), TLS certificate
verification, no proxy whatever the environment says, the socket callback's own address check, and the
cap on connections at once."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from ipaddress import ip_address
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from consumer.adapters.http_loop import CurlLoop, Transfer
from consumer.adapters.images import ImageFetcher
from consumer.config import Settings
from hostile_images import encoded

JPEG = encoded(Image.new("RGB", (64, 48), (30, 160, 40)), "JPEG")


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.server.connections.append(self.client_address)
        with self.server.lock:
            self.server.busy += 1
            self.server.most_busy = max(self.server.most_busy, self.server.busy)
        try:
            time.sleep(self.server.delay_s)  # a slow image server: requests overlap
            self._respond()
        finally:
            with self.server.lock:
                self.server.busy -= 1

    def _respond(self):
        if self.path == "/latin1-type.jpg":  # a header byte that is not UTF-8 (0xff), as old servers send
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg; name=\xff.jpg")  # http.server writes Latin-1
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG)
            return
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
    srv.lock, srv.busy, srv.most_busy, srv.delay_s = threading.Lock(), 0, 0, 0.0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def _fetcher(**kw) -> ImageFetcher:
    return ImageFetcher(Settings(**{"image_allowed_hosts": ["127.0.0.1"], "image_total_timeout_s": 5.0, **kw}))


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
    srv.lock, srv.busy, srv.most_busy, srv.delay_s = threading.Lock(), 0, 0, 0.0
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


def test_a_proxy_in_the_environment_is_never_used(keep_alive_server, monkeypatch):
    """A proxy would connect on the fetcher's behalf, to addresses the guard never checked."""
    srv, base = keep_alive_server
    proxy = _Server(("127.0.0.1", 0), _KeepAliveHandler)
    proxy.connections, proxy.drop_idle = [], False
    proxy.lock, proxy.busy, proxy.most_busy, proxy.delay_s = threading.Lock(), 0, 0, 0.0
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        with _fetcher() as fetcher:
            assert fetcher.fetch(f"{base}/a.jpg").error is None
        assert len(srv.connections) == 1 and proxy.connections == []
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_the_socket_callback_refuses_an_address_the_rule_refuses_whatever_the_url_says(keep_alive_server):
    """The last line of the SSRF guard: libcurl opens no socket to an address the rule refuses, even for a
    transfer handed to it directly with that address in its URL."""
    srv, base = keep_alive_server
    loop = CurlLoop(max_connections=2, connect_s=2.0, read_s=2.0)
    try:
        port = srv.server_port
        refused = Transfer(url=f"{base}/a.jpg", host="127.0.0.1", port=port, addresses=[], pinned=False,
                           deadline=time.monotonic() + 5, max_bytes=1 << 20, permit=lambda ip: "blocked_address")
        admitted = Transfer(url=f"{base}/b.jpg", host="127.0.0.1", port=port, addresses=[], pinned=False,
                            deadline=time.monotonic() + 5, max_bytes=1 << 20, permit=lambda ip: None)
        loop.run([refused, admitted])
    finally:
        loop.close()
    assert refused.error == "blocked_address" and not refused.body
    assert admitted.error is None and bytes(admitted.body) == JPEG
    assert len(srv.connections) == 1  # only the admitted transfer reached the server


def test_a_header_that_is_not_utf8_neither_hangs_the_caller_nor_stops_the_fetcher(keep_alive_server):
    """Regression: pycurl's getinfo decodes UTF-8 and raised inside the loop's thread, which left the caller
    waiting for good and every later fetch cancelled."""
    _, base = keep_alive_server
    with _fetcher() as fetcher:
        results: list = []
        caller = threading.Thread(target=lambda: results.extend(
            [fetcher.fetch(f"{base}/latin1-type.jpg"), fetcher.fetch(f"{base}/a.jpg")]), daemon=True)
        caller.start()
        caller.join(30)  # each fetch ends by its 5 s deadline: a caller still waiting after 30 s is stuck
        assert not caller.is_alive(), "the caller is still waiting"
    assert [r.error for r in results] == [None, None]
    assert results[0].image.size == (64, 48)  # read as Latin-1, the type is an image type


def test_a_pin_is_dropped_from_libcurls_cache_after_the_longest_transfer(keep_alive_server):
    """Regression: pins were permanent entries of the multi handle's DNS cache, one per host ever fetched, so
    memory and the cost of every lookup grew for the life of the process."""
    srv, base = keep_alive_server
    srv.drop_idle = True  # every transfer connects anew, so it looks the name up (a reused one would not)
    port = int(base.rsplit(":", 1)[1])
    name = "pinned-once.invalid"
    loop = CurlLoop(max_connections=2, connect_s=1.0, read_s=1.0, longest_transfer_s=0.5)  # entries last 2 s

    def transfer(pinned: bool) -> Transfer:
        return Transfer(url=f"http://{name}:{port}/a.jpg", host=name, port=port, pinned=pinned,
                        addresses=[ip_address("127.0.0.1")] if pinned else [], deadline=time.monotonic() + 1.0,
                        max_bytes=1 << 20, permit=lambda ip: None)
    try:
        first = transfer(pinned=True)
        loop.run([first])
        assert first.error is None and bytes(first.body) == JPEG
        # A transfer without a pin of its own reads the cache: the first one connects by the pin; once the
        # pin has expired the name (.invalid) resolves nowhere.
        errors, pinned_at = [], time.monotonic()
        while time.monotonic() - pinned_at < 15 and (not errors or errors[-1] is None):
            unpinned = transfer(pinned=False)
            loop.run([unpinned])
            errors.append(unpinned.error)
    finally:
        loop.close()
    assert errors[0] is None, errors  # the pin was in the cache at first ...
    assert errors[-1] is not None, "... and still there 15 s later"


def test_a_batch_uses_at_most_the_fetch_concurrency_in_connections_at_once(keep_alive_server):
    srv, base = keep_alive_server
    srv.delay_s = 0.2
    with _fetcher(image_fetch_concurrency=2) as fetcher:
        results = fetcher.fetch_many([f"{base}/a{i}.jpg" for i in range(6)])
    assert [r.error for r in results] == [None] * 6
    assert srv.most_busy == 2  # two at a time: the rest waited for a connection, within the deadline


def test_waiting_for_a_free_connection_counts_against_the_deadline(keep_alive_server):
    srv, base = keep_alive_server
    srv.delay_s = 1.0
    with _fetcher(image_fetch_concurrency=1, image_total_timeout_s=1.5) as fetcher:
        start = time.monotonic()
        results = fetcher.fetch_many([f"{base}/a{i}.jpg" for i in range(3)])
        took = time.monotonic() - start
    assert [r.error for r in results] == [None, "timeout", "timeout"]
    assert took < 2.5, took  # one deadline for all three (1.5 s), not one per turn at the connection


def test_the_fetcher_works_in_a_process_that_loaded_tensorflow_first(keep_alive_server):
    """TensorFlow exports the symbols of its own, older libcurl; pycurl loaded after it must still bind to
    the libcurl its wheel carries (it refused to load before: "link-time version older than compile-time")."""
    _, base = keep_alive_server
    script = (
        "import tensorflow\n"
        "from consumer.adapters.images import ImageFetcher\n"
        "from consumer.config import Settings\n"
        "with ImageFetcher(Settings(image_allowed_hosts=['127.0.0.1'])) as f:\n"
        f"    r = f.fetch('{base}/a.jpg')\n"
        "print(r.error, r.image.size if r.image else None)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "None (64, 48)"
