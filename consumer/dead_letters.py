"""Dead letters that always fit, and which produce errors belong to one record rather than the pipeline.

A record the broker or client refuses *because of itself* (too large, invalid) must not stop the
service: every restart would meet it again and the partition would be blocked for good. Such an
event goes to the DLQ instead, cut down to fit if it is its own size that is refused, with headers
that let an operator match the truncated copy to the original (its size and SHA-256).
"""
from __future__ import annotations

import hashlib

from confluent_kafka import KafkaError

# Produce errors that concern one record only: the next record can still be delivered.
RECORD_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,  # raised by produce() (client limit) or reported by the broker (topic limit)
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
})
SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
KEY_KEEP = 1024  # a truncated dead letter keeps at most this much of the key
HEADROOM = 4096  # batch/record framing and headers, below the producer's message.max.bytes


def is_record_error(err: KafkaError) -> bool:
    """True when the error is about this record alone (DLQ it), False when about the pipeline (stop)."""
    return err.code() in RECORD_ERRORS and not err.fatal()


def describe(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"


def value_budget(message_max_bytes: int) -> int:
    """The largest value a dead letter may carry under the producer's size limit."""
    return max(0, message_max_bytes - KEY_KEEP - HEADROOM)


def next_cut(original: int, previous: int | None, budget: int) -> int | None:
    """How many bytes of an ``original``-byte value to keep after a size refusal of the last attempt
    (``previous`` bytes; None = the whole value). First cut: to the budget; each later refusal (a topic
    limit below the client's) keeps a quarter; after a cut-down letter with no value was refused: None, give
    up. An empty value (a tombstone) is still cut once, to 0: that also cuts an oversized key to KEY_KEEP."""
    if previous == 0:
        return None
    size = original if previous is None else previous
    if previous is None and original > budget:
        return budget
    return size // 4


def truncated(key: bytes | None, value: bytes | None, keep: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The first ``keep`` bytes of ``value`` (key cut to KEY_KEEP) and the headers that say so."""
    value = value or b""
    headers = [
        ("truncated", b"true"),
        ("original_size", str(len(value)).encode()),
        ("original_sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    if key is not None and len(key) > KEY_KEEP:
        headers += [("original_key_size", str(len(key)).encode()),
                    ("original_key_sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:KEY_KEEP]
    return key, value[:keep], headers
