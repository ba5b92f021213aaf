"""Unit tests of the pure commit rule and of the dead-letter size rules (no broker)."""
from __future__ import annotations

import hashlib

import pytest
from confluent_kafka import KafkaError

from consumer import dead_letters
from consumer.commits import CommitLedger, CommitSchedule

A0, A1 = ("in", 0), ("in", 1)


def test_nothing_is_committable_before_its_batch_is_delivered():
    ledger = CommitLedger()
    ledger.open(1, {A0: 10})
    assert ledger.take() == {}
    ledger.complete(1)
    assert ledger.take() == {A0: 10}
    assert ledger.take() == {} and len(ledger) == 0


def test_a_later_batch_delivered_first_waits_for_the_earlier_one_on_the_same_partition():
    ledger = CommitLedger()
    ledger.open(1, {A0: 10})
    ledger.open(2, {A0: 20, A1: 5})
    ledger.complete(2)
    assert ledger.take() == {A1: 5}  # partition 1 has no gap; partition 0 waits for batch 1
    ledger.complete(1)
    assert ledger.take() == {A0: 20}  # the prefix end: batch 2's offset, in one commit


def test_an_undelivered_batch_blocks_only_its_own_partitions():
    ledger = CommitLedger()
    ledger.open(1, {A0: 10})
    ledger.open(2, {A1: 7})
    ledger.open(3, {A0: 15})
    ledger.complete(2)
    ledger.complete(3)
    assert ledger.take() == {A1: 7}
    assert ledger.open_partitions() == {A0}


def test_a_lost_partition_is_never_committed_even_when_its_batches_complete():
    ledger = CommitLedger()
    ledger.open(1, {A0: 10, A1: 4})
    ledger.lose([A0])
    ledger.complete(1)
    assert ledger.take() == {A1: 4}
    ledger.open(2, {A0: 30})  # reassigned later: new batches count again
    ledger.complete(2)
    assert ledger.take() == {A0: 30}


def test_offsets_must_follow_consume_order():
    ledger = CommitLedger()
    ledger.open(1, {A0: 10})
    with pytest.raises(ValueError):
        ledger.open(2, {A0: 10})


def test_record_errors_are_size_and_validity_not_pipeline_failures():
    assert dead_letters.is_record_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert dead_letters.is_record_error(KafkaError(KafkaError.RECORD_LIST_TOO_LARGE))
    assert dead_letters.is_record_error(KafkaError(KafkaError.INVALID_RECORD))
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT):
        assert not dead_letters.is_record_error(KafkaError(code))
    assert not dead_letters.is_record_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True))


def test_cuts_go_to_the_budget_then_shrink_to_nothing_then_give_up():
    budget = dead_letters.value_budget(1_000_000)
    assert 0 < budget < 1_000_000
    assert dead_letters.next_cut(1_040_000, None, budget) == budget
    assert dead_letters.next_cut(1_040_000, budget, budget) == budget // 4
    # Small enough for the client but refused by the topic: a quarter each time, then headers only.
    assert dead_letters.next_cut(400_000, None, budget) == 100_000
    sizes, kept = [], None
    while (kept := dead_letters.next_cut(400_000, kept, budget)) is not None:
        sizes.append(kept)
    assert sizes[-1] == 0 and sizes == sorted(sizes, reverse=True) and len(sizes) < 12


def test_an_empty_value_with_an_oversized_key_is_cut_once_to_headers_and_a_short_key():
    # Before: an empty value gave up at the first refusal, so a tombstone with a 2 MB key could never be
    # dead-lettered and stopped the service on every restart.
    budget = dead_letters.value_budget(1_000_000)
    assert dead_letters.next_cut(0, None, budget) == 0
    assert dead_letters.next_cut(0, 0, budget) is None  # refused even so: give up
    key, value, headers = dead_letters.truncated(b"k" * 2_000_000, None, 0)
    assert len(key) == dead_letters.KEY_KEEP and value == b"" and dict(headers)["original_key_size"] == b"2000000"


def test_truncated_copy_says_what_the_original_was():
    value, key = bytes(range(256)) * 100, b"k" * 5000
    k, v, headers = dead_letters.truncated(key, value, 1000)
    h = dict(headers)
    assert v == value[:1000] and k == key[:dead_letters.KEY_KEEP]
    assert h["truncated"] == b"true" and h["original_size"] == str(len(value)).encode()
    assert h["original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["original_key_size"] == b"5000"
    _, _, short_key_headers = dead_letters.truncated(b"id", value, 10)
    assert "original_key_size" not in dict(short_key_headers)


def test_commit_schedule_holds_offsets_for_the_interval_then_commits_the_newest_per_partition():
    s = CommitSchedule(interval_s=1.0)
    s.add({A0: 10})
    assert s.due(now=100.0) == {A0: 10}  # the first commit is not held back
    s.add({A0: 20, A1: 5})
    s.add({A0: 30})
    assert s.due(now=100.5) == {}  # within the interval: they wait
    assert s.due(now=101.0) == {A0: 30, A1: 5}
    assert s.due(now=105.0) == {}  # nothing waiting, nothing to commit
    s.add({A1: 9})
    assert s.due(now=105.0) == {A1: 9}  # after a quiet spell: at once


def test_commit_schedule_force_takes_everything_and_interval_zero_commits_every_time():
    s = CommitSchedule(interval_s=60.0)
    s.add({A0: 1})
    assert s.due(now=0.0) == {A0: 1}
    s.add({A0: 2})
    assert s.due(now=1.0) == {} and s.due(now=1.0, force=True) == {A0: 2}
    every = CommitSchedule(interval_s=0.0)
    for offset in (1, 2, 3):
        every.add({A0: offset})
        assert every.due(now=0.0) == {A0: offset}


def test_commit_schedule_never_commits_a_lost_partitions_waiting_offsets():
    s = CommitSchedule(interval_s=60.0)
    s.add({A0: 1})
    s.due(now=0.0)
    s.add({A0: 7, A1: 3})
    s.lose([A0])
    assert s.due(now=0.0, force=True) == {A1: 3}
