"""Which configuration values are secrets, and how they are masked (``***``) before anything logs them.

Options (librdkafka, Schema Registry client) are secret when their name holds one of the names below;
URLs lose their user info. `consumer.config.Settings.redacted` and `.secret_values` use these rules,
and `consumer.logs` scrubs the values from every log line.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# Option names (librdkafka, Schema Registry client) whose values are credentials. Matched as substrings.
_SECRET_KEYS = (
    "password", "secret", "token", "user.info", "userinfo", "credential", "key.pem", "private",
    "keystore", "sasl.oauthbearer.config", "sasl.jaas.config", "api.key",
)
# After a scheme, user info runs to the "@" (a comma is legal in it); without one, commas separate the
# addresses of a bootstrap list.
_URL_USERINFO = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/@\s]+)|(?P<bare>[^/@\s,]+))@")
# The query string of an http(s) URL: presigned image URLs carry their signature and credential there.
_URL_QUERY = re.compile(r"(?P<base>\bhttps?://[^\s\"'<>?#\\]*)\?[^\s\"'<>#\\]*", re.IGNORECASE)
MASK = "***"


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in _SECRET_KEYS)


def mask_url(text: str | None) -> str | None:
    """``scheme://user:pass@host`` → ``scheme://***@host`` for every address in ``text`` (comma lists too)."""
    if not text:
        return text
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme') or ''}{MASK}@", text)


def mask_url_queries(text: str) -> str:
    """``https://host/a.jpg?X-Amz-Signature=…`` → ``https://host/a.jpg?***`` for every http(s) URL in ``text``."""
    return _URL_QUERY.sub(lambda m: f"{m.group('base')}?{MASK}", text) if "?" in text else text


def mask_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Secret-named options masked; URLs in the others lose their user info."""
    return {
        k: MASK if is_secret_key(k) else (mask_url(v) if isinstance(v, str) else v) for k, v in options.items()
    }


def userinfo_secrets(text: str) -> set[str]:
    """The user info of every URL in ``text``, and the password part alone."""
    out = set()
    for m in _URL_USERINFO.finditer(text):
        info = m.group("info") or m.group("bare")
        # After a scheme the user info runs to the "@", so in "SASL_SSL://h1:9092,u:p@h2:9092" it also holds
        # the addresses before it: the part after the last comma is the user info too, read either way.
        for part in {info, info.rsplit(",", 1)[-1]}:
            out.add(part)
            if ":" in part:
                out.add(part.split(":", 1)[1])
    return out
