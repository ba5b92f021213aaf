"""Text normalization shared by training, serving and the taxonomy (one definition)."""
from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]*>")
_BRACKET_TAG = re.compile(r"\[[^\]]*\]")
_ENTITY = re.compile(r"&(#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def normalize(text: str | None) -> str:
    """Strip HTML tags, bracketed tags and entities, lowercase, collapse whitespace.

    Entities are decoded first when they encode a character we keep (``&amp;`` → ``&``)
    and dropped otherwise, as the original method did.
    """
    if not text:
        return ""
    t = _TAG.sub(" ", text)
    t = _BRACKET_TAG.sub(" ", t)
    t = _ENTITY.sub(lambda m: " " if not html.unescape(m.group(0)).isprintable() else html.unescape(m.group(0)), t)
    t = t.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return _SPACE.sub(" ", t).strip().lower()


def tokenize(text: str | None) -> list[str]:
    """Word tokens of the normalized text (letters and digits, inner ' and - kept)."""
    return _TOKEN.findall(normalize(text))
