"""Topic creation for Shelver's input, replay, output and DLQ topics.

Idempotent so that it can run on every deploy or test start: existing topics are left as they are.
``python -m consumer.admin`` creates them for the configured ``Settings`` (env ``SHELVER_*``).
"""
from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.config import Settings


def shelver_topics(settings: Settings) -> list[str]:
    """The topics the service reads and writes (the replay topic only when configured)."""
    names = [settings.input_topic, settings.replay_topic, settings.output_topic, settings.dlq_topic]
    return list(dict.fromkeys(n for n in names if n))


def ensure_topics(
    settings: Settings, partitions: int = 3, topics: list[str] | None = None, timeout_s: float = 30.0
) -> None:
    """Create ``topics`` (default: the Shelver topics) with ``partitions`` partitions; existing ones are fine."""
    names = topics if topics is not None else shelver_topics(settings)
    admin = AdminClient(settings.kafka_common())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [NewTopic(n, num_partitions=partitions) for n in names if n not in existing]
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
    settings = Settings()
    ensure_topics(settings)
    print(f"topics ready on {settings.bootstrap_servers}: {', '.join(shelver_topics(settings))}")


if __name__ == "__main__":
    main()
