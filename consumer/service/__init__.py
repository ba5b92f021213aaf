"""The Kafka service and its named parts.

- ``service``: the orchestrator (``Service``): poll, batch, hand out work, commit in order, rebalance.
- ``records``: the record types (``Item``, ``Out``, ``Batch``).
- ``builders``: pure record building (decode; results, reviews, dead letters and their replacements).
- ``delivery``: the delivery strategy: ``AtLeastOnce`` and ``Transactional`` behind one interface.
- ``worker``: the inference worker thread.
- ``partitions``: assignment, paused, revoked and lost partitions in immutable sets; flow control applied.
- ``rebalance``: draining on revoke and at shutdown, dropping lost partitions' work.
"""
from consumer.service.delivery import PipelineFailed
from consumer.service.records import Batch, Item, Out
from consumer.service.service import Service

__all__ = ["Batch", "Item", "Out", "PipelineFailed", "Service"]
