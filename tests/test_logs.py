"""Logging writes to whatever stderr is now: a stream swapped in at configure time and closed
since (a test harness's capture, an embedding program) must not make a log call raise."""
from __future__ import annotations

import io
import json
import sys

from consumer.logs import Scrubber, configure, get_logger


def test_log_lines_go_to_the_current_stderr_after_the_configure_time_stream_is_closed(monkeypatch):
    at_configure = io.StringIO()
    monkeypatch.setattr(sys, "stderr", at_configure)
    configure("INFO")
    at_configure.close()  # e.g. pytest's capsys at the end of the test that configured logging
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    get_logger("shelver.test").info("still logging", n=1)  # raised "I/O operation on closed file" before
    assert json.loads(now.getvalue().splitlines()[-1])["event"] == "still logging"


def test_standard_library_tracebacks_are_scrubbed_like_messages():
    """An exception's text quoting a credential (a URL with user info, an option) must not reach stderr
    through a standard-library logger's traceback (httpx, confluent-kafka, asyncio log that way)."""
    import subprocess

    code = (
        "import logging\n"
        "from consumer.logs import configure\n"
        "configure('INFO', secrets=['hunter2'])\n"
        "try:\n"
        "    raise ConnectionError('https://user:hunter2@registry.example/ refused')\n"
        "except ConnectionError:\n"
        "    logging.getLogger('httpx').exception('request failed for hunter2')\n"
        "logging.getLogger('asyncio').error('stack', stack_info=True, extra={'x': 'hunter2'})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" in out.stderr and "ConnectionError" in out.stderr
    assert "hunter2" not in out.stderr and "https://user:***@registry.example/" in out.stderr


def test_image_urls_are_logged_without_their_query_strings(monkeypatch):
    """A presigned URL's signature and credential are in its query string: never logged."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure("INFO")
    url = "https://cdn.example/p/1.jpg?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef#frag"
    get_logger("shelver.images").warning("image_fetch_failed", url=url, error=f"GET {url} failed")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["url"] == "https://cdn.example/p/1.jpg?***#frag"
    assert line["error"] == "GET https://cdn.example/p/1.jpg?***#frag failed"
    assert "AKIA123" not in out.getvalue() and "deadbeef" not in out.getvalue()
    assert Scrubber()("no url? fine") == "no url? fine"
