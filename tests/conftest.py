"""Shared fixtures: a real single-node Kafka broker (scripts/kafka-local) for tests marked ``kafka``, and a
real schema registry (scripts/registry-local) for tests marked ``registry``."""
from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent

# ops-metrics: `shelver consume` serves /metrics, /healthz, /readyz on 9464 by default; the tests
# that start it (several at once, and other suites on the same machine) must not fight over that
# port. Tests of the endpoint pass their own free port.
os.environ.setdefault("SHELVER_METRICS_PORT", "0")
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"
REGISTRY_LOCAL = REPO / "scripts" / "registry-local"
# Below Linux's ephemeral range (32768-60999): an outgoing connection of any process on the machine
# can hold a port in that range at the moment the broker binds (CI failed once on 39092 that way).
TEST_KAFKA_PORT, TEST_REGISTRY_PORT = "29392", "28381"  # the broker's controller takes the port + 1


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Starts a clean broker on SHELVER_TEST_KAFKA_PORT (default 29392) for the session; yields its address."""
    port = os.environ.get("SHELVER_TEST_KAFKA_PORT", TEST_KAFKA_PORT)
    state = REPO / ".kafka" / f"test-{port}"
    env = {**os.environ, "KAFKA_PORT": port, "KAFKA_STATE_DIR": str(state)}
    subprocess.run([KAFKA_LOCAL, "stop"], env=env, check=True, capture_output=True)
    shutil.rmtree(state, ignore_errors=True)
    subprocess.run([KAFKA_LOCAL, "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([KAFKA_LOCAL, "stop"], env=env, check=True)


@pytest.fixture(scope="session")
def schema_registry() -> str:
    """A real schema registry (Apicurio, in memory, scripts/registry-local) on SHELVER_TEST_REGISTRY_PORT
    (default 28381), started once for the session by the first test that asks; yields the URL of its
    Confluent-compatible API."""
    port = os.environ.get("SHELVER_TEST_REGISTRY_PORT", TEST_REGISTRY_PORT)
    env = {**os.environ, "REGISTRY_PORT": port, "REGISTRY_STATE_DIR": str(REPO / ".cache" / "registry" / f"test-{port}")}
    subprocess.run([REGISTRY_LOCAL, "stop"], env=env, check=True, capture_output=True)  # in memory: a fresh one
    subprocess.run([REGISTRY_LOCAL, "start"], env=env, check=True)
    try:
        yield f"http://127.0.0.1:{port}/apis/ccompat/v7"
    finally:
        subprocess.run([REGISTRY_LOCAL, "stop"], env=env, check=True)


@pytest.fixture
def loopback_certificate(tmp_path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1 (made by openssl): a server-side SSL context holding it,
    and the certificate's path (to trust it through SSL_CERT_FILE)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


@pytest.fixture
def topic_factory(kafka_bootstrap):
    """Creates uniquely named topics: ``topic_factory(partitions=3, prefix="t") -> name``."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def create(partitions: int = 3, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions)], operation_timeout=30)[name].result()
        return name

    return create


@pytest.fixture(scope="module")
def image_base(tmp_path_factory):
    """A real HTTP server with a few generated product photos (0.jpg .. 4.jpg)."""
    from PIL import Image

    from consumer.cli.sample import serve_directory

    root = tmp_path_factory.mktemp("images")
    for i in range(5):
        Image.new("RGB", (60, 80), (40 * i, 200 - 30 * i, 90)).save(root / f"{i}.jpg")
    with serve_directory(root) as base:
        yield base


@pytest.fixture(scope="module")
def model():
    """The tiny real TF categorizer of the broker tests."""
    from tiny_categorizer import TinyCategorizer

    return TinyCategorizer()


@pytest.fixture
def settings(kafka_bootstrap, topic_factory):
    """Settings for one test: fresh topics and group, small batches, loopback images allowed."""
    import uuid

    from consumer.config import Settings

    def make(**overrides) -> Settings:
        base = dict(
            bootstrap_servers=kafka_bootstrap,
            group_id=f"shelver-test-{uuid.uuid4().hex[:8]}",
            input_topic=topic_factory(3, "in"),
            replay_topic=topic_factory(3, "replay"),
            output_topic=topic_factory(3, "out"),
            dlq_topic=topic_factory(1, "dlq"),
            image_allowed_hosts=["127.0.0.1"],
            max_batch_size=8,
            max_batch_wait_ms=50,
        )
        return Settings(**{**base, **overrides})

    return make
