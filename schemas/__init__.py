"""Avro schemas (the .avsc files are the contract) and pydantic models that validate events in Python.

The pydantic models mirror the current .avsc files; ``to_avro()``/``from_avro()`` convert to and from the
plain dicts fastavro reads and writes (timestamps as aware datetimes).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fastavro
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_text(name: str) -> str:
    """Raw JSON of ``schemas/<name>.avsc`` (``name`` may be e.g. ``history/product_event.v0``)."""
    return (SCHEMA_DIR / f"{name}.avsc").read_text()


@lru_cache(maxsize=None)
def _parsed(name: str) -> dict:
    return fastavro.parse_schema(json.loads(schema_text(name)))


def load_schema(name: str) -> dict:
    """The schema ``schemas/<name>.avsc`` parsed by fastavro (cached; treat as read-only)."""
    return _parsed(name)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]):
        return cls.model_validate(record)


class ProductEvent(_Model):
    product_id: str = Field(min_length=1, max_length=128)
    title: str = Field(default="", max_length=1_000)
    description: str | None = Field(default=None, max_length=20_000)
    image_url: str | None = Field(default=None, max_length=2_048)
    locale: str | None = None
    marketplace: str | None = None
    event_time: AwareDatetime
    attributes: dict[str, str] | None = None

    @field_validator("image_url")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        # file://, ftp://, gopher:// ... would turn the image fetcher into a local-file or SSRF reader.
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("image_url must be an absolute http(s) URL")
        return url

    def has_content(self) -> bool:
        """False when there is nothing to categorize (blank title and description, no image URL):
        valid Avro, but the consumer should not spend a model call on it."""
        return bool(self.title.strip() or (self.description or "").strip() or self.image_url)


class Alternative(_Model):
    category: str
    kl: float


class CategoryAssigned(_Model):
    product_id: str = Field(min_length=1, max_length=128)
    category: str
    kl: float
    alternatives: list[Alternative] = Field(default_factory=list)
    abstained: bool
    image_used: bool
    image_error: str | None = None
    model_version: str
    taxonomy_version: str
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    replayed: bool = False
    processed_at: AwareDatetime
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    needs_review: bool = False


class CategoryCorrected(_Model):
    """A person's category for a product (human in the loop; see consumer/corrections.py)."""

    product_id: str = Field(min_length=1, max_length=128)
    category: str = Field(min_length=1, max_length=64)
    source_distribution: list[float] | None = Field(default=None, max_length=10_000)
    model_version: str | None = None
    text: str | None = Field(default=None, max_length=21_000)
    reviewer: str | None = Field(default=None, max_length=128)
    corrected_at: AwareDatetime


class TaxonomyPublished(_Model):
    """A taxonomy version with its projections (``shelver taxonomy apply``)."""

    version: str = Field(min_length=1, max_length=128)
    model_version: str
    fallback: str
    targets: list[str] = Field(min_length=1)
    projections: list[list[float]]
    carried_from: dict[str, list[str]] = Field(default_factory=dict)
    document: str
    published_at: AwareDatetime


__all__ = [
    "Alternative", "CategoryAssigned", "CategoryCorrected", "ProductEvent", "TaxonomyPublished", "SCHEMA_DIR", "load_schema", "schema_text",
]
