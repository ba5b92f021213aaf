"""`shelver review` against the real broker, served by a real uvicorn server on a free port.

Review records are written to a real review topic pointing at real product events on a real input
topic; the corrections the console publishes are read back from the real corrections topic.
"""
from __future__ import annotations

import base64
import re
import socket
import threading
import uuid
from datetime import datetime, timezone

import httpx
import pytest
import uvicorn
from confluent_kafka import Producer

from consumer.review.app import create_app
from consumer.review.auth import Authenticator, hash_password
from consumer.review.queue import ReviewQueue
from consumer.review.stats import Artifact, Tally, review_lag
from kafka_helpers import read_topic, wait_for
from schemas import CategoryAssigned, CategoryCorrected, ProductEvent
from schemas.wire import make_codec

pytestmark = pytest.mark.kafka

USERS = {"alice": hash_password("alice-pw", n=2**10), "bob": hash_password("bob-pw", n=2**10)}


def basic(name: str, password: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password or name + '-pw'}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Console:
    """The review app with its queue and tally, served by uvicorn in a thread."""

    def __init__(self, settings, users=USERS, trusted_header: str = "", lease_s: float = 300.0,
                 max_items: int | None = None):
        self.settings = settings
        self.queue = ReviewQueue(settings, lease_s=lease_s, max_items=max_items).start()
        self.tally = Tally(settings, Artifact(settings.resolved_artifact_dir()))
        self.tally.start()
        app = create_app(settings, self.queue, self.tally, Authenticator(users, trusted_header))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn to start")
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(15)
        self.tally.stop()
        self.queue.close()

    def page(self, who: str) -> str:
        r = self.http.get("/", headers=basic(who))
        assert r.status_code == 200, r.text
        return r.text

    def wait_item(self, who: str, timeout: float = 60.0) -> tuple[str, str]:
        """(item id, the page) once the queue shows ``who`` an item."""
        def shown():
            text = self.page(who)
            m = re.search(r'data-item="([0-9]+-[0-9]+)"', text)
            return (m.group(1), text) if m else None
        return wait_for(shown, timeout, f"an item for {who}")

    def post(self, who: str, item: str, action: str = "decide", **form) -> httpx.Response:
        text = self.page(who)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', text).group(1)
        return self.http.post(f"/items/{item}/{action}", data={"csrf": token, **form}, headers=basic(who))


def product_of(page: str) -> str:
    return re.search(r"<dt>Product</dt><dd>([^<]+)</dd>", page).group(1)


@pytest.fixture
def review_settings(settings, topic_factory):
    return settings(review_topic=topic_factory(1, "review"), corrections_topic=topic_factory(1, "corr"),
                    taxonomy_topic=topic_factory(1, "tax"), review_group_id=f"review-{uuid.uuid4().hex[:8]}")


def publish_for_review(s, n: int, prefix: str = "r", review_partitions: int = 1) -> list[str]:
    """n product events on the input topic and, for each, a review record pointing at it."""
    codec = make_codec(None)
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    now = datetime.now(timezone.utc)
    placed: dict[str, tuple[int, int]] = {}

    def delivered(err, msg):
        assert err is None, err
        placed[msg.key().decode()] = (msg.partition(), msg.offset())

    ids = [f"{prefix}{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for i, pid in enumerate(ids):
        event = ProductEvent(product_id=pid, title=f"Striped cotton shirt {i}", description=f"Long sleeve, size {i}",
                             image_url=f"http://127.0.0.1:9/{i}.jpg", event_time=now)
        producer.produce(s.input_topic, codec.encode(event.to_avro(), "product_event", s.input_topic), pid.encode(),
                         on_delivery=delivered, partition=i % 3)
    producer.flush(30)
    for i, pid in enumerate(ids):
        part, off = placed[pid]
        rec = CategoryAssigned(product_id=pid, category="DRESS", kl=0.9, alternatives=[
            {"category": "TOPS", "kl": 1.0}, {"category": "SKIRT", "kl": 1.3}], abstained=False, image_used=False,
            model_version="v2-20261124", taxonomy_version="marketplace-v1", source_topic=s.input_topic,
            source_partition=part, source_offset=off, processed_at=now, confidence=0.41, needs_review=True)
        producer.produce(s.review_topic, codec.encode(rec.to_avro(), "category_assigned", s.review_topic), pid.encode(),
                         partition=i % review_partitions)
    producer.flush(30)
    return ids


def corrections(s, expected: int) -> list[CategoryCorrected]:
    codec = make_codec(None)
    return [CategoryCorrected.from_avro(codec.decode(m.value(), "category_corrected", m.topic()))
            for m in read_topic(s, s.corrections_topic, expected, timeout=60, settle=1.0)]


def test_unauthenticated_or_forged_posts_publish_nothing_and_the_server_sets_the_reviewer(review_settings):
    s = review_settings
    ids = publish_for_review(s, 2)
    console = Console(s)
    try:
        item, page = console.wait_item("alice")
        assert product_of(page) in ids and "Striped cotton shirt" in page and "Long sleeve" in page
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        # not authenticated, or a wrong password: 401 with a basic-auth challenge, for pages and posts
        for headers in ({}, basic("alice", "wrong"), basic("mallory", "x"), {"Authorization": "Bearer x"}):
            r = console.http.get("/", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            r = console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "TOPS"}, headers=headers)
            assert r.status_code == 401
        # authenticated but no CSRF token, another reviewer's token, or a foreign Origin: 403
        assert console.http.post(f"/items/{item}/decide", data={"category": "TOPS"}, headers=basic("alice")).status_code == 403
        bob_token = re.search(r'name="csrf" value="([0-9a-f]+)"', console.page("bob")).group(1)
        assert console.http.post(f"/items/{item}/decide", data={"csrf": bob_token, "category": "TOPS"},
                                 headers=basic("alice")).status_code == 403
        assert console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "TOPS"},
                                 headers={**basic("alice"), "Origin": "http://evil.example"}).status_code == 403
        # the one good post names another reviewer in the form: ignored
        r = console.post("alice", item, category="TOPS", reviewer="mallory")
        assert r.status_code == 303
        got = corrections(s, 1)
        # one partition: anything the refused posts had published would be read before this record
        assert len(got) == 1
        assert got[0].reviewer == "alice" and got[0].category == "TOPS" and got[0].product_id == product_of(page)
        assert got[0].model_version == "v2-20261124" and got[0].text.startswith("Striped cotton shirt")
        assert got[0].source_distribution is None
    finally:
        console.close()


def test_two_reviewers_never_hold_the_same_item_and_accept_sends_the_models_category(review_settings):
    s = review_settings
    ids = publish_for_review(s, 3)
    console = Console(s)
    try:
        wait_for(lambda: console.queue.snapshot()["held"] == 3, 60, "three items held")
        a, a_page = console.wait_item("alice")
        b, b_page = console.wait_item("bob")
        assert a != b and product_of(a_page) != product_of(b_page)
        assert console.wait_item("alice")[0] == a  # a reviewer keeps their item until deciding it
        r = console.post("bob", a, category="SKIRT")  # not bob's
        assert r.status_code == 409 and "not yours" in r.text
        assert console.post("alice", a, category="").status_code == 303  # accept
        assert console.post("bob", b, action="skip").status_code == 303
        c, c_page = console.wait_item("bob")  # the third item; bob skipped b, so he does not get it again
        assert c not in (a, b)
        assert console.wait_item("alice")[0] == b  # the skipped item went back to the others
        got = corrections(s, 1)
        assert [(x.product_id, x.category, x.reviewer) for x in got] == [(product_of(a_page), "DRESS", "alice")]
        assert set(ids) == {product_of(a_page), product_of(b_page), product_of(c_page)}
    finally:
        console.close()


def test_a_reviewer_who_skipped_every_held_item_gets_them_again_and_the_queue_moves_on(review_settings):
    """Regression: skipped items stay held, so once a reviewer had skipped as many as the queue holds they got
    nothing more, and the full queue read nothing new."""
    s = review_settings
    publish_for_review(s, 2)
    console = Console(s, max_items=2)
    try:
        wait_for(lambda: console.queue.snapshot()["held"] == 2, 60, "two items held (the cap)")
        first, first_page = console.wait_item("bob")
        assert console.post("bob", first, action="skip").status_code == 303
        second, _ = console.wait_item("bob")
        assert second != first
        assert console.post("bob", second, action="skip").status_code == 303
        assert console.wait_item("bob")[0] == first  # nothing else is free: the oldest skipped comes back
        assert console.post("bob", first, category="").status_code == 303
        later = publish_for_review(s, 1, prefix="later")
        wait_for(lambda: console.queue.snapshot()["held"] == 2, 60, "a new item read once there was room")
        third, third_page = console.wait_item("bob")
        assert third not in (first, second)  # an item bob has not skipped comes before the one he skipped
        assert product_of(third_page) == later[0]
        assert [x.product_id for x in corrections(s, 1)] == [product_of(first_page)]
    finally:
        console.close()


def test_a_review_record_pointing_at_another_products_event_shows_no_text_and_its_correction_carries_none(
        review_settings):
    """Regression: the event at the review record's source offset was taken as the product's whatever its id
    (a recreated source topic holds other products at the same offsets), so the correction carried another
    product's text under this product's id, and every instance learned from that text."""
    s = review_settings
    [real] = publish_for_review(s, 1)
    [rec_msg] = read_topic(s, s.review_topic, 1)
    codec = make_codec(None)
    ghost = CategoryAssigned.from_avro(codec.decode(rec_msg.value(), "category_assigned", s.review_topic))
    ghost = ghost.model_copy(update={"product_id": "ghost-1"})  # same source offset, another product
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    producer.produce(s.review_topic, codec.encode(ghost.to_avro(), "category_assigned", s.review_topic), b"ghost-1")
    producer.flush(30)
    console = Console(s)
    try:
        wait_for(lambda: console.queue.snapshot()["held"] == 2, 60, "two items held")
        first, first_page = console.wait_item("alice")
        assert product_of(first_page) == real and "Striped cotton shirt" in first_page
        assert console.post("alice", first, category="").status_code == 303
        second, page = console.wait_item("alice")
        assert product_of(page) == "ghost-1" and "no longer available" in page and "Striped cotton" not in page
        assert console.post("alice", second, category="").status_code == 303
        got = {c.product_id: c for c in corrections(s, 2)}
        assert got[real].text.startswith("Striped cotton shirt") and got["ghost-1"].text is None
    finally:
        console.close()


def test_restart_mid_queue_neither_repeats_nor_loses_a_decision(review_settings):
    s = review_settings
    ids = publish_for_review(s, 6)
    console = Console(s)
    decided: dict[str, str] = {}
    try:
        wait_for(lambda: console.queue.snapshot()["held"] == 6, 60, "six items held")
        first, first_page = console.wait_item("alice")  # the oldest: stays in progress, unfinished
        for _ in range(3):  # bob finishes three items above it (committed through the commit metadata)
            item, page = console.wait_item("bob")
            assert console.post("bob", item, category="TOPS").status_code == 303
            decided[product_of(page)] = "TOPS"
        assert product_of(first_page) not in decided
        # 6 - 3 finished, though the committed position is still the first offset
        wait_for(lambda: (review_lag(s) or {}).get("total") == 3, 30, "a review lag of 3")
    finally:
        console.close()
    console = Console(s)  # same group: a restart
    try:
        wait_for(lambda: console.queue.snapshot()["held"] == 3, 60, "the three unfinished items held")
        seen = set()
        while True:
            r = console.http.get("/", headers=basic("alice"))
            m = re.search(r'data-item="([0-9]+-[0-9]+)"', r.text)
            if not m:
                break
            pid = product_of(r.text)
            assert pid not in decided, f"{pid} was finished before the restart and is shown again"
            seen.add(pid)
            assert console.post("alice", m.group(1), category="SKIRT").status_code == 303
            decided[pid] = "SKIRT"
        assert product_of(first_page) in seen and len(seen) == 3
        got = corrections(s, 6)
        assert sorted(x.product_id for x in got) == sorted(ids)  # each product decided exactly once
        assert {x.product_id: x.category for x in got} == decided
        assert wait_for(lambda: (review_lag(s) or {}).get("total") == 0, 30, "no review lag")
    finally:
        console.close()


def test_dashboard_and_taxonomy_pages_show_the_decisions(review_settings):
    s = review_settings
    publish_for_review(s, 2)
    console = Console(s)
    try:
        a, _ = console.wait_item("alice")
        assert console.post("alice", a, category="").status_code == 303  # the model was right
        b, _ = console.wait_item("bob")
        assert console.post("bob", b, category="SKIRT").status_code == 303  # the model was wrong

        def dashboard():
            r = console.http.get("/dashboard", headers=basic("alice"))
            assert r.status_code == 200
            return r.text if '<p class="big" id="decisions">2</p>' in r.text else None
        text = wait_for(dashboard, 30, "both decisions on the dashboard")
        assert '<p class="big" id="lag">0</p>' in text
        assert text.count("<svg") == 5
        assert "<td>DRESS</td><td>2</td><td>50%</td>" in text  # reviewed twice, right once
        assert ">alice</text>" in text and ">bob</text>" in text
        assert "no result yet" in text  # nothing on the output topic in this test
        tax = console.http.get("/taxonomy", headers=basic("bob"))
        assert tax.status_code == 200 and "marketplace-v1" in tax.text and "SWIMWEAR" not in tax.text
        assert tax.text.count('<th scope="row">') == 12 and "Tshirts" in tax.text
        assert console.http.get("/dashboard").status_code == 401
        assert console.http.get("/healthz").text == "ok"
        assert console.http.get("/static/htmx.min.js").status_code == 200
    finally:
        console.close()


def test_the_dashboard_counts_only_the_newest_products_it_may_keep(review_settings):
    s = review_settings.model_copy(update={"review_dashboard_max_products": 1})
    publish_for_review(s, 2)
    console = Console(s)
    try:
        for who, category in (("alice", "TOPS"), ("bob", "SKIRT")):
            item, _ = console.wait_item(who)
            assert console.post(who, item, category=category).status_code == 303
        tally = console.tally

        def kept() -> list[str]:
            with tally._lock:
                return [d.category for d in tally.corrections.values()]
        wait_for(lambda: "SKIRT" in kept(), 30, "the tally to read bob's decision, the newer one")
        assert kept() == ["SKIRT"]  # alice's, the older, left the tally's memory (kept before: both)
        with tally._lock:
            assert len(tally.model_choice) == 1
        tally.summary(max_age_s=0)  # the page below shows this summary (cached for 2 s)
        text = console.http.get("/dashboard", headers=basic("alice")).text
        assert '<p class="big" id="decisions">1</p>' in text
    finally:
        console.close()


def test_trusted_proxy_header_only_when_switched_on(review_settings):
    s = review_settings
    publish_for_review(s, 1)
    console = Console(s, users={}, trusted_header="X-Forwarded-User")
    try:
        assert console.http.get("/").status_code == 401
        r = console.http.get("/", headers={"X-Forwarded-User": "dana"})
        assert r.status_code == 200 and '<strong id="reviewer">dana</strong>' in r.text
    finally:
        console.close()
    console = Console(s)  # basic auth: the header is not believed
    try:
        assert console.http.get("/", headers={"X-Forwarded-User": "alice"}).status_code == 401
    finally:
        console.close()


def test_behind_a_proxy_that_rewrites_host_a_post_from_the_public_origin_is_accepted_and_others_are_refused(
        review_settings):
    # The proxy serves https://review.example.com and forwards with its upstream's Host (127.0.0.1:port);
    # before the setting, every browser post there was refused (Origin never matched Host).
    s = review_settings.model_copy(update={"review_public_origin": "https://review.example.com"})
    publish_for_review(s, 1)
    console = Console(s, users={}, trusted_header="X-Forwarded-User")
    try:
        who = {"X-Forwarded-User": "dana"}

        def shown():
            text = console.http.get("/", headers=who).text
            m = re.search(r'data-item="([0-9]+-[0-9]+)"', text)
            return (m.group(1), text) if m else None

        item, page = wait_for(shown, 60, "an item for dana")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        for origin in (console.base, "http://review.example.com", "https://evil.example"):  # Host's, wrong scheme, foreign
            r = console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "TOPS"},
                                  headers={**who, "Origin": origin})
            assert r.status_code == 403, origin
        r = console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "TOPS"},
                              headers={**who, "Origin": "https://review.example.com"})
        assert r.status_code == 303
        (got,) = corrections(s, 1)  # one partition: a refused post would have published before it
        assert got.reviewer == "dana" and got.category == "TOPS"
    finally:
        console.close()


def test_an_expired_lease_moves_the_item_and_the_old_holder_cannot_decide_it(review_settings):
    s = review_settings
    publish_for_review(s, 1)
    console = Console(s, lease_s=1.0)
    try:
        item, page = console.wait_item("alice")
        assert 'data-item=""' in console.page("bob")  # the only item is alice's while her lease runs
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        assert console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "SPACESHIPS"},
                                 headers=basic("alice")).status_code == 422  # not a category: nothing sent
        # alice leaves it open past the lease: bob gets it, and alice's late decision is refused
        assert wait_for(lambda: console.wait_item("bob")[0] == item, 30, "the item to move to bob")
        r = console.http.post(f"/items/{item}/decide", data={"csrf": token, "category": "TOPS"}, headers=basic("alice"))
        assert r.status_code == 409
        assert console.post("bob", item, category="SKIRT").status_code == 303
        got = corrections(s, 1)
        assert [(c.category, c.reviewer) for c in got] == [("SKIRT", "bob")]
    finally:
        console.close()


def test_two_consoles_in_one_group_split_the_partitions(settings, topic_factory):
    s = settings(review_topic=topic_factory(2, "review"), corrections_topic=topic_factory(1, "corr"),
                 taxonomy_topic=topic_factory(1, "tax"), review_group_id=f"review-{uuid.uuid4().hex[:8]}")
    publish_for_review(s, 8, review_partitions=2)
    one = Console(s)
    two = None
    try:
        wait_for(lambda: one.queue.snapshot()["partitions"] == [0, 1], 60, "the first console to hold both")
        two = Console(s)
        wait_for(lambda: len(one.queue.snapshot()["partitions"]) == 1 and len(two.queue.snapshot()["partitions"]) == 1,
                 90, "a rebalance giving each console one partition")
        assert set(one.queue.snapshot()["partitions"]) | set(two.queue.snapshot()["partitions"]) == {0, 1}
        wait_for(lambda: one.queue.snapshot()["held"] == 4 and two.queue.snapshot()["held"] == 4, 60,
                 "each console to hold its partition's four items")
        seen: dict[str, str] = {}
        for console, who in ((one, "alice"), (two, "bob")):
            while True:
                r = console.http.get("/", headers=basic(who))
                m = re.search(r'data-item="([0-9]+)-[0-9]+"', r.text)
                if not m:
                    break
                assert int(m.group(1)) in console.queue.snapshot()["partitions"]
                pid = product_of(r.text)
                assert pid not in seen  # no item is offered by both consoles
                seen[pid] = who
                item = re.search(r'data-item="([0-9]+-[0-9]+)"', r.text).group(1)
                assert console.post(who, item, category="TOPS").status_code == 303
        assert len(seen) == 8 and set(seen.values()) == {"alice", "bob"}
        assert sorted(c.product_id for c in corrections(s, 8)) == sorted(seen)
    finally:
        for console in (one, two):
            if console is not None:
                console.close()


def test_shelver_review_command_serves_and_stops_on_sigterm(review_settings, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from consumer.review.auth import add_user

    s = review_settings
    ids = publish_for_review(s, 1)
    add_user(tmp_path / "reviewers", "erin", "erin-pw")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELVER_")}
    env.update({f"SHELVER_{f.upper()}": str(getattr(s, f)) for f in (
        "bootstrap_servers", "input_topic", "output_topic", "review_topic", "corrections_topic", "taxonomy_topic",
        "review_group_id")})
    env.update(SHELVER_REVIEW_PORT=str(port), SHELVER_REVIEW_PASSWORD_FILE=str(tmp_path / "reviewers"))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "review"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            def page():
                try:
                    r = http.get("/", headers=basic("erin"))
                except httpx.TransportError:
                    return None
                return r.text if 'data-item="0-' in r.text else None
            text = wait_for(page, 90, "the command's console to show the item")
            assert product_of(text) == ids[0] and '<strong id="reviewer">erin</strong>' in text
            assert http.get("/").status_code == 401
            token = re.search(r'name="csrf" value="([0-9a-f]+)"', text).group(1)
            item = re.search(r'data-item="([0-9]+-[0-9]+)"', text).group(1)
            r = http.post(f"/items/{item}/decide", data={"csrf": token, "category": "BAG"}, headers=basic("erin"))
            assert r.status_code == 303
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert review_lag(s)["total"] == 0  # the decided item is committed by the time the command has exited
    assert [(c.product_id, c.category, c.reviewer) for c in corrections(s, 1)] == [(ids[0], "BAG", "erin")]
