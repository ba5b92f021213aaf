"""deploy/k8s: every manifest validates against the Kubernetes API schemas (offline,
kubernetes-validate), and the pieces agree with each other and with the service's settings.

Two modes: deploy/k8s (a Deployment: dynamic membership, at-least-once, scaled by KEDA) and
deploy/k8s/statefulset (stable pod names: static membership and exactly-once); both include
deploy/k8s/common (the metrics Service and the egress NetworkPolicy)."""
from ipaddress import ip_address, ip_network
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


# Every Kubernetes object shipped (KEDA's ScaledObject is a CRD the validator has no schema for).
CORE_OBJECTS = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")
                      if p.name not in ("kustomization.yaml", "scaledobject.yaml"))


def test_every_core_object_is_checked():
    assert set(CORE_OBJECTS) >= {"deployment.yaml", "common/service.yaml", "common/networkpolicy.yaml",
                                 "statefulset/statefulset.yaml", "statefulset/pods-service.yaml"}


@pytest.mark.parametrize("name", CORE_OBJECTS)
def test_core_objects_validate_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelt_field():
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_deployment_gives_each_pod_one_gpu_probes_and_a_grace_period():
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["startupProbe"]["httpGet"]["path"] == "/startupz"  # 200 only once the main loop runs
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    from consumer.config import Settings

    # The kubelet waits as long as the service's own start-up budget, which starts once the start-up checks
    # (broker and topics, then the review topic: each up to startup_timeout_s) are done.
    fields = Settings.model_fields
    assert startup["periodSeconds"] * startup["failureThreshold"] == (
        fields["startup_budget_s"].default + 2 * fields["startup_timeout_s"].default)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == int(env["SHELVER_METRICS_PORT"]["value"])
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_service_selects_the_deployments_pods_on_the_metrics_port():
    deployment, service = load("deployment.yaml"), load("common/service.yaml")
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
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} | {"common"}


# --- two modes: the Deployment (dynamic membership) and the StatefulSet (stable identities) -----------


def _resources(directory: Path) -> list[Path]:
    """Every manifest file a `kubectl apply -k directory` applies (kustomize resources, recursively)."""
    files = []
    for entry in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / entry} is listed but missing"
        files += _resources(path) if path.is_dir() else [path]
    return files


def _objects(directory: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in _resources(directory)]


def _env(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_each_mode_applies_one_workload_and_the_shared_objects():
    deployment_mode, statefulset_mode = _objects(K8S), _objects(K8S / "statefulset")
    assert [o["kind"] for o in deployment_mode if o["kind"] in ("Deployment", "StatefulSet")] == ["Deployment"]
    assert [o["kind"] for o in statefulset_mode if o["kind"] in ("Deployment", "StatefulSet")] == ["StatefulSet"]
    for mode in (deployment_mode, statefulset_mode):
        kinds = {o["kind"] for o in mode}
        assert {"Service", "NetworkPolicy"} <= kinds
    assert "ScaledObject" not in {o["kind"] for o in statefulset_mode}  # a fixed size: see below
    used = {p for d in (K8S, K8S / "statefulset", K8S / "review") for p in _resources(d)}
    shipped = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert used == shipped, "a manifest no mode applies"


def test_the_deployment_takes_no_identity_from_its_changing_pod_names():
    env = _env(load("deployment.yaml"))
    assert "SHELVER_GROUP_INSTANCE_ID" not in env  # dynamic membership: a departed pod leaves at once
    assert "SHELVER_TRANSACTIONAL_ID" not in env
    assert env["SHELVER_PROCESSING_GUARANTEE"]["value"] == "at_least_once"
    assert Settings(processing_guarantee=env["SHELVER_PROCESSING_GUARANTEE"]["value"])


def test_the_statefulset_derives_both_ids_from_its_stable_pod_names():
    from consumer.adapters.kafka_io import transactional_id

    sts, headless = load("statefulset/statefulset.yaml"), load("statefulset/pods-service.yaml")
    spec = sts["spec"]
    assert spec["serviceName"] == headless["metadata"]["name"] and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["replicas"] == INPUT_PARTITIONS  # one member per partition, none idle, none added by an autoscaler
    env = _env(sts)
    assert env["SHELVER_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    guarantee = env["SHELVER_PROCESSING_GUARANTEE"]["value"]
    assert guarantee == "exactly_once"
    # What the pods shelver-0 .. shelver-2 get: the same ids on every start, whatever the host or pid.
    group = env["SHELVER_GROUP_ID"]["value"]
    ids = [transactional_id(Settings(group_id=group, group_instance_id=f"{sts['metadata']['name']}-{i}",
                                     processing_guarantee=guarantee)) for i in range(spec["replicas"])]
    assert ids == [f"shelver-{group}-shelver-{i}" for i in range(3)]


def test_the_statefulset_runs_the_same_container_as_the_deployment_but_for_the_identity():
    """Probes, resources, image and security must not drift apart between the two modes."""
    deployment, sts = load("deployment.yaml")["spec"]["template"], load("statefulset/statefulset.yaml")["spec"]["template"]
    assert sts["metadata"]["labels"] == deployment["metadata"]["labels"]
    (d,), (s,) = deployment["spec"]["containers"], sts["spec"]["containers"]
    identity = {"SHELVER_GROUP_INSTANCE_ID", "SHELVER_PROCESSING_GUARANTEE"}
    assert [e for e in d["env"] if e["name"] not in identity] == [e for e in s["env"] if e["name"] not in identity]
    for key in set(d) | set(s):
        if key != "env":
            assert d.get(key) == s.get(key), f"statefulset/statefulset.yaml's {key} differs from deployment.yaml's"
    for key in set(deployment["spec"]) | set(sts["spec"]):
        if key != "containers":
            assert deployment["spec"].get(key) == sts["spec"].get(key), f"pod spec {key} differs"


# --- the image fetcher's egress -----------------------------------------------------------------------

BLOCKED = ["10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "169.254.170.2",
           "100.100.100.200", "168.63.129.16", "192.0.0.192", "0.0.0.0", "224.0.0.1", "255.255.255.255",
           "fd00:ec2::254", "fe80::1", "::1", "::ffff:169.254.169.254", "::a9fe:a9fe", "64:ff9b::a9fe:a9fe",
           "2002:a9fe:a9fe::1", "ff02::1"]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::1"]


def _allowed_by_ip_blocks(policy: dict, ip) -> set[int]:
    """The TCP ports the policy's ipBlock rules open to ``ip``."""
    ports = set()
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if not block or ip.version != ip_network(block["cidr"]).version:
                continue
            if ip in ip_network(block["cidr"]) and not any(ip in ip_network(e) for e in block.get("except", [])):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def test_network_policy_denies_private_and_link_local_egress_to_the_fetchers_pods():
    from consumer.adapters.images import STANDARD_PORTS

    policy = load("common/networkpolicy.yaml")
    assert "Egress" in policy["spec"]["policyTypes"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in (load("deployment.yaml"), load("statefulset/statefulset.yaml")):
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for text in BLOCKED:
        assert not _allowed_by_ip_blocks(policy, ip_address(text)), text
    for text in PUBLIC:
        assert _allowed_by_ip_blocks(policy, ip_address(text)) == set(STANDARD_PORTS), text
    # Only cluster DNS and the brokers besides: every other rule names pods, never addresses.
    for rule in policy["spec"]["egress"]:
        peers = rule["to"]
        assert all("ipBlock" in p for p in peers) or not any("ipBlock" in p for p in peers)


def test_the_review_console_runs_shelver_review_with_its_password_file_and_probes():
    deployment, service = load("review/deployment.yaml"), load("review/service.yaml")
    assert [o["kind"] for o in _objects(K8S / "review")] == ["Deployment", "Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] + container["args"] == ["shelver", "review"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["SHELVER_REVIEW_PASSWORD_FILE"].startswith(mounts["reviewers"] + "/")
    assert env["SHELVER_REVIEW_HOST"] == "0.0.0.0"  # reachable through its Service, not only from the pod
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["reviewers"]["secret"]["secretName"] == "shelver-reviewers"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    # not selected by the consumers' metrics Service or their egress policy
    assert pod["metadata"]["labels"] != load("common/service.yaml")["spec"]["selector"]
