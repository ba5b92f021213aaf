"""Kafka value (de)serialization: Avro single-object encoding, or Confluent Schema Registry framing.

Both modes resolve what was written into the *current* reader schema, so events from older or newer
compatible producers decode to the same dict shape. Anything undecodable raises ``WireFormatError``
(the consumer sends those to the dead-letter topic).
"""
from __future__ import annotations

import io
import json
import time
from typing import Iterable, Protocol

import httpx
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas import SCHEMA_DIR, load_schema, schema_text

SCHEMAS = ("product_event", "category_assigned", "category_corrected", "taxonomy_published")
MAGIC = b"\xc3\x01"  # Avro single-object encoding marker


class WireFormatError(ValueError):
    """The bytes are not a decodable event (bad framing, unknown schema, corrupt body)."""


class RegistryUnavailable(RuntimeError):
    """The schema registry could not be asked (down, unreachable, refusing our credentials, failing):
    the event may be fine, so it is not poison; the caller stops rather than dead-letter it."""


class AvroCodec(Protocol):
    def encode(self, record: dict, schema: str, topic: str) -> bytes: ...

    def decode(self, data: bytes, schema: str, topic: str) -> dict: ...


def rabin_fingerprint(schema: dict) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, as the 8 little-endian bytes the spec puts on the wire.

    fastavro already returns the little-endian byte order (as Java does); checked against the spec's
    test vector in tests/test_schemas.py.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _all_schema_names() -> list[str]:
    return [str(p.relative_to(SCHEMA_DIR).with_suffix("")) for p in sorted(SCHEMA_DIR.rglob("*.avsc"))]


def _read_exact(body: io.BytesIO, writer: dict, reader: dict) -> dict:
    record = schemaless_reader(body, writer, reader)
    if body.read(1):
        raise WireFormatError("trailing bytes after the Avro body")
    return record


class SingleObjectCodec:
    """``C3 01`` + 8-byte fingerprint + Avro binary; writers are looked up by fingerprint."""

    def __init__(self, readers: dict[str, dict] | None = None, writers: Iterable[dict] | None = None):
        # readers: schema name -> parsed schema used to encode and to read into (default: current files).
        # writers: every schema we accept on the wire (default: all of schemas/ incl. history/).
        self._readers = readers or {name: load_schema(name) for name in SCHEMAS}
        writers = list(writers) if writers is not None else [load_schema(n) for n in _all_schema_names()]
        self._writers = {rabin_fingerprint(s): s for s in [*writers, *self._readers.values()]}
        self._headers = {name: MAGIC + rabin_fingerprint(s) for name, s in self._readers.items()}

    def encode(self, record: dict, schema: str, topic: str) -> bytes:
        out = io.BytesIO()
        out.write(self._headers[schema])
        schemaless_writer(out, self._readers[schema], record)
        return out.getvalue()

    def decode(self, data: bytes, schema: str, topic: str) -> dict:
        reader = self._readers[schema]
        if len(data) < 10 or data[:2] != MAGIC:
            raise WireFormatError(f"not Avro single-object encoded (starts {bytes(data[:2]).hex() or 'empty'})")
        writer = self._writers.get(data[2:10])
        if writer is None:
            raise WireFormatError(f"unknown writer schema fingerprint {data[2:10].hex()}")
        if writer["name"] != reader["name"]:
            raise WireFormatError(f"payload is a {writer['name']}, expected a {reader['name']}")
        try:
            return _read_exact(io.BytesIO(data[10:]), writer, reader)
        except WireFormatError:
            raise
        except Exception as exc:  # untrusted bytes: fastavro raises EOFError, UnicodeError, IndexError...
            raise WireFormatError(f"corrupt {reader['name']} body: {type(exc).__name__}: {exc}") from exc


_SERIALIZER_KEYS = {"auto.register.schemas", "normalize.schemas", "use.latest.version"}
# The client takes these as numbers; settings (environment, YAML) give strings.
NUMERIC_OPTIONS = ("timeout", "max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity",
                   "cache.latest.ttl.sec")
# Seconds per registry request unless `timeout` is configured: the client's own default is none, so a
# registry that accepts the connection and never answers would hold a decode (and the service) for good.
# With the client's 3 retries and their waits, one decode is bounded by about 4 x 5 + 7 s.
DEFAULT_TIMEOUT_S = 5.0
def registry_fault(exc: SchemaRegistryError) -> bool:
    """True when the error is about the registry, not about the schema id asked for: credentials (401/403),
    408/429, any 5xx, or a 404 that is not the registry's own (a proxy's missing route, an error page: no
    404xx code in a JSON body). Only an unknown id (the registry's 404, e.g. 40403; 40400 from some) or an
    unreadable schema (422) makes the event itself undecodable."""
    status = exc.http_status_code if isinstance(exc.http_status_code, int) else -1
    code = exc.error_code if isinstance(exc.error_code, int) else -1  # a gateway's 404 body has none
    if status == 404:
        return not 40400 <= code < 40500
    return status in (401, 403, 408, 429) or status >= 500 or status < 0
_mock_clients: dict[str, SchemaRegistryClient] = {}


class RegistryCodec:
    """Confluent framing (magic 0 + 4-byte schema id) with TopicNameStrategy subjects (``<topic>-value``)."""

    def __init__(self, client: SchemaRegistryClient, serializer_conf: dict | None = None):
        self._serializers = {
            n: AvroSerializer(client, schema_text(n), conf=serializer_conf or None) for n in SCHEMAS
        }
        self._deserializers = {n: AvroDeserializer(client, schema_text(n)) for n in SCHEMAS}

    def encode(self, record: dict, schema: str, topic: str) -> bytes:
        return self._serializers[schema](record, SerializationContext(topic, MessageField.VALUE))

    def decode(self, data: bytes, schema: str, topic: str) -> dict:
        if data is None:
            raise WireFormatError("empty (tombstone) message")
        try:
            return self._deserializers[schema](data, SerializationContext(topic, MessageField.VALUE))
        except SchemaRegistryError as exc:
            if registry_fault(exc):  # the registry did not answer about this schema id
                raise RegistryUnavailable(f"schema registry: {exc}") from exc
            raise WireFormatError(f"undecodable registry-framed {schema}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, json.JSONDecodeError) as exc:  # refused, DNS, TLS, timeout; a page that is not JSON
            raise RegistryUnavailable(f"schema registry: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # SerializationError, fastavro errors
            raise WireFormatError(f"undecodable registry-framed {schema}: {type(exc).__name__}: {exc}") from exc


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def registry_numbers(registry_options: dict | None) -> dict[str, float | int]:
    """The numeric client options as numbers; ``ValueError`` names one that is not a positive number
    (checked when the settings load, so a bad value is a configuration error before anything heavy)."""
    out = {}
    for key in NUMERIC_OPTIONS:
        if key in (registry_options or {}):
            raw = registry_options[key]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = float("nan")
            if not (value >= 0 and value != float("inf")) or (key == "timeout" and value == 0):
                raise ValueError(f"schema registry option {key}={raw!r} is not a positive number")
            out[key] = value if key == "timeout" else int(value)
    return out


def _client_conf(schema_registry_url: str, registry_options: dict | None) -> tuple[dict, dict]:
    options = dict(registry_options or {})
    serializer_conf = {k: _bool(options.pop(k)) for k in list(options) if k in _SERIALIZER_KEYS}
    options.update(registry_numbers(options))
    options.setdefault("timeout", DEFAULT_TIMEOUT_S)
    return {"url": schema_registry_url, **options}, serializer_conf


def check_registry(schema_registry_url: str | None, registry_options: dict | None = None,
                   timeout_s: float = 10.0) -> None:
    """Raises ``RegistryUnavailable`` unless the registry answers a request (its subject list) within
    ``timeout_s``, with the configured credentials and TLS settings; retried until then. Nothing to
    check without a URL or for ``mock://``. The reason quotes the client's error, never the URL."""
    if not schema_registry_url or schema_registry_url.startswith("mock://"):
        return
    conf, _ = _client_conf(schema_registry_url, registry_options)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            client = SchemaRegistryClient({**conf, "timeout": max(0.5, min(left, 5.0)), "max.retries": 0})
            client.get_subjects()
            return
        except SchemaRegistryError as exc:
            why = f"HTTP {exc.http_status_code}: {exc.error_message}"
            if not registry_fault(exc):  # it answered, and will answer the same again
                raise RegistryUnavailable(why) from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        except (ValueError, TypeError) as exc:  # the client refuses the configuration itself
            raise RegistryUnavailable(f"bad registry configuration: {exc}") from None
        if time.monotonic() + 0.5 >= deadline:
            raise RegistryUnavailable(why)
        time.sleep(0.5)


def make_codec(schema_registry_url: str | None, registry_options: dict | None = None) -> AvroCodec:
    """Registry mode when a URL is given, single-object encoding otherwise.

    ``registry_options`` go to the SchemaRegistryClient (``basic.auth.user.info``, ``ssl.*``), except
    ``auto.register.schemas``/``normalize.schemas``/``use.latest.version`` which configure the serializer.
    ``mock://`` URLs share one in-memory registry per URL within the process (tests, local runs).
    """
    if not schema_registry_url:
        return SingleObjectCodec()
    conf, serializer_conf = _client_conf(schema_registry_url, registry_options)
    if not schema_registry_url.startswith("mock://"):
        return RegistryCodec(SchemaRegistryClient(conf), serializer_conf)
    if schema_registry_url not in _mock_clients:
        _mock_clients[schema_registry_url] = SchemaRegistryClient.new_client(conf)
    return RegistryCodec(_mock_clients[schema_registry_url], serializer_conf)


__all__ = [
    "AvroCodec", "RegistryCodec", "RegistryUnavailable", "SingleObjectCodec", "WireFormatError", "check_registry",
    "make_codec", "rabin_fingerprint", "registry_fault", "registry_numbers",
]
