"""One deadline per image fetch, cancellation and the port policy, against real slow local HTTP servers.

The servers here misbehave on purpose: response headers dripped at one byte per second, and a chain
of redirects each answered just before a per-read timeout would fire. Before the total deadline the
first held a fetch for minutes and the second for hops x delay.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from consumer.config import Settings
from consumer.adapters.images import FetchResult, ImageFetcher
from slow_http import start_slow_server, stop_slow_server

TESTS = Path(__file__).resolve().parent
DEADLINE_S = 1.5


@pytest.fixture
def slow_server():
    srv, base = start_slow_server()
    yield srv, base
    stop_slow_server(srv)


def make_fetcher(total_s: float = DEADLINE_S, **kw) -> ImageFetcher:
    # Default connect/read timeouts (2 s / 5 s): the dripping server never trips a per-read timeout.
    return ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"], image_total_timeout_s=total_s, **kw))


def timed_fetch(fetcher: ImageFetcher, url: str) -> tuple[FetchResult, float]:
    t0 = time.monotonic()
    result = fetcher.fetch(url)
    return result, time.monotonic() - t0


def test_headers_dripped_at_one_byte_per_second_end_at_the_deadline(slow_server):
    _, base = slow_server
    with make_fetcher() as fetcher:
        result, took = timed_fetch(fetcher, f"{base}/drip")
    assert result == FetchResult(None, "timeout")
    assert took < 3 * DEADLINE_S  # the old per-read timeouts let this run for ~4 min (1 byte/s, 220 bytes)


def test_a_chain_of_slow_redirects_shares_one_deadline(slow_server):
    srv, base = slow_server
    with make_fetcher() as fetcher:
        result, took = timed_fetch(fetcher, f"{base}/hop/3")  # 4 hops x 1.2 s
    assert result == FetchResult(None, "timeout")
    assert srv.requests[:2] == ["/hop/3", "/hop/2"] and len(srv.requests) == 2  # stopped on the 2nd hop
    assert took < 3 * DEADLINE_S


def test_slow_redirects_within_the_deadline_still_succeed(slow_server):
    _, base = slow_server
    with make_fetcher(total_s=10) as fetcher:  # control: the chain itself works
        result = fetcher.fetch(f"{base}/hop/1")
    assert result.error is None and result.image.size == (60, 80)


def test_cancel_aborts_downloads_in_flight(slow_server):
    srv, base = slow_server
    fetcher = make_fetcher(total_s=600)  # no deadline will save us: only the cancel can
    results: list = []
    worker = threading.Thread(target=lambda: results.extend(fetcher.fetch_many([f"{base}/drip"] * 3)))
    worker.start()
    assert srv.got_request.wait(30)
    fetcher.close()  # what the service's shutdown calls
    worker.join(10)
    assert not worker.is_alive()
    assert results == [FetchResult(None, "cancelled")] * 3


def test_cancel_with_grace_lets_fetches_run_until_the_grace_ends(slow_server):
    srv, base = slow_server
    with make_fetcher(total_s=600) as fetcher:
        results: list = []
        worker = threading.Thread(target=lambda: results.extend(fetcher.fetch_many([f"{base}/drip"])))
        worker.start()
        assert srv.got_request.wait(30)
        fetcher.cancel(grace_s=0.5)
        worker.join(10)
        assert not worker.is_alive() and results[0].image is None
        assert fetcher.fetch(f"{base}/drip") == FetchResult(None, "cancelled")  # nothing new starts


# --- ports --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, rule",
    [
        ("127.0.0.1", (None, ip_network("127.0.0.1/32"), None)),
        ("127.0.0.1:8080", (None, ip_network("127.0.0.1/32"), 8080)),
        ("[::1]:8443", (None, ip_network("::1/128"), 8443)),
        ("10.0.0.0/8", (None, ip_network("10.0.0.0/8"), None)),
        ("Images.Local.", ("images.local", None, None)),
        ("images.local:81", ("images.local", None, 81)),
    ],
)
def test_allow_list_entries_parse(entry, rule):
    from consumer.adapters.allowlist import AllowRule

    assert AllowRule.parse(entry) == AllowRule(*rule)


def test_bad_port_in_allow_list_entry_is_an_error():
    from consumer.adapters.allowlist import AllowRule

    with pytest.raises(ValueError, match="bad port"):
        AllowRule.parse("images.local:http")
    with pytest.raises(ValueError, match="bad port"):  # at start-up, before any model loads
        Settings(image_allowed_hosts=["127.0.0.1:99999"])


def test_only_ports_80_and_443_unless_an_entry_names_the_port():
    from consumer.adapters.images import AllowRule, address_allowed

    public = ip_address("93.184.216.34")
    loop = ip_address("127.0.0.1")
    assert address_allowed([], "cdn.example", public, 443) is None
    assert address_allowed([], "cdn.example", public, 80) is None
    assert address_allowed([], "cdn.example", public, 8080) == "blocked_port"
    assert address_allowed([], "cdn.example", public, 22) == "blocked_port"
    assert address_allowed([AllowRule.parse("cdn.example:8080")], "cdn.example", public, 8080) is None
    assert address_allowed([AllowRule.parse("cdn.example:8080")], "cdn.example", public, 8081) == "blocked_port"
    assert address_allowed([AllowRule.parse("127.0.0.1")], "127.0.0.1", loop, 39999) is None  # any port
    assert address_allowed([AllowRule.parse("127.0.0.1:8080")], "127.0.0.1", loop, 39999) == "blocked_address"
    assert address_allowed([], "x", ip_address("169.254.169.254"), 80) == "blocked_address"


def test_port_entries_against_a_real_server(slow_server):
    _, base = slow_server
    port = int(base.rsplit(":", 1)[1])
    with ImageFetcher(Settings(image_allowed_hosts=[f"127.0.0.1:{port}"], image_total_timeout_s=10)) as exact:
        assert exact.fetch(f"{base}/hop/0").error is None
    with ImageFetcher(Settings(image_allowed_hosts=[f"127.0.0.1:{port + 1}"], image_total_timeout_s=10)) as other:
        assert other.fetch(f"{base}/hop/0") == FetchResult(None, "blocked_address")


# --- the service: SIGTERM while every image server stalls ------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_exits_promptly_while_stuck_on_a_dripping_image_server(kafka_bootstrap, topic_factory, slow_server):
    from consumer.cli.sample import publish
    from schemas import ProductEvent

    srv, base = slow_server
    s = Settings(bootstrap_servers=kafka_bootstrap, group_id=f"shelver-test-{uuid.uuid4().hex[:8]}",
                 input_topic=topic_factory(1, "in"), replay_topic=None, output_topic=topic_factory(1, "out"),
                 dlq_topic=topic_factory(1, "dlq"), max_batch_size=8, max_batch_wait_ms=50)
    now = datetime.now(timezone.utc)
    # 40 products, every image on the stalling server: 5 batches, 40 fetches for 16 workers.
    publish(s, [ProductEvent(product_id=f"d{i}", title="Red summer dress", image_url=f"{base}/drip",
                             event_time=now) for i in range(40)])
    env = {**os.environ, "SHELVER_LOG_LEVEL": "WARNING", "SHELVER_IMAGE_ALLOWED_HOSTS": json.dumps(["127.0.0.1"])}
    for name in ("bootstrap_servers", "group_id", "input_topic", "output_topic", "dlq_topic",
                 "max_batch_size", "max_batch_wait_ms"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    env["SHELVER_REPLAY_TOPIC"] = ""
    proc = subprocess.Popen([sys.executable, str(TESTS / "consumer_main.py"), "consume"], env=env)
    try:
        assert srv.got_request.wait(90), "the service never fetched an image"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)  # the old code waited ~2 min per stalled fetch
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0
