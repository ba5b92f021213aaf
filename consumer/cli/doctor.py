"""``shelver doctor``: check a deployment's configuration before (or instead of) starting it.

One table, one verdict per line (``ok``, ``warn``, ``FAIL``), exit status 1 when any line
fails. It runs the checks a first batch would otherwise trip over, each reported on its own
rather than stopping at the first: the settings, the broker, the schema registry when one is
configured, the topics ``shelver consume``
requires (``consumer.startup``: the four core topics, and the review topic when results are
routed to it, so the doctor cannot pass where consume exits 1), the artifact
(it loads, and its label space agrees with its projections), the image allow-list and the
device TensorFlow will use. Read-only: it creates no topic and joins no group.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

OK, WARN, FAIL = "ok", "warn", "FAIL"

_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$",
                       re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # OK, WARN or FAIL
    detail: str


def format_table(checks: Sequence[Check]) -> str:
    width = max([len("check"), *(len(c.name) for c in checks)])
    lines = [f"{'check':<{width}}  verdict  detail", f"{'-' * width}  -------  {'-' * 40}"]
    lines += [f"{c.name:<{width}}  {c.verdict:<7}  {c.detail}" for c in checks]
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.verdict == FAIL for c in checks) else 0


# ---- pure checks ---------------------------------------------------------------------------


def check_topics(wanted: dict[str, str | None], found: dict[str, int | str]) -> list[Check]:
    """``wanted``: role → topic name (None: disabled); ``found``: topic → partition count or an error."""
    checks = []
    for role, name in wanted.items():
        label = f"topic {role}"
        if not name:
            checks.append(Check(label, OK, "disabled"))
        elif name not in found:
            checks.append(Check(label, FAIL, f"{name}: does not exist (create it: python -m consumer.adapters.admin)"))
        elif isinstance(found[name], str):
            checks.append(Check(label, FAIL, f"{name}: {found[name]}"))
        else:
            n = int(found[name])
            extra = f" (at most {n} instances get partitions)" if role == "input" else ""
            checks.append(Check(label, OK if n > 0 else FAIL, f"{name}: {n} partition{'s' * (n != 1)}{extra}"))
    return checks


def check_label_space(labels: Sequence[str], text_labels: Sequence[str], image_outputs: int,
                      projections_shape: tuple[int, int], targets: Sequence[str],
                      taxonomy_targets: Sequence[str], fallback: str) -> Check:
    """The artifact's parts agree: both models over the manifest's labels, q[T, S] over those
    labels and the taxonomy's categories, and the fallback category is one of them."""
    problems = []
    if list(text_labels) != list(labels):
        problems.append("text model labels differ from the manifest")
    if image_outputs != len(labels):
        problems.append(f"image model has {image_outputs} outputs for {len(labels)} labels")
    if tuple(projections_shape) != (len(targets), len(labels)):
        problems.append(f"projections are {projections_shape[0]}x{projections_shape[1]}, "
                        f"expected {len(targets)} categories x {len(labels)} labels")
    if list(targets) != list(taxonomy_targets):
        problems.append("projection categories differ from the artifact's taxonomy")
    if fallback not in targets:
        problems.append(f"fallback category {fallback!r} is not a category")
    if problems:
        return Check("label space", FAIL, "; ".join(problems))
    return Check("label space", OK, f"{len(labels)} source labels -> {len(targets)} categories")


def check_allow_list(entries: Sequence[str]) -> Check:
    """Entries the fetcher reads as IPs/CIDRs or host names (optionally with a port); wide or useless ones are warned."""
    if not entries:
        return Check("image allow-list", OK, "empty: only public addresses are fetched")
    from consumer.adapters.allowlist import AllowRule  # the fetcher's own reading of an entry
    from consumer.adapters.images import METADATA_ADDRESSES  # refused by the fetcher even when allow-listed

    bad, wide, useless = [], [], []
    for entry in entries:
        text = entry.strip()
        try:
            rule = AllowRule.parse(text)
        except ValueError:
            bad.append(entry)
            continue
        if rule.host is not None:
            if not _HOSTNAME.match(rule.host):
                bad.append(entry)
            continue
        net = rule.net
        if net.prefixlen < (8 if net.version == 4 else 32):
            wide.append(text)
        if net.num_addresses == 1 and net.network_address in METADATA_ADDRESSES:
            useless.append(text)
    if bad:
        return Check("image allow-list", FAIL, f"not a host, IP or CIDR: {', '.join(map(repr, bad))}")
    notes = []
    if wide:
        notes.append(f"very wide ranges open the SSRF guard: {', '.join(wide)}")
    if useless:
        notes.append(f"no effect, metadata addresses stay refused: {', '.join(useless)}")
    return Check("image allow-list", WARN if notes else OK,
                 "; ".join(notes) if notes else f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: "
                 + ", ".join(e.strip() for e in entries))


# ---- adapters --------------------------------------------------------------------------------


def _quiet_logger() -> logging.Logger:
    """librdkafka's own connection errors would interleave with the table; the check reports them."""
    logger = logging.getLogger("shelver.doctor.librdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def check_broker_and_topics(settings, timeout_s: float) -> list[Check]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from consumer.startup import artifact_review_threshold, required_topics

    wanted = required_topics(settings, artifact_review_threshold(settings))  # the rule `shelver consume` starts by
    from consumer.logs import Scrubber
    from consumer.secrets import mask_url

    where = mask_url(settings.bootstrap_servers)  # no credentials in the table (nor in librdkafka's reason)
    scrub = Scrubber(settings.secret_values())
    try:
        # Inside the try: a client option librdkafka refuses (e.g. an unknown sasl.mechanism) is a finding too.
        admin = AdminClient({**settings.kafka_common(), "logger": _quiet_logger()})
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        return [Check("broker", FAIL, f"{where}: {scrub(reason)}")] + [
            Check(f"topic {role}", FAIL, f"{name}: not checked, broker unreachable") if name
            else Check(f"topic {role}", OK, "disabled") for role, name in wanted.items()]
    broker = Check("broker", OK, f"{where}: {len(meta.brokers)} broker(s), "
                                 f"cluster {meta.cluster_id}")
    found: dict[str, int | str] = {}
    for name, topic in meta.topics.items():
        found[name] = str(topic.error) if topic.error is not None else len(topic.partitions)
    return [broker, *check_topics(wanted, found)]


def check_schema_registry(settings, timeout_s: float) -> Check:
    """The registry `shelver consume` checks at start (consumer.adapters.admin.check_schema_registry)."""
    from consumer.adapters.admin import StartupError, check_schema_registry
    from consumer.logs import Scrubber
    from consumer.secrets import mask_url

    if not settings.schema_registry_url:
        return Check("schema registry", OK, "none: single-object encoding")
    try:
        check_schema_registry(settings, timeout_s)
    except StartupError as exc:
        return Check("schema registry", FAIL, Scrubber(settings.secret_values())(str(exc)))
    return Check("schema registry", OK, f"{mask_url(settings.schema_registry_url)} answers")


def check_artifact(settings) -> list[Check]:
    """Loads the artifact as ``shelver consume`` does (TensorFlow, warm-up) and checks its parts."""
    try:
        directory = settings.resolved_artifact_dir()
        from models.artifact import load_categorizer
        from models.taxonomy_document import load_taxonomy

        cat = load_categorizer(directory, image_weight=settings.image_weight, engine=settings.inference_engine,
                               abstain_threshold=settings.abstain_threshold, fallback=settings.fallback_category)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return [Check("artifact", FAIL, f"{type(exc).__name__}: {exc}")]
    art = cat.artifact
    taxonomy_file = Path(directory) / "taxonomy.yaml"
    taxonomy_targets = load_taxonomy(taxonomy_file).targets if taxonomy_file.exists() else art.targets
    return [
        Check("artifact", OK, f"{art.manifest['version']} (taxonomy {cat.taxonomy_version}) from {directory}"),
        check_label_space(cat.labels, art.text_model.labels, int(art.image_model.output_shape[-1]),
                          tuple(art.projections.shape), art.targets, taxonomy_targets, cat.fallback),
    ]


def check_device() -> Check:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return Check("device", OK, f"GPU: {', '.join(g.name for g in gpus)}")
    cuda = "with" if tf.test.is_built_with_cuda() else "without"
    return Check("device", OK, f"CPU (no GPU visible; TensorFlow {tf.__version__} built {cuda} CUDA)")


def run(timeout_s: float = 10.0, skip_artifact: bool = False) -> tuple[list[Check], int]:
    """All checks; returns the rows and the exit status."""
    from consumer.config import ConfigError, load_settings

    try:
        settings = load_settings()  # the same strict load as `shelver consume`
    except ConfigError as exc:  # one line, secrets already left out
        checks = [Check("configuration", FAIL, str(exc))]
        return checks, exit_code(checks)
    from consumer.logs import configure

    # The table is the output; log lines (JSON, stderr, credentials scrubbed) only for real trouble.
    configure("WARNING", secrets=settings.secret_values())
    checks = [Check("configuration", OK, f"group {settings.group_id}, batches of {settings.max_batch_size}, "
                                         f"{'schema registry' if settings.schema_registry_url else 'single-object'} "
                                         "encoding")]
    checks += check_broker_and_topics(settings, timeout_s)
    checks.append(check_schema_registry(settings, timeout_s))  # consume's start-up check too
    if not skip_artifact:
        checks += check_artifact(settings)
    checks.append(check_allow_list(settings.image_allowed_hosts))
    if not skip_artifact:
        checks.append(check_device())
    return checks, exit_code(checks)


def main(timeout_s: float = 10.0, skip_artifact: bool = False) -> int:
    checks, code = run(timeout_s, skip_artifact)
    print(format_table(checks))
    print("doctor: " + ("all checks passed" if code == 0 else
                        f"{sum(c.verdict == FAIL for c in checks)} check(s) failed"))
    return code
