"""The schema-registry client's edges against a real HTTP server that answers badly (slow, an upstream's
error page, a page that is not JSON): an event is dead-lettered only when the registry said the schema id
is unknown, never because the registry (or what stands in front of it) failed. The registry proper is
tested in tests/test_registry_kafka.py."""
from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro import schemaless_writer

from consumer.config import ConfigError, load_settings
from schemas import ProductEvent, load_schema, schema_text
from schemas.wire import (DEFAULT_TIMEOUT_S, RegistryUnavailable, WireFormatError, _client_conf, make_codec,
                          registry_fault)

pytestmark = pytest.mark.timeout(60)


class Registry(BaseHTTPRequestHandler):
    answer = "ok"  # ok | hang | html:<status> | registry404 | gateway404 | notjson

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        answer = type(self).answer
        if answer == "hang":
            time.sleep(30)  # accepts the connection and never answers in time
        elif answer.startswith("html:"):  # a load balancer's or proxy's own error page
            self._send(int(answer[5:]), b"<html><body>upstream error</body></html>", "text/html")
        elif answer == "registry404":
            self._send(404, json.dumps({"error_code": 40403, "message": "Schema not found"}).encode())
        elif answer == "gateway404":  # an API gateway with no route: JSON, but no registry error code
            self._send(404, json.dumps({"message": "no Route matched with those values"}).encode())
        elif answer == "notjson":
            self._send(200, b"<html>captive portal</html>", "text/html")
        else:
            self._send(200, json.dumps({"schema": schema_text("product_event"), "schemaType": "AVRO"}).encode())


@pytest.fixture(scope="module")
def registry_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def framed_event(schema_id: int) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    event = ProductEvent(product_id="p1", title="Red shoe", event_time=datetime.now(timezone.utc))
    schemaless_writer(out, load_schema("product_event"), event.to_avro())
    return out.getvalue()


def decode(url: str, answer: str, schema_id: int, **options) -> dict:
    Registry.answer = answer
    codec = make_codec(url, {"max.retries": "0", **options})  # strings, as the settings give them
    return codec.decode(framed_event(schema_id), "product_event", "products.new")


def test_a_registry_that_answers_decodes_the_event(registry_url):
    assert decode(registry_url, "ok", 1)["product_id"] == "p1"


@pytest.mark.parametrize("answer", ["html:501", "html:520", "html:404", "gateway404", "notjson"])
def test_an_error_page_in_front_of_the_registry_is_an_outage_not_a_bad_event(registry_url, answer):
    # Before: each of these made the event `undecodable` and sent it to the dead-letter topic.
    with pytest.raises(RegistryUnavailable):
        decode(registry_url, answer, 10 + len(answer))  # an id the client has not cached


def test_the_registrys_own_schema_not_found_makes_the_event_undecodable(registry_url):
    with pytest.raises(WireFormatError, match="undecodable registry-framed"):
        decode(registry_url, "registry404", 99)


def test_a_registry_that_never_answers_is_an_outage_within_the_configured_timeout(registry_url):
    # Before: the client had no timeout (a decode waited for good), and a timeout given in the settings
    # reached it as the string "0.5", which made every event `undecodable`.
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="Timeout"):
        decode(registry_url, "hang", 50, timeout="0.5")
    assert time.monotonic() - start < 5
    assert _client_conf(registry_url, {})[0]["timeout"] == DEFAULT_TIMEOUT_S  # bounded when none is configured


@pytest.mark.parametrize("status, code, fault", [
    (503, 50301, True), (501, -1, True), (520, -1, True), (401, 40101, True), (429, -1, True),
    (404, -1, True), (404, None, True), (404, "40403", True), (404, 40403, False), (404, 40400, False),
    (422, 42201, False),
])
def test_registry_fault_separates_the_registrys_trouble_from_an_unknown_schema(status, code, fault):
    assert registry_fault(SchemaRegistryError(status, code, "x")) is fault


@pytest.mark.parametrize("env, expected", [
    ({"SHELVER_SCHEMA_REGISTRY_OPTIONS": '{"timeout": "soon"}'}, "timeout='soon' is not a positive number"),
    ({"SHELVER_SCHEMA_REGISTRY_OPTIONS": '{"max.retries": -1}'}, "max.retries='-1' is not a positive number"),
    ({"SHELVER_KAFKA_OPTIONS": '{"sasl.password": 755123}'}, "sasl.password must be a quoted string"),
    ({"SHELVER_CORRECTIONS_CATCHUP_TIMEOUT_S": "inf"}, "CATCHUP_TIMEOUT_S: Input should be a finite number"),
    ({"SHELVER_CORRECTIONS_CATCHUP_TIMEOUT_S": "-30"}, "CATCHUP_TIMEOUT_S: Input should be greater than 0"),
    ({"SHELVER_DRAIN_TIMEOUT_S": "inf"}, "DRAIN_TIMEOUT_S: Input should be a finite number"),
])
def test_bad_client_options_and_unbounded_timeouts_are_configuration_errors(monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=expected) as err:
        load_settings()
    assert "\n" not in str(err.value) and "755123" not in str(err.value)
