"""The corrections reader's rules (`ProjectionUpdater._handle`): which records count, which are withdrawn,
and how read errors are met. Fake messages and a fake producer stand where Kafka would be; the broker
tests are in tests/test_hitl_kafka.py."""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
from confluent_kafka import KafkaError

from consumer.corrections import Base, ProjectionState, ProjectionUpdater
from schemas import CategoryCorrected, TaxonomyPublished
from schemas.wire import RegistryUnavailable, SingleObjectCodec

LABELS, MODEL, TAX, COR = 4, "v-test", "taxonomy", "corrections"
CODEC = SingleObjectCodec()
D = [0.7, 0.1, 0.1, 0.1]


class Msg:
    def __init__(self, topic, offset, value=None, key=None, err=None):
        self._t, self._o, self._v, self._k, self._e = topic, offset, value, key, err

    def topic(self): return self._t
    def partition(self): return 0
    def offset(self): return self._o
    def value(self): return self._v
    def key(self): return self._k
    def error(self): return self._e


class Producer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, value, key, headers=None, on_delivery=None):
        self.sent.append((key, dict(headers)["error"].decode()))

    def poll(self, timeout=0):
        return 0


class Consumer:
    def __init__(self):
        self.seeks = []

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))


class Model:
    def __init__(self, q, targets):
        self.projections = (q, tuple(targets), "base-1")
        self.labels, self.model_version = tuple(range(LABELS)), MODEL
        self.artifact = SimpleNamespace(text_model=SimpleNamespace(
            predict_proba=lambda texts: np.full((len(texts), LABELS), 1.0 / LABELS)))

    def set_projections(self, q, targets, version, adapter=None):
        self.projections = (q, tuple(targets), version)


def q_for(n: int) -> np.ndarray:
    q = np.random.default_rng(0).random((n, LABELS)) + 0.1
    return q / q.sum(1, keepdims=True)


def reader(codec=None, live_from: int = 0) -> ProjectionUpdater:
    """The reader's state and rules, without its Kafka clients (records at offsets >= live_from are live)."""
    u = object.__new__(ProjectionUpdater)
    threading.Thread.__init__(u, name="projections", daemon=True)
    targets = ("DRESS", "TOPS")
    u.s = SimpleNamespace(taxonomy_topic=TAX, corrections_topic=COR, dlq_topic="dlq")
    u.model, u.metrics = Model(q_for(2), targets), None
    u.state = ProjectionState(Base("base-1", targets, q_for(2)), LABELS, MODEL, 3.0, 20.0, 0.3, "adapter", 1.0)
    u.codec, u.producer, u.consumer = codec or CODEC, Producer(), Consumer()
    u.caught_up, u.stopping = threading.Event(), threading.Event()
    u.applied_version, u.dlq_sent, u.registry_backoff_s = "base-1", 0, 0.0
    u._live_from, u._behind = {(TAX, 0): live_from, (COR, 0): live_from}, set()
    return u


def correction(offset, pid, category, dist=None, text=None):
    rec = CategoryCorrected(product_id=pid, category=category, source_distribution=dist, model_version=MODEL,
                            text=text, reviewer="alice", corrected_at=datetime(2026, 12, 1, tzinfo=timezone.utc))
    return Msg(COR, offset, CODEC.encode(rec.to_avro(), "category_corrected", COR), pid.encode())


def taxonomy(offset, version, targets):
    rec = TaxonomyPublished(version=version, model_version=MODEL, fallback=targets[0], targets=list(targets),
                            projections=q_for(len(targets)).tolist(), carried_from={}, document="{}",
                            published_at=datetime(2026, 12, 1, tzinfo=timezone.utc))
    return Msg(TAX, offset, CODEC.encode(rec.to_avro(), "taxonomy_published", TAX), MODEL.encode())


def read(u: ProjectionUpdater, *msgs) -> ProjectionUpdater:
    if u._handle(list(msgs)):
        u._apply()
    return u


def test_the_rule_is_the_same_whichever_topic_is_read_first():
    # Before: a correction naming a category that a later-read taxonomy introduced was dropped for good.
    tax = taxonomy(0, "tax-2", ("DRESS", "TOPS", "SWIMWEAR"))
    swim, dress = correction(0, "p1", "SWIMWEAR", D), correction(1, "p2", "DRESS", D)
    first = read(reader(live_from=10), tax, swim, dress)
    second = read(reader(live_from=10), swim, dress, tax)
    assert first.model.projections[2] == second.model.projections[2]
    assert first.model.projections[2].startswith("tax-2+c2.")
    assert sorted(second.state.corrections) == ["p1", "p2"]


def test_a_live_correction_naming_an_unknown_category_is_reported_kept_and_not_counted():
    u = read(reader(), correction(0, "p1", "SWIMWEAR", D))
    assert u.producer.sent == [(b"p1", "unknown_category")]
    assert "p1" in u.state.corrections and u.model.projections[2] == "base-1"  # the rules skip it


@pytest.mark.parametrize("newest, code", [
    (correction(1, "p1", "TOPS"), "no_distribution"),  # neither a distribution nor a text
    (Msg(COR, 1, b"\x00not a record", b"p1"), "undecodable"),
])
def test_an_unusable_newest_correction_withdraws_the_products_earlier_one(newest, code):
    # Compaction keeps only the newest record of p1: an instance starting later has no correction for it,
    # so the running one must not keep the earlier one either (before: it did, and the two rules differed).
    running = read(reader(), correction(0, "p1", "DRESS", D))
    assert running.model.projections[2].startswith("base-1+c1.")
    read(running, newest)
    later = read(reader(live_from=2), newest)
    assert running.state.corrections == later.state.corrections == {}
    assert running.model.projections[2] == later.model.projections[2] == "base-1"
    assert running.producer.sent == [(b"p1", code)] and later.producer.sent == []


def test_a_distribution_that_is_not_finite_is_no_distribution():
    # Before: [inf, ...] normalized to [nan, 0, ...] and was counted, a bias toward DRESS for every product.
    u = read(reader(), correction(0, "p1", "DRESS", [float("inf"), 0.1, 0.1, 0.1]))
    assert u.state.corrections == {} and u.producer.sent == [(b"p1", "no_distribution")]
    assert "p2" in read(u, correction(1, "p2", "DRESS", [float("inf"), 0.1, 0.1, 0.1], text="Midi dress")).state.corrections


def test_a_reader_error_that_is_not_fatal_is_logged_and_reading_goes_on():
    transport = Msg(COR, -1, err=KafkaError(KafkaError._TRANSPORT, "broker down", fatal=False))
    u = read(reader(), transport, correction(0, "p1", "DRESS", D))  # before: the thread ended here
    assert u.model.projections[2].startswith("base-1+c1.")
    with pytest.raises(RuntimeError, match="fenced"):
        read(u, Msg(COR, -1, err=KafkaError(KafkaError._FATAL, "fenced", fatal=True)))


class RegistryDownOnce:
    def __init__(self):
        self.calls = 0

    def decode(self, data, schema, topic):
        self.calls += 1
        if self.calls == 1:
            raise RegistryUnavailable("schema registry: HTTP 503")
        return CODEC.decode(data, schema, topic)


@pytest.mark.parametrize("first", [taxonomy(3, "tax-2", ("DRESS", "TOPS", "SWIMWEAR")),
                                   correction(3, "p0", "TOPS", D)])
def test_a_record_the_registry_cannot_decode_yet_is_read_again_after_a_back_off(first):
    # Before: a correction ended the reader thread; a taxonomy was logged as undecodable and skipped for good.
    u = reader(RegistryDownOnce())
    later = correction(4, "p1", "DRESS", D)
    assert not u._handle([first, later])
    assert u.consumer.seeks == [(first.topic(), 0, 3)] + ([(COR, 0, 4)] if first.topic() == TAX else [])
    assert u.registry_backoff_s == 0.5 and u.state.corrections == {}
    read(u, first, later)  # what the consumer returns after the seek
    assert "p1" in u.state.corrections and u.registry_backoff_s == 0.0
    assert u.model.projections[2].startswith("tax-2+c1." if first.topic() == TAX else "base-1+c2.")
