"""docker-compose.yml and the Dockerfile describe the same system the local scripts run."""
from pathlib import Path

import yaml

from consumer.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_compose_creates_every_topic_the_service_uses_and_reserves_a_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    init_script = "\n".join(services["kafka-init"]["entrypoint"])
    s = Settings()
    for topic in (s.input_topic, s.replay_topic, s.output_topic, s.dlq_topic):
        assert topic in init_script
    shelver = services["shelver"]
    assert shelver["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    device = shelver["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_dockerfile_uses_the_tensorflow_gpu_image_and_runs_the_consumer():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM tensorflow/tensorflow:" in dockerfile and "-gpu" in dockerfile
    assert '"shelver", "consume"' in dockerfile
