"""deploy/k8s: the Deployment and Service validate against the Kubernetes API schemas (offline,
kubernetes-validate), and the pieces agree with each other and with the service's settings."""
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from consumer.config import Settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
# Partitions of the input topic as created by scripts/kafka-local and docker-compose's kafka-init.
INPUT_PARTITIONS = 3


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml"])
def test_core_objects_validate_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelt_field():
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_gives_each_pod_one_gpu_probes_a_grace_period_and_a_static_member_id():
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == int(env["SHELVER_METRICS_PORT"]["value"])
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert env["SHELVER_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_service_selects_the_deployments_pods_on_the_metrics_port():
    deployment, service = load("deployment.yaml"), load("service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_keda_scales_the_deployment_on_the_groups_lag_up_to_one_pod_per_input_partition():
    scaled, deployment = load("scaledobject.yaml"), load("deployment.yaml")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] == INPUT_PARTITIONS
    defaults = Settings()
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    group = env.get("SHELVER_GROUP_ID", defaults.group_id)
    topics = {t["metadata"]["topic"] for t in spec["triggers"]}
    assert defaults.input_topic in topics
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == group and int(meta["lagThreshold"]) > 0
        assert meta["bootstrapServers"] == env["SHELVER_BOOTSTRAP_SERVERS"]
        assert meta.get("allowIdleConsumers", "false") == "false"


def test_kustomization_lists_every_manifest():
    listed = set(load("kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
