"""The image fetcher's SSRF residue: IPv4 embedded in IPv6, Azure's wire server, https→http redirects,
and DNS bounded by a resolver lifetime and pinned to the checked address, against a DNS server the test
controls (tests/dns_server.py) and real local HTTP(S) servers."""
from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from PIL import Image

from consumer.adapters.allowlist import AllowRule
from consumer.adapters.images import FetchResult, ImageFetcher, address_allowed, embedded_ipv4, is_public
from consumer.config import Settings
from dns_server import DnsServer
from hostile_images import encoded

NAME = "img.shelver.test"
RED, BLUE = encoded(Image.new("RGB", (64, 48), (220, 20, 20)), "JPEG"), encoded(Image.new("RGB", (64, 48), (20, 20, 220)), "JPEG")

# --- IPv4 embedded in IPv6, and 168.63.129.16 (pure) ---------------------------------------------------


@pytest.mark.parametrize("text, inner", [
    ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
    ("::a9fe:a9fe", "169.254.169.254"),  # IPv4-compatible
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
    ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4
    ("2002:0a00:0001:1::5", "10.0.0.1"),
    ("2606:2800:220:1::1", None),
    ("10.0.0.1", None),
])
def test_the_ipv4_address_inside_an_ipv6_address_is_found(text, inner):
    assert embedded_ipv4(ip_address(text)) == (ip_address(inner) if inner else None)


@pytest.mark.parametrize("text", [
    "2002:a00:1::", "2002:a9fe:a9fe::1", "2002:7f00:1::", "2002:c0a8:101::",  # 6to4 of 10/8, metadata, loopback, 192.168
    "::a00:1", "::a9fe:a9fe", "::ffff:a9fe:a9fe", "64:ff9b::a00:1",  # IPv4-compatible, -mapped, NAT64
    "168.63.129.16",  # Azure's wire server: a *public* address every Azure VM can reach
])
def test_embedded_private_addresses_and_the_azure_wire_server_are_not_public(text):
    ip = ip_address(text)
    assert not is_public(ip), text  # the old rule passed every 6to4 and IPv4-compatible address, and 168.63.129.16
    assert address_allowed([], "cdn.example", ip, 443) == "blocked_address"


def test_a_6to4_address_of_a_public_ipv4_address_stays_public():
    assert is_public(ip_address("2002:808:808::1"))  # 8.8.8.8


def test_metadata_addresses_stay_blocked_inside_an_allowed_cidr_whatever_their_spelling():
    rules = [AllowRule.parse(e) for e in ("169.254.0.0/16", "168.63.0.0/16", "::/0")]
    for text in ("169.254.169.254", "168.63.129.16", "::ffff:169.254.169.254", "2002:a9fe:a9fe::",
                 "64:ff9b::a83f:8110"):
        assert address_allowed(rules, "x", ip_address(text), 80) == "blocked_address", text


def test_the_network_policy_excepts_only_what_the_fetcher_refuses_too():
    """deploy/k8s/common/networkpolicy.yaml and the fetcher agree: every excepted range is refused here."""
    policy = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy/k8s/common/networkpolicy.yaml").read_text())
    excepted = [e for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer
                for e in peer["ipBlock"].get("except", [])]
    assert "168.63.129.16/32" in excepted and "2002::/16" in excepted
    for cidr in excepted:
        net = ip_network(cidr)
        for ip in {net.network_address, net[min(1, net.num_addresses - 1)], net[-1]}:
            assert address_allowed([], "x", ip, 443) == "blocked_address", (cidr, ip)


# --- real servers ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.requests.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def _serve(host: str, port: int, body: bytes, tls: ssl.SSLContext | None = None) -> _Server:
    srv = _Server((host, port), _Handler)
    srv.requests, srv.body = [], body
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def two_servers():
    """Red on 127.0.0.1:P (allow-listed), blue on 127.0.0.2:P (same port, not allow-listed)."""
    red = _serve("127.0.0.1", 0, RED)
    port = red.server_port
    try:
        blue = _serve("127.0.0.2", port, BLUE)
    except OSError:
        red.shutdown()
        pytest.skip("port taken on 127.0.0.2")
    yield red, blue, port
    for srv in (red, blue):
        srv.shutdown()
        srv.server_close()


def _fetcher(dns: DnsServer, total_s: float = 5.0, connect_s: float = 2.0) -> ImageFetcher:
    return ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"], image_total_timeout_s=total_s,
                                 image_connect_timeout_s=connect_s, image_fetch_concurrency=2),
                        resolver=dns.resolver())


def _red(result: FetchResult) -> bool:
    return result.error is None and result.image.getpixel((10, 10))[0] > 150


def test_the_connection_goes_to_the_address_that_was_checked_not_to_a_second_answer(two_servers):
    """DNS rebinding: the first answer is allowed, every later one points elsewhere. One lookup, one
    connection, to the checked address."""
    red, blue, port = two_servers
    dns = DnsServer({NAME: lambda n: ["127.0.0.1"] if n == 1 else ["127.0.0.2"]})
    try:
        with _fetcher(dns) as fetcher:
            result = fetcher.fetch(f"http://{NAME}:{port}/a.jpg")
        assert _red(result)
        assert dns.asked(NAME) == ["A", "AAAA"]  # resolved once, both families
        assert red.requests == ["/a.jpg"] and blue.requests == []
    finally:
        dns.close()


def test_a_name_is_asked_again_only_when_its_answer_expires(two_servers):
    """Answers are kept for their TTL (a batch of one host's images asks DNS once), and only checked
    addresses are kept: with TTL 0 the next fetch asks again, and the rebinding answer is refused."""
    red, blue, port = two_servers
    kept = DnsServer({NAME: ["127.0.0.1"]}, ttl=60)
    rebinding = DnsServer({NAME: lambda n: ["127.0.0.1"] if n == 1 else ["127.0.0.2"]}, ttl=0)
    try:
        with _fetcher(kept) as fetcher:
            assert all(_red(r) for r in fetcher.fetch_many([f"http://{NAME}:{port}/a{i}.jpg" for i in range(4)]))
            assert _red(fetcher.fetch(f"http://{NAME}:{port}/b.jpg"))
        assert kept.asked(NAME) == ["A", "AAAA"]
        with _fetcher(rebinding) as fetcher:
            assert _red(fetcher.fetch(f"http://{NAME}:{port}/c.jpg"))
            assert fetcher.fetch(f"http://{NAME}:{port}/d.jpg") == FetchResult(None, "blocked_address")
        assert rebinding.asked(NAME) == ["A", "AAAA", "A", "AAAA"]
        assert blue.requests == []
    finally:
        kept.close()
        rebinding.close()


def test_a_blocked_address_among_the_answers_refuses_the_fetch_before_connecting(two_servers):
    red, _, port = two_servers
    for bad in ("::ffff:169.254.169.254", "2002:a9fe:a9fe::1", "64:ff9b::a00:1", "10.0.0.1", "168.63.129.16"):
        dns = DnsServer({NAME: ["127.0.0.1", bad]})
        try:
            with _fetcher(dns) as fetcher:
                assert fetcher.fetch(f"http://{NAME}:{port}/a.jpg") == FetchResult(None, "blocked_address"), bad
        finally:
            dns.close()
    assert red.requests == []


ODD_HOSTS = ["img%2eshelver.test", "127.1", "2130706433", "0x7f.0.0.1"]


def test_a_host_libcurl_would_read_as_another_host_is_refused_before_any_lookup(two_servers):
    """Regression: libcurl decodes "img%2eshelver.test" to img.shelver.test and reads "127.1" as 127.0.0.1,
    so the guard pinned one name and libcurl resolved another itself, past the guard's resolver and deadline.
    Port 0 was pinned as port 80."""
    red, _, port = two_servers
    dns = DnsServer({h: (lambda n: ["127.0.0.1"]) for h in ODD_HOSTS + [NAME]})
    try:
        with _fetcher(dns, total_s=2.0) as fetcher:
            results = fetcher.fetch_many([f"http://{h}:{port}/a.jpg" for h in ODD_HOSTS] + [f"http://{NAME}:0/a.jpg"])
        assert [r.error for r in results] == ["bad_url"] * 5
        assert [dns.asked(h) for h in ODD_HOSTS + [NAME]] == [[]] * 5 and red.requests == []
    finally:
        dns.close()


def test_an_unknown_name_is_a_dns_error():
    dns = DnsServer({})
    try:
        with _fetcher(dns) as fetcher:
            assert fetcher.fetch("http://nowhere.shelver.test/a.jpg") == FetchResult(None, "dns_error")
    finally:
        dns.close()


def test_a_slow_but_timely_dns_answer_is_used(two_servers):
    red, _, port = two_servers
    dns = DnsServer({NAME: ["127.0.0.1"]}, delay_s=0.3)
    try:
        with _fetcher(dns) as fetcher:
            assert _red(fetcher.fetch(f"http://{NAME}:{port}/a.jpg"))
    finally:
        dns.close()


def _threads_during(call) -> tuple[object, float, int]:
    """Runs ``call`` in this thread; returns its result, its duration and the most threads seen meanwhile."""
    seen, done = [threading.active_count()], threading.Event()

    def sample():
        while not done.wait(0.02):
            seen.append(threading.active_count())

    sampler = threading.Thread(target=sample, daemon=True)
    base = threading.active_count() + 1
    sampler.start()
    t0 = time.monotonic()
    try:
        result = call()
    finally:
        took = time.monotonic() - t0
        done.set()
        sampler.join()
    return result, took, max(seen) - base


def test_a_dns_server_that_never_answers_ends_at_the_deadline_without_a_helper_thread():
    dns = DnsServer({NAME: ["127.0.0.1"]}, silent=True)
    try:
        with _fetcher(dns, total_s=1.0, connect_s=5.0) as fetcher:
            result, took, extra_threads = _threads_during(lambda: fetcher.fetch(f"http://{NAME}/a.jpg"))
        assert result == FetchResult(None, "timeout")
        assert 0.9 <= took < 2.5, took  # the deadline (1.2 s measured), not the resolver's 5 s default lifetime
        assert extra_threads == 0  # the old code started one "image-dns" thread per lookup
        assert dns.asked(NAME)[:1] == ["A"]  # it was asked, and it retried within the lifetime
    finally:
        dns.close()


def test_a_hung_lookup_is_bounded_by_the_connect_timeout_too():
    dns = DnsServer({NAME: ["127.0.0.1"]}, silent=True)
    try:
        with _fetcher(dns, total_s=30.0, connect_s=0.6) as fetcher:
            result, took, _ = _threads_during(lambda: fetcher.fetch(f"http://{NAME}/a.jpg"))
        assert result == FetchResult(None, "timeout") and took < 2.0, took  # 0.6 s measured
    finally:
        dns.close()


def test_a_resolver_that_drops_aaaa_queries_still_resolves_by_a(two_servers):
    red, _, port = two_servers
    dns = DnsServer({NAME: ["127.0.0.1"]}, drop=("AAAA",))
    try:
        with _fetcher(dns, total_s=5.0, connect_s=1.0) as fetcher:
            result, took, _ = _threads_during(lambda: fetcher.fetch(f"http://{NAME}:{port}/a.jpg"))
        assert _red(result) and took < 3.0, took  # the A answer stands once the AAAA lookup's lifetime ends
    finally:
        dns.close()


# --- https → http ------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(loopback_certificate, monkeypatch):
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate the fetcher is made to trust."""
    ctx, cert = loopback_certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx's create_ssl_context reads it
    tls, plain = _serve("127.0.0.1", 0, RED, ctx), _serve("127.0.0.1", 0, BLUE)
    yield f"https://127.0.0.1:{tls.server_port}", f"http://127.0.0.1:{plain.server_port}", plain
    for srv in (tls, plain):
        srv.shutdown()
        srv.server_close()


def test_an_https_image_that_redirects_to_plain_http_is_refused(tls_server):
    https, http, plain = tls_server
    with ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"], image_total_timeout_s=5.0)) as fetcher:
        assert _red(fetcher.fetch(f"{https}/redirect?to=/a.jpg"))  # control: https → https is followed
        assert fetcher.fetch(f"{https}/redirect?to={http}/a.jpg") == FetchResult(None, "insecure_redirect")
        assert plain.requests == []  # the plain-text hop was never requested
        assert fetcher.fetch(f"{http}/redirect?to={https}/a.jpg").error is None  # http → https is fine
