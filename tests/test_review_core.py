"""The review console's pure parts: reviewers and CSRF, the commit ledger, charts, dashboard numbers,
the vendored htmx, and the `shelver review` command's configuration checks (no broker)."""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.config import Settings
from consumer.review.auth import (Authenticator, Csrf, PasswordFileError, add_user, hash_password,
                                  read_password_file, verify_password)
from consumer.review.charts import bar_chart, column_chart
from consumer.review.ledger import PartitionLedger, decode_done, encode_done
from consumer.review.stats import Decision, Newest, summarize, total_variation

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "consumer" / "review" / "static"


def basic(name: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_password_hashes_are_salted_and_verified_in_full():
    a, b = hash_password("secret", n=2**10), hash_password("secret", n=2**10)
    assert a != b and a.startswith("scrypt$1024$8$1$")  # a fresh salt each time
    assert verify_password("secret", a) and verify_password("secret", b)
    assert not verify_password("Secret", a) and not verify_password("", a)
    assert not verify_password("secret", a.replace("scrypt", "md5")) and not verify_password("secret", "garbage")


def test_password_file_round_trip_and_strict_lines(tmp_path):
    path = tmp_path / "reviewers"
    add_user(path, "alice", "pw1")
    add_user(path, "bob", "pw2")
    add_user(path, "alice", "pw3")  # replaced, not duplicated
    users = read_password_file(path)
    assert sorted(users) == ["alice", "bob"] and verify_password("pw3", users["alice"])
    assert path.stat().st_mode & 0o077 == 0
    path.chmod(0o644)  # made readable by others some other way: the next change makes it private again
    add_user(path, "carol", "pw4")
    assert path.stat().st_mode & 0o077 == 0 and sorted(read_password_file(path)) == ["alice", "bob", "carol"]
    assert [p.name for p in tmp_path.iterdir()] == ["reviewers"]  # no temporary file left behind
    with pytest.raises(PasswordFileError, match="bad name"):
        add_user(path, "bad name", "x")
    (tmp_path / "broken").write_text("# comment\n\nalice:plaintext\n")
    with pytest.raises(PasswordFileError, match="line 3") as exc:
        read_password_file(tmp_path / "broken")
    assert "plaintext" not in str(exc.value)
    with pytest.raises(PasswordFileError, match="cannot read"):
        read_password_file(tmp_path / "missing")


def test_basic_auth_and_the_trusted_header_are_exclusive():
    auth = Authenticator({"alice": hash_password("pw", n=2**10)})
    assert auth.identify(basic("alice", "pw")) == "alice"
    assert auth.identify(basic("alice", "pw")) == "alice"  # the cached answer is the same
    for headers in ({}, basic("alice", "nope"), basic("eve", "pw"), {"authorization": "Basic !!!"},
                    {"authorization": "Bearer abc"}, {"x-forwarded-user": "alice"}):
        assert auth.identify(headers) is None
    proxied = Authenticator({}, trusted_header="x-forwarded-user")
    assert proxied.identify({"x-forwarded-user": "dana"}) == "dana"
    assert proxied.identify(basic("alice", "pw")) is None
    assert proxied.identify({"x-forwarded-user": "no spaces allowed"}) is None
    # A client's own header that a proxy appended to instead of replacing: refused, never the first one.
    from starlette.datastructures import Headers
    doubled = Headers(raw=[(b"x-forwarded-user", b"mallory"), (b"x-forwarded-user", b"dana")])
    assert proxied.identify(doubled) is None
    assert proxied.identify(Headers(raw=[(b"x-forwarded-user", b"dana")])) == "dana"


def test_an_unknown_reviewer_name_costs_a_password_check_so_timing_tells_no_names(monkeypatch):
    import consumer.review.auth as auth_module

    checked = []
    real = auth_module.verify_password
    monkeypatch.setattr(auth_module, "verify_password", lambda pw, stored: checked.append(pw) or real(pw, stored))
    auth = Authenticator({"alice": hash_password("pw", n=2**10)})
    assert auth.identify(basic("eve", "guess")) is None
    assert checked == ["guess"]  # a full scrypt check, as for a known name's wrong password


def test_csrf_tokens_are_bound_to_the_reviewer_and_the_origin():
    csrf = Csrf(b"k" * 32)
    token = csrf.token("alice")
    assert csrf.check("alice", token, None, "review.local:8090")
    assert csrf.check("alice", token, "http://review.local:8090", "review.local:8090")
    assert not csrf.check("bob", token, None, "review.local:8090")
    assert not csrf.check("alice", None, None, "review.local:8090")
    assert not csrf.check("alice", token, "http://evil.example", "review.local:8090")
    assert not csrf.check("alice", token, "null", "review.local:8090")
    assert not csrf.check("alice", "é" * 64, None, "review.local:8090")  # refused, not an error
    assert Csrf().token("alice") != Csrf().token("alice")  # a key drawn per server


def test_a_configured_public_origin_is_the_only_origin_a_post_may_come_from():
    csrf = Csrf(b"k" * 32, public_origin="https://review.example.com")
    token, upstream = csrf.token("alice"), "10.0.0.5:8090"  # the Host a rewriting proxy sends
    assert csrf.check("alice", token, "https://review.example.com", upstream)
    assert csrf.check("alice", token, "HTTPS://Review.Example.com/", upstream)
    assert csrf.check("alice", token, None, upstream)  # no Origin (an older browser): the token decides
    assert not csrf.check("alice", token, "http://review.example.com", upstream)
    assert not csrf.check("alice", token, "http://10.0.0.5:8090", upstream)
    assert not csrf.check("alice", token, "https://review.example.com.evil.example", upstream)


@pytest.mark.parametrize("bad", ["review.example.com", "https://review.example.com/console", "ftp://review.example.com",
                                 "https://user@review.example.com", "https://review.example.com?x=1"])
def test_a_public_origin_that_is_not_scheme_host_port_is_refused_at_start(bad):
    with pytest.raises(ValidationError, match="not an origin"):
        Settings(bootstrap_servers="localhost:1", review_public_origin=bad)
    assert Settings(bootstrap_servers="localhost:1",
                    review_public_origin="HTTPS://Review.Example.com/").review_public_origin == "https://review.example.com"


def test_ledger_commits_the_first_open_offset_and_names_finished_ones_above_it():
    ledger = PartitionLedger()
    assert ledger.position() is None
    for o in (10, 11, 13, 14):  # 12: a transaction marker, never delivered
        assert ledger.fetched(o)
    ledger.finish(11)
    ledger.finish(14)
    position, meta = ledger.position()
    assert position == 10 and decode_done(position, meta) == {11, 14}
    ledger.finish(10)
    assert ledger.position() == (13, "d:1")
    ledger.finish(13)
    assert ledger.position() == (15, "d:")
    # a restart from that commit skips what the metadata names
    restarted = PartitionLedger(10, encode_done(10, {11, 14}))
    assert [restarted.fetched(o) for o in (10, 11, 13, 14, 15)] == [True, False, True, False, True]
    assert restarted.position()[0] == 10


def test_ledger_metadata_stays_under_the_brokers_limit_and_ignores_foreign_text():
    meta = encode_done(1_000_000, set(range(1_000_001, 1_005_000)))
    assert len(meta) <= 3500 and decode_done(1_000_000, meta)
    assert decode_done(5, "written by another tool") == set() and decode_done(5, "d:x,1") == set()
    assert decode_done(5, None) == set()


def test_charts_escape_labels_and_scale_bars():
    svg = bar_chart([("<script>", 2), ("b", 1)], title="t & u")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "t &amp; u" in svg
    widths = [float(w) for w in __import__("re").findall(r'<rect [^>]*width="([0-9.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1])
    share = bar_chart([("a", 0.5)], title="s", fmt="{:.0%}", max_value=1.0)
    assert ">50%<" in share
    assert "nothing yet" in bar_chart([], title="empty")
    assert column_chart([("00:00", 0), ("01:00", 3)], title="h").count("<rect") == 2


def test_dashboard_numbers():
    now = datetime(2026, 12, 3, 12, 30, tzinfo=timezone.utc)
    decisions = [Decision("p1", "DRESS", "alice", now - timedelta(minutes=5)),
                 Decision("p2", "TOPS", "alice", now - timedelta(hours=1)),
                 Decision("p3", "TOPS", "bob", now - timedelta(hours=2)),
                 Decision("p4", "BAG", None, now - timedelta(days=3))]  # outside the last 24 hours
    s = summarize({"p1": "DRESS", "p2": "DRESS", "p3": "TOPS"}, decisions, now)
    assert s["accuracy"] == {"DRESS": (0.5, 2), "TOPS": (1.0, 1)}
    assert s["per_reviewer"] == [("alice", 2), ("(none)", 1), ("bob", 1)]
    assert s["hourly"][-1] == ("12:00", 1) and s["hourly"][-2] == ("11:00", 1) and len(s["hourly"]) == 24
    assert sum(n for _, n in s["hourly"]) == 3 and s["decisions"] == 4
    assert total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)


def test_vendored_htmx_is_the_registry_file_and_pages_load_nothing_from_elsewhere():
    digest = hashlib.sha256((STATIC / "htmx.min.js").read_bytes()).hexdigest()
    assert digest in (STATIC / "VENDORED.md").read_text()
    templates = "".join(p.read_text() for p in (ROOT / "consumer" / "review" / "templates").glob("*.html"))
    assert "https://" not in templates and "//unpkg" not in templates and "cdn" not in templates.lower()
    assert 'src="/static/htmx.min.js"' in templates


def test_review_command_refuses_to_start_without_an_authentication_method(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SHELVER_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    run = lambda extra, *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "consumer.cli", "review", *args], cwd=ROOT, env={**env, **extra},
        capture_output=True, text=True, timeout=120, input="pw\n")
    out = run({})
    assert out.returncode == 2 and "SHELVER_REVIEW_PASSWORD_FILE" in out.stderr
    (tmp_path / "empty").write_text("# nobody\n")
    out = run({"SHELVER_REVIEW_PASSWORD_FILE": str(tmp_path / "empty")})
    assert out.returncode == 2 and "names no reviewer" in out.stderr
    out = run({"SHELVER_REVIEW_PASSWORD_FILE": str(tmp_path / "pw")}, "--add-user", "alice")
    assert out.returncode == 0 and verify_password("pw", read_password_file(tmp_path / "pw")["alice"])
    out = run({"SHELVER_REVIEW_PASSWORD_FILE": str(tmp_path / "pw"), "SHELVER_STARTUP_TIMEOUT_S": "1"})
    assert out.returncode == 1 and "not reachable" in out.stderr  # checks the broker before serving
    out = run({"SHELVER_REVIEW_PASSWORD_FILE": str(tmp_path / "pw"), "SHELVER_KAFKA_OPTIONS": '{"socket.timeout.ms": "soon"}'})
    assert out.returncode == 2 and "configuration error" in out.stderr  # one line, as `shelver consume` says it
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_dashboards_memory_keeps_only_the_newest_products_and_a_rewrite_counts_as_new():
    kept = Newest(3)
    for pid in ["a", "b", "c", "d"]:
        kept[pid] = pid.upper()
    assert list(kept) == ["b", "c", "d"]  # "a", the oldest, left
    kept["b"] = "B2"  # a second correction of b: now the newest
    kept["e"] = "E"
    assert list(kept.items()) == [("d", "D"), ("b", "B2"), ("e", "E")]
    kept.pop("d")  # a tombstone withdraws a correction
    assert list(kept) == ["b", "e"] and dict(kept) == {"b": "B2", "e": "E"}
