"""Topic creation for Shelver's input, replay, output and DLQ topics.

Idempotent so that it can run on every deploy or test start: existing topics are left as they are.
``python -m consumer.adapters.admin`` creates them for the configured ``Settings`` (env ``SHELVER_*``).

`check_startup` is what ``shelver consume`` runs before loading its models: a broker that cannot be
reached, a topic that does not exist or a schema registry that does not answer ends the start with
one clear line instead of a consumer that waits forever for partitions that never come (or sends
every event to the dead-letter topic because its schema cannot be fetched).
"""
from __future__ import annotations

import logging
import sys
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.config import ConfigError, Settings, load_settings, mask_url


class StartupError(RuntimeError):
    """The environment is not ready (broker unreachable, topics missing, registry down); ``str()`` is one line."""


def check_startup(settings: Settings, timeout_s: float | None = None, topics: list[str] | None = None) -> dict[str, int]:
    """Wait up to ``timeout_s`` for the broker's metadata; every Shelver topic must exist.

    Returns each topic's partition count. librdkafka's own connection errors are collected (not
    printed line by line) and the last one is quoted in the `StartupError`.
    """
    timeout_s = settings.startup_timeout_s if timeout_s is None else timeout_s
    errors: list[KafkaError] = []
    quiet = logging.getLogger("shelver.startup.librdkafka")
    quiet.setLevel(logging.CRITICAL)  # reported once, below, instead of one line per retry
    conf = {**settings.kafka_common(), "error_cb": errors.append, "logger": quiet}
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:  # an unknown or invalid librdkafka option in SHELVER_KAFKA_OPTIONS
        raise ConfigError(f"SHELVER_KAFKA_OPTIONS: {exc.args[0].str()}") from None
    where = mask_url(settings.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb: librdkafka's reason (refused, DNS, TLS, SASL) beats "transport failure"
        specific = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN] or errors
        why = specific[-1].str() if specific else exc.args[0].str()
        raise StartupError(f"Kafka at {where} not reachable within {timeout_s:g} s "
                           f"(SHELVER_STARTUP_TIMEOUT_S): {why}") from None
    # hitl topics are not required here: the corrections reader runs without its topics, and whether the
    # review topic is required is consumer.startup's rule (`shelver consume` passes it in ``topics``).
    wanted = core_topics(settings) if topics is None else topics
    missing = [t for t in wanted if t not in metadata.topics or metadata.topics[t].error is not None]
    while missing and time.monotonic() < deadline:  # just created by a deploy step: metadata catches up
        time.sleep(0.5)
        try:
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException:  # the broker went away meanwhile: report the topics as they were last seen
            break
        missing = [t for t in wanted if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        raise StartupError(
            f"topic(s) missing on {where}: {', '.join(missing)} (create them with `python -m consumer.adapters.admin` "
            "or scripts/kafka-local create-topics; SHELVER_REPLAY_TOPIC= empty disables the replay topic)"
        )
    if topics is None:
        check_schema_registry(settings, max(1.0, deadline - time.monotonic()))
    return {t: len(metadata.topics[t].partitions) for t in wanted}


def check_schema_registry(settings: Settings, timeout_s: float) -> None:
    """With SHELVER_SCHEMA_REGISTRY_URL set, the registry must answer (credentials and TLS included)."""
    from schemas.wire import RegistryUnavailable, check_registry

    try:
        check_registry(settings.schema_registry_url, settings.schema_registry_options, timeout_s)
    except RegistryUnavailable as exc:
        raise StartupError(f"schema registry at {mask_url(settings.schema_registry_url)} not answering within "
                           f"{timeout_s:g} s (SHELVER_STARTUP_TIMEOUT_S): {exc}") from None


def core_topics(settings: Settings) -> list[str]:
    """Input, replay (when configured), output and DLQ: the service cannot run without them."""
    names = [settings.input_topic, settings.replay_topic, settings.output_topic, settings.dlq_topic]
    return list(dict.fromkeys(n for n in names if n))


def shelver_topics(settings: Settings) -> list[str]:
    """The topics the service reads and writes (the replay and hitl topics only when configured)."""
    names = [*core_topics(settings), settings.review_topic, settings.corrections_topic, settings.taxonomy_topic]
    return list(dict.fromkeys(n for n in names if n))


def compacted_topics(settings: Settings) -> set[str]:
    """Topics whose latest record per key is the state (corrections per product, taxonomy per model)."""
    return {n for n in (settings.corrections_topic, settings.taxonomy_topic) if n}


def ensure_topics(
    settings: Settings, partitions: int = 3, topics: list[str] | None = None, timeout_s: float = 30.0
) -> None:
    """Create ``topics`` (default: the Shelver topics) with ``partitions`` partitions; existing ones are fine."""
    names = topics if topics is not None else shelver_topics(settings)
    admin = AdminClient(settings.kafka_common())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    compact = compacted_topics(settings)
    missing = [NewTopic(n, num_partitions=1 if n == settings.taxonomy_topic else partitions,
                        config={"cleanup.policy": "compact"} if n in compact else {})
               for n in names if n not in existing]
    if not missing:
        return
    futures = admin.create_topics(missing, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:  # another process may have created it between list and create
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name}: {exc.args[0].str()}") from exc


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"shelver: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    ensure_topics(settings)
    print(f"topics ready on {settings.bootstrap_servers}: {', '.join(shelver_topics(settings))}")


if __name__ == "__main__":
    main()
