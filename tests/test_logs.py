"""Logging writes to whatever stderr is now: a stream swapped in at configure time and closed
since (a test harness's capture, an embedding program) must not make a log call raise."""
from __future__ import annotations

import io
import json
import sys

from consumer.logs import configure, get_logger


def test_log_lines_go_to_the_current_stderr_after_the_configure_time_stream_is_closed(monkeypatch):
    at_configure = io.StringIO()
    monkeypatch.setattr(sys, "stderr", at_configure)
    configure("INFO")
    at_configure.close()  # e.g. pytest's capsys at the end of the test that configured logging
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)
    get_logger("shelver.test").info("still logging", n=1)  # raised "I/O operation on closed file" before
    assert json.loads(now.getvalue().splitlines()[-1])["event"] == "still logging"
