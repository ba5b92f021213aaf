"""structlog configured for one JSON object per line on stderr (what log shippers expect).

Every line, structlog's and the standard library's (httpx, librdkafka via confluent-kafka), with
its traceback, passes a scrubber that replaces the configured secret values (`Settings.secret_values`)
and the query string of every http(s) URL (presigned image URLs carry their signature there) with
``***``: a second line of defence behind `Settings.redacted`, for error texts that quote a URL or an option.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Iterable

import structlog

from consumer.secrets import MASK, mask_url_queries


class Scrubber:
    """Replaces known secret strings (raw and JSON-escaped) and URL query strings in text."""

    def __init__(self, secrets: Iterable[str] = ()):
        found = {s for s in secrets if s}
        found |= {json.dumps(s)[1:-1] for s in found}  # as it appears inside a rendered JSON string
        self.secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, MASK)
        return mask_url_queries(text)


class _ScrubFormatter(logging.Formatter):
    """Scrubs the whole formatted record: the message, and the traceback and stack that the
    filter below never sees (an exception's text often quotes a URL or an option)."""

    def __init__(self, scrub: Scrubber):
        super().__init__("%(message)s")
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class _ScrubFilter(logging.Filter):
    def __init__(self, scrub: Scrubber):
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class _Stderr:
    """Whatever ``sys.stderr`` is at write time: a stream captured at configure time may be closed
    later (an embedding program or a test harness swaps stderr), and logging must never raise."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _Stderr()


def configure(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    scrub = Scrubber(secrets)
    logging.basicConfig(stream=_STDERR, level=level.upper(), format="%(message)s")
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _ScrubFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_ScrubFilter(scrub))
        handler.setFormatter(_ScrubFormatter(scrub))  # tracebacks and stacks too
    for noisy in ("httpx", "httpcore"):  # the schema registry client: one line per request otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            lambda _logger, _name, line: scrub(line),  # never log a secret, whatever the message quotes
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str):
    return structlog.get_logger(name)
