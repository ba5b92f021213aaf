"""Shared fixtures: a real single-node Kafka broker (scripts/kafka-local) for tests marked ``kafka``."""
from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Starts a clean broker on SHELVER_TEST_KAFKA_PORT (default 39092) for the session; yields its address."""
    port = os.environ.get("SHELVER_TEST_KAFKA_PORT", "39092")
    state = REPO / ".kafka" / f"test-{port}"
    env = {**os.environ, "KAFKA_PORT": port, "KAFKA_STATE_DIR": str(state)}
    subprocess.run([KAFKA_LOCAL, "stop"], env=env, check=True, capture_output=True)
    shutil.rmtree(state, ignore_errors=True)
    subprocess.run([KAFKA_LOCAL, "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([KAFKA_LOCAL, "stop"], env=env, check=True)


@pytest.fixture
def topic_factory(kafka_bootstrap):
    """Creates uniquely named topics: ``topic_factory(partitions=3, prefix="t") -> name``."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def create(partitions: int = 3, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions)], operation_timeout=30)[name].result()
        return name

    return create
