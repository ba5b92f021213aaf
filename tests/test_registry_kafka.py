"""Schema Registry framing against a real registry (Apicurio Registry, Confluent-compatible API; started once
per session by the ``schema_registry`` fixture, scripts/registry-local) and the real broker, through
`shelver consume` as a process: the in-memory mock of the client library enforces no compatibility and
never goes down.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.cli.sample import publish
from consumer.config import Settings
from consumer.secrets import MASK
from kafka_helpers import read_topic, results
from schemas import ProductEvent, schema_text

TESTS = Path(__file__).resolve().parent
SECRET = "reg-pass-s3cret"  # the registry ignores credentials (no auth configured): they must still never show
V1, V2 = 6, 4  # events written with the current ProductEvent schema, and with a newer version


def product_event_v2() -> str:
    """The current ProductEvent plus an optional field: what a producer one release ahead writes."""
    schema = json.loads(schema_text("product_event"))
    schema["fields"].append({"name": "brand", "type": ["null", "string"], "default": None,
                             "doc": "added in a later producer release"})
    return json.dumps(schema)


def product_event_incompatible() -> str:
    """A new required field without a default: readers of the new schema cannot read old events."""
    schema = json.loads(schema_text("product_event"))
    schema["fields"].append({"name": "brand", "type": "string"})
    return json.dumps(schema)


def _env(s: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SHELVER_LOG_LEVEL": "INFO", "SHELVER_REPLAY_TOPIC": "", **extra}
    for name in ("bootstrap_servers", "group_id", "input_topic", "output_topic", "dlq_topic",
                 "max_batch_size", "max_batch_wait_ms"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    if s.schema_registry_url:
        env["SHELVER_SCHEMA_REGISTRY_URL"] = s.schema_registry_url
        env["SHELVER_SCHEMA_REGISTRY_OPTIONS"] = json.dumps(s.schema_registry_options)
    return env


def _topics(bootstrap: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = {kind: f"reg-{kind}.{uuid.uuid4().hex[:10]}" for kind in ("in", "out", "dlq")}
    futures = admin.create_topics([NewTopic(n, num_partitions=3 if k == "in" else 1) for k, n in names.items()],
                                  operation_timeout=30)
    for f in futures.values():
        f.result()
    return names


def _settings(bootstrap: str, url: str | None, options: dict | None = None) -> Settings:
    topics = _topics(bootstrap)
    return Settings(bootstrap_servers=bootstrap, group_id=f"shelver-test-{uuid.uuid4().hex[:8]}",
                    input_topic=topics["in"], replay_topic=None, output_topic=topics["out"],
                    dlq_topic=topics["dlq"], schema_registry_url=url, schema_registry_options=options or {},
                    max_batch_size=8, max_batch_wait_ms=50)


def _events(n: int, prefix: str) -> list[ProductEvent]:
    now = datetime.now(timezone.utc)
    return [ProductEvent(product_id=f"{prefix}{i}", title="Red summer dress", event_time=now) for i in range(n)]


@pytest.fixture(scope="module")
def registry_run(kafka_bootstrap, schema_registry):
    """One `shelver consume` over registry-framed events: V1 written with the current schema (registered
    by the producer), then V2 written by a producer on a newer version under the BACKWARD rule."""
    s = _settings(kafka_bootstrap, schema_registry,
                  {"basic.auth.user.info": f"shelver:{SECRET}"})
    publish(s, _events(V1, "v1-"))
    client = SchemaRegistryClient({"url": schema_registry})
    subject = f"{s.input_topic}-value"
    client.set_compatibility(subject, "BACKWARD")
    newer = AvroSerializer(client, product_event_v2())  # registers v2: accepted, it is backward compatible
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for ev in _events(V2, "v2-"):
        record = {**ev.to_avro(), "brand": "Acme"}
        producer.produce(s.input_topic, newer(record, SerializationContext(s.input_topic, MessageField.VALUE)),
                         ev.product_id.encode())
    assert producer.flush(30) == 0
    proc = subprocess.run([sys.executable, str(TESTS / "consumer_main.py"), "consume", "--max-events", str(V1 + V2)],
                          env=_env(s), capture_output=True, text=True, timeout=240)
    return s, client, proc


@pytest.mark.kafka
@pytest.mark.registry
def test_registry_framed_events_flow_through_the_real_broker_end_to_end(registry_run):
    s, client, proc = registry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = results(s, read_topic(s, s.output_topic, V1 + V2))
    assert sorted(r.product_id for r in out) == sorted([f"v1-{i}" for i in range(V1)] + [f"v2-{i}" for i in range(V2)])
    # Both directions went through the registry: the service registered its output schema there.
    assert {f"{s.input_topic}-value", f"{s.output_topic}-value"} <= set(client.get_subjects())


@pytest.mark.kafka
@pytest.mark.registry
def test_events_of_a_newer_schema_version_with_an_added_optional_field_are_decoded(registry_run):
    s, client, proc = registry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(client.get_versions(f"{s.input_topic}-value")) == 2  # the producer's v2 is a second version
    newer = [r for r in results(s, read_topic(s, s.output_topic, V1 + V2)) if r.product_id.startswith("v2-")]
    assert len(newer) == V2 and all(r.category for r in newer)  # categorized, not dead-lettered


@pytest.mark.kafka
@pytest.mark.registry
def test_registry_credentials_never_appear_in_the_services_output(registry_run):
    s, _, proc = registry_run
    output = proc.stdout + proc.stderr
    starting = [json.loads(line) for line in output.splitlines() if '"event": "starting"' in line]
    assert starting, output[-2000:]  # the settings are logged at start, the registry's credentials masked
    assert starting[0]["settings"]["schema_registry_options"]["basic.auth.user.info"] == MASK
    assert SECRET not in output


@pytest.mark.registry
def test_an_incompatible_schema_is_refused_by_the_registry_under_a_backward_rule(schema_registry):
    client = SchemaRegistryClient({"url": schema_registry})
    subject = f"products.compat.{uuid.uuid4().hex[:8]}-value"
    client.register_schema(subject, Schema(schema_text("product_event"), "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    client.register_schema(subject, Schema(product_event_v2(), "AVRO"))  # an added optional field: accepted
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(product_event_incompatible(), "AVRO"))
    assert refused.value.http_status_code == 409
    assert len(client.get_versions(subject)) == 2
    # Control: the same schema is accepted where no rule applies, so the rule is what refused it.
    free = f"products.free.{uuid.uuid4().hex[:8]}-value"
    client.register_schema(free, Schema(schema_text("product_event"), "AVRO"))
    client.set_compatibility(free, "NONE")
    client.register_schema(free, Schema(product_event_incompatible(), "AVRO"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.kafka
def test_a_registry_that_is_down_at_start_gives_one_clear_line_and_exit_1(kafka_bootstrap):
    port = _closed_port()
    s = _settings(kafka_bootstrap, f"http://shelver:{SECRET}@127.0.0.1:{port}/apis/ccompat/v7")
    t0 = time.monotonic()
    # `shelver consume` itself (the committed artifact): the check runs before TensorFlow loads.
    proc = subprocess.run([sys.executable, "-m", "consumer.cli", "consume", "--max-events", "1"],
                          env=_env(s, SHELVER_STARTUP_TIMEOUT_S="2"), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"shelver: start-up check failed: schema registry at http://***@127.0.0.1:{port}/")
    assert "not answering within" in lines[0] and "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert took < 30, took  # before the models load (the old code started and dead-lettered every event)


def test_a_registry_that_stops_answering_is_not_a_reason_to_dead_letter_events():
    """Registry framing of schema id 7 with a registry that is down: not poison (the service stops
    without committing and a restart retries), unlike an id the registry answers it does not know."""
    from schemas.wire import RegistryUnavailable, WireFormatError, make_codec

    framed = b"\x00\x00\x00\x00\x07" + b"\x02x"
    codec = make_codec(f"http://127.0.0.1:{_closed_port()}/apis/ccompat/v7", {"max.retries": 0})
    with pytest.raises(RegistryUnavailable) as down:
        codec.decode(framed, "product_event", "products.new")
    assert not isinstance(down.value, WireFormatError)


@pytest.mark.registry
def test_a_schema_id_the_registry_does_not_know_is_undecodable(schema_registry):
    from schemas.wire import WireFormatError, make_codec

    with pytest.raises(WireFormatError, match="undecodable registry-framed"):
        make_codec(schema_registry).decode(b"\x00\x00\x0f\x42\x40" + b"\x02x", "product_event", "products.new")


@pytest.mark.kafka
@pytest.mark.registry
def test_a_registry_that_goes_down_mid_stream_stops_the_service_without_dead_letters_or_commits(
        kafka_bootstrap, schema_registry, model):
    """Events framed by a registry that the running service can no longer reach are not poison: the
    service stops with exit 1 (not an exception) without committing (a restart retries them) instead of dead-lettering good events."""
    import threading

    from consumer.service import Service
    from kafka_helpers import committed

    up = _settings(kafka_bootstrap, schema_registry)
    publish(up, _events(3, "down-"))
    down = up.model_copy(update={"schema_registry_url": f"http://127.0.0.1:{_closed_port()}/apis/ccompat/v7"})
    svc = Service(down, model, max_events=3)
    outcome: dict = {}

    def run():
        try:
            outcome["rc"] = svc.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at what ended the run
            outcome["exc"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive()
    assert outcome == {"rc": 1}, outcome  # the known end (one error line, exit 1), not a traceback
    assert committed(up) == {0: 0, 1: 0, 2: 0}
    assert read_topic(up, up.dlq_topic, 1, timeout=3, settle=0) == []
