"""Avro contract, evolution and wire framing in both modes (registry mode against the mock:// registry)."""
from __future__ import annotations

import json
import struct
from datetime import datetime, timezone

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import ValidationError

from schemas import CategoryAssigned, ProductEvent, load_schema, schema_text
from schemas.wire import MAGIC, RegistryCodec, SingleObjectCodec, WireFormatError, make_codec, rabin_fingerprint

NOW = datetime(2025, 3, 1, 12, 30, 15, 123000, tzinfo=timezone.utc)


def product(**overrides) -> ProductEvent:
    fields = dict(
        product_id="p-1", title="Floral midi dress", description="Lightweight viscose", locale="en_GB",
        image_url="https://img.example.com/p-1.jpg", marketplace="uk", event_time=NOW,
        attributes={"colour": "blue"},
    )
    return ProductEvent(**{**fields, **overrides})


def assigned() -> CategoryAssigned:
    return CategoryAssigned(
        product_id="p-1", category="DRESS", kl=0.12, alternatives=[{"category": "SKIRT", "kl": 0.9}],
        abstained=False, image_used=False, image_error="timeout", model_version="m1", taxonomy_version="t1",
        source_topic="products.new", source_partition=3, source_offset=42, replayed=True, processed_at=NOW,
    )


def test_fingerprint_matches_the_spec_test_vector_and_layout():
    # Avro spec schema-tests.txt: "int" -> 8247732601305521295; the wire carries it little-endian.
    assert rabin_fingerprint("int") == struct.pack("<q", 8247732601305521295)
    data = SingleObjectCodec().encode(product().to_avro(), "product_event", "t")
    assert data[:2] == b"\xc3\x01" == MAGIC
    assert data[2:10] == rabin_fingerprint(load_schema("product_event"))


def test_pydantic_mirrors_the_avsc_fields():
    for model, name in ((ProductEvent, "product_event"), (CategoryAssigned, "category_assigned")):
        avsc = [f["name"] for f in json.loads(schema_text(name))["fields"]]
        assert list(model.model_fields) == avsc


@pytest.mark.parametrize("codec_factory", [SingleObjectCodec, lambda: make_codec("mock://roundtrip", {})])
def test_round_trip_both_schemas(codec_factory):
    codec = codec_factory()
    for model, schema in ((product(), "product_event"), (assigned(), "category_assigned")):
        data = codec.encode(model.to_avro(), schema, "products.new")
        back = type(model).from_avro(codec.decode(data, schema, "products.new"))
        assert back == model
        assert back.to_avro()["alternatives" if schema == "category_assigned" else "attributes"]


def test_registry_mode_uses_confluent_framing_and_shares_mock_registry_per_url():
    producer, consumer = make_codec("mock://shared", {}), make_codec("mock://shared", {})
    data = producer.encode(product().to_avro(), "product_event", "products.new")
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] >= 1
    assert ProductEvent.from_avro(consumer.decode(data, "product_event", "products.new")) == product()
    with pytest.raises(WireFormatError, match="registry-framed"):
        make_codec("mock://other", {}).decode(data, "product_event", "products.new")  # unknown schema id


def test_old_writer_decodes_into_current_reader_single_object():
    v0 = load_schema("history/product_event.v0")
    old_producer = SingleObjectCodec(readers={"product_event": v0})
    record = {k: v for k, v in product().to_avro().items() if k not in ("marketplace", "attributes")}
    data = old_producer.encode(record, "product_event", "t")
    assert data[2:10] == rabin_fingerprint(v0) != rabin_fingerprint(load_schema("product_event"))
    event = ProductEvent.from_avro(SingleObjectCodec().decode(data, "product_event", "t"))
    assert event == product(marketplace=None, attributes=None)


def test_old_writer_decodes_into_current_reader_registry():
    client = SchemaRegistryClient.new_client({"url": "mock://evolution"})
    old = AvroSerializer(client, schema_text("history/product_event.v0"))
    record = {k: v for k, v in product().to_avro().items() if k not in ("marketplace", "attributes")}
    data = old(record, SerializationContext("products.new", MessageField.VALUE))
    decoded = RegistryCodec(client).decode(data, "product_event", "products.new")
    assert decoded["marketplace"] is None and decoded["attributes"] is None
    assert decoded["title"] == "Floral midi dress"


def test_current_writer_decodes_with_an_old_reader():
    """An old consumer (v0 reader) that knows the new writer schema skips the added fields."""
    old_consumer = SingleObjectCodec(
        readers={"product_event": load_schema("history/product_event.v0")}, writers=[load_schema("product_event")]
    )
    data = SingleObjectCodec().encode(product().to_avro(), "product_event", "t")
    decoded = old_consumer.decode(data, "product_event", "t")
    assert "attributes" not in decoded and "marketplace" not in decoded
    assert decoded["product_id"] == "p-1" and decoded["event_time"] == NOW


def test_newer_writer_needs_its_schema_deployed_first():
    v2 = json.loads(schema_text("product_event"))
    v2["fields"].append({"name": "brand", "type": ["null", "string"], "default": None})
    v2 = fastavro.parse_schema(v2)
    data = SingleObjectCodec(readers={"product_event": v2}).encode(
        {**product().to_avro(), "brand": "Acme"}, "product_event", "t"
    )
    with pytest.raises(WireFormatError, match="unknown writer schema fingerprint"):
        SingleObjectCodec().decode(data, "product_event", "t")
    decoded = SingleObjectCodec(writers=[v2]).decode(data, "product_event", "t")
    assert ProductEvent.from_avro(decoded) == product()


@pytest.mark.parametrize("codec_factory", [SingleObjectCodec, lambda: make_codec("mock://bad", {})])
def test_undecodable_bytes_raise_wire_format_error(codec_factory):
    codec = codec_factory()
    good = codec.encode(product().to_avro(), "product_event", "products.new")
    bad = {
        "bad magic": b"\x07\x01" + good[2:],
        "truncated": good[:-7],
        "header only": good[:10],
        "garbage": good[: 10 if good[:2] == MAGIC else 5] + b"\xff" * 40,  # valid header, junk body
        "empty": b"",
        "trailing bytes": good + b"\x00",
    }
    for label, data in bad.items():
        if label == "trailing bytes" and not isinstance(codec, SingleObjectCodec):
            continue  # the Confluent deserializer ignores trailing bytes
        with pytest.raises(WireFormatError):
            codec.decode(data, "product_event", "products.new")
            pytest.fail(label)


def test_single_object_rejects_a_payload_of_the_other_schema():
    codec = SingleObjectCodec()
    data = codec.encode(assigned().to_avro(), "category_assigned", "t")
    with pytest.raises(WireFormatError, match="CategoryAssigned, expected a io.shelver.ProductEvent"):
        codec.decode(data, "product_event", "t")


@pytest.mark.parametrize(
    "overrides",
    [
        {"image_url": "ftp://example.com/a.jpg"},
        {"image_url": "file:///etc/passwd"},
        {"image_url": "https:///no-host.jpg"},
        {"image_url": "https://example.com/" + "a" * 2_048},
        {"product_id": ""},
        {"product_id": "x" * 129},
        {"title": "t" * 1_001},
        {"description": "d" * 20_001},
        {"event_time": datetime(2025, 3, 1)},  # naive: ambiguous
        {"unexpected": 1},
    ],
)
def test_validation_rejects(overrides):
    with pytest.raises(ValidationError):
        product(**overrides)


def test_validation_accepts_limits_and_flags_empty_products():
    assert product(title="t" * 1_000, description="d" * 20_000, product_id="x" * 128).has_content()
    assert product(image_url="HTTP://Example.com/a.png").image_url == "HTTP://Example.com/a.png"
    empty = product(title="  ", description=None, image_url=None)
    assert not empty.has_content()
    assert product(title="", description=None).has_content()  # the image alone is enough
    assert product(title="", image_url=None, description="wool coat").has_content()
