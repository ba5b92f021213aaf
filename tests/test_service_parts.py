"""Unit tests of the service's named parts (consumer/service/): no broker, fake clients where Kafka would be."""
from __future__ import annotations

import time
from concurrent.futures import Future
from datetime import datetime, timezone

import numpy as np
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException

from consumer.config import Settings
from consumer.adapters.kafka_io import produce
from consumer.service.builders import OLDEST_S, RecordBuilder, arrival, decode
from consumer.service.delivery import AtLeastOnce, PipelineFailed, Transactional, make_delivery
from consumer.service.partitions import Partitions, flow_step
from consumer.service.records import Batch, Out
from consumer.service.worker import InferenceWorker, infer
from models.categorizer import Decision
from schemas import ProductEvent
from schemas.wire import make_codec

IN0, IN1 = ("in", 0), ("in", 1)
CODEC = make_codec(None)
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Msg:
    """The parts of confluent_kafka.Message the service reads."""

    def __init__(self, value, key=b"k", topic="in", partition=0, offset=0, ts=(TIMESTAMP_CREATE_TIME, 1_000)):
        self._v, self._k, self._t, self._p, self._o, self._ts = value, key, topic, partition, offset, ts

    def value(self): return self._v
    def key(self): return self._k
    def topic(self): return self._t
    def partition(self): return self._p
    def offset(self): return self._o
    def timestamp(self): return self._ts
    def error(self): return None


def event(pid="p-1", **kw) -> ProductEvent:
    return ProductEvent(**{"product_id": pid, "title": "Floral midi dress", "event_time": NOW, **kw})


def event_msg(pid="p-1", **kw) -> Msg:
    return Msg(CODEC.encode(event(pid).to_avro(), "product_event", "in"), key=pid.encode(), **kw)


class Model:
    model_version, taxonomy_version, image_size = "m1", "t1", (32, 32)
    default_review_threshold = 0.5

    def __init__(self, confidence=0.9, fail=False, poison=None):
        self.confidence, self.fail, self.poison, self.calls = confidence, fail, poison, []

    def categorize(self, texts, images):
        self.calls.append((list(texts), list(images)))
        if self.fail:
            raise ValueError("boom")
        if self.poison and any(self.poison in t for t in texts):
            raise ValueError(f"cannot read {self.poison}")
        return [Decision("dresses", 0.1, (("tops", 0.5),), False, True, self.confidence) for _ in texts]


def settings(**kw) -> Settings:
    return Settings(**{"bootstrap_servers": "localhost:1", "output_topic": "out", "dlq_topic": "dlq", **kw})


def scored_batch(items, model=None, seq=0) -> Batch:
    model = model or Model()
    batch = Batch(seq, items, time.perf_counter(), model=model)
    images: Future = Future()
    images.set_result(([(None, "no_url") for _ in batch.good], 0.0))
    batch.images = images
    infer(batch)
    return batch


# ---- records ------------------------------------------------------------------------------------
def test_batch_offsets_good_items_drop_and_summary():
    good, poison = decode(CODEC, event_msg(offset=4)), decode(CODEC, Msg(b"\x00junk", offset=7))
    other = decode(CODEC, event_msg("p-2", partition=1, offset=2))
    batch = scored_batch([good, poison, other])
    assert batch.next_offsets() == {IN0: 8, IN1: 3}
    assert batch.good == [good, other] and poison.error is not None
    batch.drop(frozenset({IN1}))
    assert other.dropped and not good.dropped
    batch.emitted = time.perf_counter()
    Batch(1, [decode(CODEC, event_msg(offset=9))], 0.0, emitted=1.0).drop(frozenset({IN0}))  # emitted: kept
    s = batch.summary(time.perf_counter(), completed=3, elapsed=1.0)
    assert (s["events"], s["dlq"], s["images_ok"], s["images_failed"], s["overall_eps"]) == (2, 1, 0, 0, 3.0)


def test_an_emitted_batch_keeps_its_items_when_the_partition_is_lost():
    batch = Batch(0, [decode(CODEC, event_msg())], 0.0, emitted=1.0)
    batch.drop(frozenset({IN0}))
    assert not batch.items[0].dropped


# ---- builders -----------------------------------------------------------------------------------
def test_decode_keeps_poison_with_its_reason_and_arrival_falls_back_to_now():
    item = decode(CODEC, Msg(b"not avro"))
    assert item.event is None and item.error.code and item.decode_s >= 0
    assert decode(CODEC, event_msg()).event == event()
    assert arrival(Msg(b"", ts=(TIMESTAMP_CREATE_TIME, 2_500)), now=4.0) == 2.5
    assert arrival(Msg(b"", ts=(TIMESTAMP_CREATE_TIME, 2_500)), now=100.0) == 100.0 - OLDEST_S  # far past: bounded
    assert abs(arrival(Msg(b"", ts=(TIMESTAMP_NOT_AVAILABLE, 0))) - time.time()) < 5


def test_a_partition_whose_producer_clock_runs_ahead_is_not_starved_by_a_backlog_elsewhere():
    """Regression: batches take the oldest record timestamps first, and a partition stamped an hour ahead was
    never the oldest while another partition kept a backlog: 0 of its records taken."""
    from consumer.batching import MicroBatcher

    batcher = MicroBatcher(max_size=4, max_wait_s=0.0, key=lambda m: m.partition())
    taken = []
    for r in range(20):  # every 100 ms partition 0 brings 4 records, partition 1 (its clock 1 h ahead) 1
        now = 1_000_000.0 + r / 10
        msgs = [Msg(b"", partition=0, ts=(TIMESTAMP_CREATE_TIME, int((now - 0.01) * 1000))) for _ in range(4)]
        msgs.append(Msg(b"", partition=1, ts=(TIMESTAMP_CREATE_TIME, int((now + 3600) * 1000))))
        batcher.add(msgs, now, [arrival(m, now) for m in msgs])
        taken += [m.partition() for m in batcher.take()]  # 4 a round: a backlog builds up
    assert taken.count(1) >= 12  # its records take their turn by when they were received


def test_a_partition_with_a_backlog_stamped_long_ago_does_not_starve_another():
    """Regression: a backfill stamped a day in the past was always the oldest: while it had a backlog, every
    batch was its own and the other partition's records waited as long as the backlog lasted (0 of 20 taken)."""
    from consumer.batching import MicroBatcher

    batcher = MicroBatcher(max_size=4, max_wait_s=0.0, key=lambda m: m.partition())
    taken = []
    for r in range(200):  # every 100 ms partition 0 brings 4 backfilled records, partition 1 one live record
        now = 1_000_000.0 + r / 10
        msgs = [Msg(b"", partition=0, ts=(TIMESTAMP_CREATE_TIME, int((now - 86_400) * 1000))) for _ in range(4)]
        msgs.append(Msg(b"", partition=1, ts=(TIMESTAMP_CREATE_TIME, int(now * 1000))))
        batcher.add(msgs, now, [arrival(m, now) for m in msgs])
        taken += [m.partition() for m in batcher.take()]
    # 800 taken of 1,000 brought: a live record waits about OLDEST_S (50 rounds) behind backfilled records read
    # before it, then takes its turn by read time (120 of its 200 here; 0 before).
    assert taken.count(1) >= 100


def test_records_a_result_per_event_a_review_under_the_threshold_and_a_dead_letter_per_poison():
    builder = RecordBuilder.from_settings(settings(review_topic="review"), CODEC, Model())
    assert builder.review_threshold == 0.5  # the model's default when the setting is unset
    batch = scored_batch([decode(CODEC, event_msg()), decode(CODEC, Msg(b"junk", offset=1))], Model(confidence=0.2))
    outs = builder.records(batch)
    assert [(o.kind, o.topic) for o in outs] == [("result", "out"), ("review", "review"), ("dlq", "dlq")]
    result = CODEC.decode(outs[0].value, "category_assigned", "out")
    assert result["category"] == "dresses" and result["needs_review"] and result["source_offset"] == 0
    headers = dict(outs[2].headers)
    assert headers["source_offset"] == b"1" and outs[2].value == b"junk" and outs[2].code == headers["error"].decode()
    confident = builder.records(scored_batch([decode(CODEC, event_msg())], Model(confidence=0.9)))
    assert [o.kind for o in confident] == ["result"]
    dropped = scored_batch([decode(CODEC, event_msg())])
    dropped.items[0].dropped = True
    assert builder.records(dropped) == []


def test_replacements_dead_letter_a_refused_result_then_cut_a_refused_dead_letter_then_give_up():
    builder = RecordBuilder(CODEC, "out", "dlq", dlq_budget=100)
    item = decode(CODEC, Msg(b"x" * 1000))
    too_big = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    refused = builder.replacement(Out(item, "result", "out", b"k", b"v"), too_big)
    assert refused.kind == "dlq" and refused.code == "result_undeliverable" and refused.kept is None
    cuts = []
    while refused is not None:
        cuts.append(refused.kept)
        refused = builder.replacement(refused, too_big)
    assert cuts == [None, 100, 25, 6, 1, 0]
    invalid = KafkaError(KafkaError.INVALID_RECORD)
    headers_only = builder.replacement(builder.dead_letter(item, "bad", "why"), invalid)
    assert headers_only.kept == 0 and headers_only.value == b"" and builder.replacement(headers_only, invalid) is None


# ---- delivery -----------------------------------------------------------------------------------
class Producer:
    """A fake producer: records what is produced; ``refuse`` maps a topic to the error its reports carry
    (or, with ``before=True``, that produce() raises); ``full`` BufferErrors come first."""

    def __init__(self, refuse=None, before=False, full=0):
        self.sent, self.calls, self.pending, self.refuse, self.before, self.full = [], [], [], refuse or {}, before, full

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        if self.full:
            self.full -= 1
            raise BufferError()
        err = self.refuse.get(topic)
        if err is not None and self.before:
            raise KafkaException(err)
        self.sent.append((topic, value))
        self.pending.append((on_delivery, err))

    def poll(self, timeout=0):
        self.calls.append(("poll", timeout))
        while self.pending:
            cb, err = self.pending.pop(0)
            cb(err, None)

    def flush(self, timeout=None):
        self.poll()
        return 0

    def __getattr__(self, name):  # transactional calls are recorded
        return lambda *a: self.calls.append((name, *a))


class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1


class Metrics:
    def __init__(self):
        self.commits = Counter()


def delivery(cls, producer, **kw):
    failures, settled = [], []
    d = (cls(settings(), RecordBuilder(CODEC, "out", "dlq"), Metrics(), failures.append, lambda: settled.append(1))
         if cls is Transactional else cls(settings(), RecordBuilder(CODEC, "out", "dlq"), Metrics(), failures.append))
    d.producer = producer
    return d, failures, settled


def one_result_batch() -> Batch:
    batch = scored_batch([decode(CODEC, event_msg())])
    batch.outs = RecordBuilder(CODEC, "out", "dlq").records(batch)
    return batch


def test_make_delivery_chooses_by_the_guarantee_and_only_at_least_once_coalesces_commits():
    alo = make_delivery(settings(commit_interval_ms=250), RecordBuilder(CODEC, "out", "dlq"), Metrics(), print, print)
    eos = make_delivery(settings(processing_guarantee="exactly_once"), RecordBuilder(CODEC, "out", "dlq"), Metrics(),
                        print, print)
    assert type(alo) is AtLeastOnce and alo.commit_interval_s == 0.25
    assert type(eos) is Transactional and eos.commit_interval_s == 0.0


def test_produce_serves_reports_while_the_local_queue_is_full():
    p = Producer(full=2)
    produce(p, "out", b"v", b"k", on_delivery=lambda err, msg: None)
    assert p.sent == [("out", b"v")] and p.calls[:2] == [("poll", 0.1), ("poll", 0.1)]


def test_at_least_once_delivers_in_order_and_counts_the_batch_complete_after_the_reports():
    d, failures, _ = delivery(AtLeastOnce, Producer())
    batch = one_result_batch()
    d.emit(batch)
    assert batch.emitted and batch.pending == 1
    d.poll(0)
    assert batch.pending == 0 and [o.kind for o in batch.acked] == ["result"] and not failures


def test_at_least_once_dead_letters_a_refused_result_and_fails_on_a_pipeline_error():
    d, failures, _ = delivery(AtLeastOnce, Producer(refuse={"out": KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)}))
    batch = one_result_batch()
    d.emit(batch)
    d.poll(0)
    assert [o.kind for o in batch.acked] == ["dlq"] and batch.pending == 0 and not failures
    d, failures, _ = delivery(AtLeastOnce, Producer(refuse={"out": KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)},
                                                    before=True))
    d.emit(batch := one_result_batch())
    assert failures and "delivery to out failed" in failures[0] and batch.pending == 0


class Committer:
    def __init__(self, errors=()):
        self.errors, self.commits = list(errors), []

    def commit(self, offsets, asynchronous):
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        self.commits.append(offsets)

    def consumer_group_metadata(self):
        return "group-metadata"


def test_at_least_once_commit_retries_retriable_errors_and_gives_up_on_others():
    d, _, _ = delivery(AtLeastOnce, Producer())
    c = Committer([KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, retriable=True)])
    d.commit(c, ["offsets"])
    assert c.commits == [["offsets"]] and d.metrics.commits.n == 1
    c = Committer([KafkaError(KafkaError.UNKNOWN_MEMBER_ID)])
    d.commit(c, ["offsets"])  # redelivery, not loss: logged, not raised
    assert c.commits == [] and d.metrics.commits.n == 1
    d.commit(c, [])
    assert d.metrics.commits.n == 1


def test_an_at_least_once_commit_that_the_coordinator_never_answers_stops_at_its_deadline():
    import threading

    class Frozen(Committer):
        def __init__(self):
            super().__init__()
            self.release = threading.Event()

        def commit(self, offsets, asynchronous):
            self.release.wait(30)  # librdkafka's synchronous commit, with the coordinator gone

    d, _, _ = delivery(AtLeastOnce, Producer())
    d.commit_timeout_s = 0.3
    c = Frozen()
    t0 = time.monotonic()
    with pytest.raises(PipelineFailed, match="offset commit not done within 0.3 s"):
        d.commit(c, ["offsets"])
    c.release.set()
    assert time.monotonic() - t0 < 1.0 and d.metrics.commits.n == 0


def test_leaving_the_group_at_shutdown_has_a_deadline():
    import threading

    from consumer.adapters.kafka_io import close_within

    release = threading.Event()
    hung = type("Consumer", (), {"close": lambda self: release.wait(30)})()
    t0 = time.monotonic()
    assert close_within(hung, 0.2) is False and time.monotonic() - t0 < 1.0
    release.set()
    assert close_within(type("Consumer", (), {"close": lambda self: None})(), 5) is True


def test_transactional_settles_inside_the_transaction_and_commits_offsets_with_it():
    p = Producer()
    d, failures, settled = delivery(Transactional, p)
    d.start()
    d.emit(one_result_batch())
    assert settled == [1] and d.txn_open  # the service computes the offsets, then calls commit
    d.commit(Committer(), ["offsets"])
    names = [c[0] for c in p.calls if c[0] != "poll"]
    assert names == ["init_transactions", "begin_transaction", "send_offsets_to_transaction", "commit_transaction"]
    assert not d.txn_open and d.metrics.commits.n == 1
    d.commit(Committer(), ["offsets"])  # outside a transaction: nothing
    assert d.metrics.commits.n == 1


def test_transactional_aborts_a_round_with_a_refused_record_and_resends_it_replaced():
    first = Producer(refuse={"out": KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)})
    second = Producer()
    d, failures, settled = delivery(Transactional, first)
    d._new_producer = lambda: second
    batch = one_result_batch()
    d.emit(batch)
    timeouts = {c[0]: c[1] for c in first.calls + second.calls if c[0] in ("abort_transaction", "init_transactions")}
    assert 29 < timeouts["abort_transaction"] <= 30 and 59 < timeouts["init_transactions"] <= 60
    assert [o.kind for o in batch.outs] == ["dlq"] and second.sent[0][0] == "dlq" and settled == [1]


def test_transactional_replaces_a_record_refused_before_it_left_and_then_its_replacement_refused_by_the_broker():
    """Regression: the dead letter replacing a result refused before it left was sent in the same round; when the
    broker refused that dead letter too, its cut-down copy was keyed by the dead letter, not by the result in
    batch.outs, so every round re-sent the result and met the same two refusals: an endless abort-and-retry."""
    batch = one_result_batch()
    whole_event = len(batch.items[0].msg.value())

    class Refusing(Producer):  # the result is too big for the client; the DLQ topic takes no whole event
        rounds = 0

        def begin_transaction(self, *a):
            Refusing.rounds += 1
            assert Refusing.rounds <= 10, "still aborting and re-sending after 10 rounds"

        def produce(self, topic, value, key=None, headers=None, on_delivery=None):
            if topic == "out":
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if len(value or b"") >= whole_event else None
            self.sent.append((topic, value))
            self.pending.append((on_delivery, err))

    p = Refusing()
    d, failures, settled = delivery(Transactional, p)
    d._new_producer = lambda: p
    d.emit(batch)
    assert settled == [1] and failures == []
    [dead_letter] = batch.outs
    assert dead_letter.kind == "dlq" and 0 <= dead_letter.kept < whole_event  # the cut-down copy went out
    assert Refusing.rounds == 3  # result → whole dead letter → cut-down dead letter


def test_transactional_fails_when_a_round_has_a_pipeline_error_and_aborts_an_open_transaction_at_close():
    p = Producer(refuse={"out": KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)})
    d, _, settled = delivery(Transactional, p)
    with pytest.raises(PipelineFailed, match="transaction aborted"):
        d.emit(one_result_batch())
    assert not settled and not d.txn_open
    d.txn_open = True
    d.abort()
    assert p.calls[-1] == ("abort_transaction", 10)


def test_transactional_calls_retry_retriable_errors_and_stop_on_fatal_ones():
    d, _, _ = delivery(Transactional, Producer())
    errors = [KafkaError(KafkaError._TIMED_OUT, retriable=True)]

    def flaky():
        if errors:
            raise KafkaException(errors.pop())
        return "ok"

    assert d._txn(flaky) == "ok"

    def fenced():
        raise KafkaException(KafkaError(KafkaError._FENCED, fatal=True))

    with pytest.raises(PipelineFailed, match="fenced"):
        d._txn(fenced)


def test_every_transactional_step_has_a_deadline_for_all_its_attempts_together():
    d, _, _ = delivery(Transactional, Producer())
    d.step_s = 0.3
    calls = []

    def coordinator_unreachable(*args):  # librdkafka's answer when the step's timeout runs out
        calls.append(args[-1])
        time.sleep(min(args[-1], 0.1))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, retriable=True))

    t0 = time.monotonic()
    with pytest.raises(PipelineFailed, match="not done within 0.3 s"):
        d._txn(coordinator_unreachable, timeout_s=d.step_s)
    assert time.monotonic() - t0 < 0.6 and all(0 < t <= 0.3 for t in calls)  # each attempt gets what is left
    calls.clear()
    d.producer.send_offsets_to_transaction = coordinator_unreachable
    d.txn_open = True
    with pytest.raises(PipelineFailed, match="not done within 0.3 s"):
        d.commit(Committer(), ["offsets"])
    assert calls and all(0 < t <= 0.3 for t in calls)  # send_offsets_to_transaction got a timeout
    calls.clear()
    d.producer.send_offsets_to_transaction = lambda *a: None
    d.producer.commit_transaction = coordinator_unreachable
    with pytest.raises(PipelineFailed, match="not done within 0.3 s"):
        d.commit(Committer(), ["offsets"])
    assert calls and all(0 < t <= 0.3 for t in calls)  # and commit_transaction


def test_a_transaction_whose_records_are_not_delivered_by_the_deadline_stops_without_settling():
    class Unreachable(Producer):
        def flush(self, timeout=None):
            self.calls.append(("flush", timeout))
            return len(self.pending)  # nothing was delivered

    p = Unreachable()
    d, _, settled = delivery(Transactional, p)
    d.step_s = 0.5
    with pytest.raises(PipelineFailed, match="not delivered within 0.5 s"):
        d.emit(one_result_batch())
    assert ("flush", 0.5) in p.calls and not settled and d.txn_open  # the shutdown aborts it


class Draining:
    """The parts of the service a drain's checks read."""

    def __init__(self, alive, inflight, deadline):
        from consumer.service.rebalance import Rebalancing

        self.check = Rebalancing._check_waits.__get__(self)
        self.worker = type("W", (), {"alive": lambda _: alive})()
        self.metrics = type("M", (), {"heartbeats": type("H", (), {"beat": lambda _: None})()})()
        self.s, self.inflight, self.drain_deadline = settings(drain_timeout_s=1), inflight, deadline


def test_a_drain_past_its_deadline_or_waiting_on_a_dead_inference_thread_fails():
    waiting, inferred = scored_batch([decode(CODEC, event_msg())]), scored_batch([decode(CODEC, event_msg())])
    waiting.inferred, inferred.inferred = False, True
    Draining(alive=True, inflight=[waiting], deadline=time.monotonic() + 5).check()  # within its deadline
    with pytest.raises(PipelineFailed, match="drain not done within drain_timeout_s=1 s .1 batches in flight, 1 not"):
        Draining(alive=True, inflight=[waiting], deadline=time.monotonic() - 0.1).check()
    with pytest.raises(PipelineFailed, match="inference thread is gone"):
        Draining(alive=False, inflight=[waiting], deadline=None).check()
    Draining(alive=False, inflight=[inferred], deadline=None).check()  # nothing waits on it: not a failure


def test_messages_read_with_an_eviction_are_not_batched_for_the_partitions_just_lost():
    from collections import deque

    from consumer.batching import MicroBatcher
    from consumer.commits import CommitLedger, CommitSchedule
    from consumer.service.service import Service

    class Evicted(Msg):
        def error(self):
            return KafkaError(KafkaError._MAX_POLL_EXCEEDED)

    class Svc(Service):
        def _drain(self):  # nothing formed yet: the real drain would find nothing to do either
            pass

    svc = Svc.__new__(Svc)
    svc.codec, svc.failure, svc.inflight, svc.last_message = CODEC, None, deque(), None
    svc.batcher = MicroBatcher(8, 0.1, key=lambda it: it.tp)
    svc.ledger, svc.schedule = CommitLedger(), CommitSchedule(0.0)
    svc.partitions = Partitions().assign({IN0})
    svc._accept([event_msg(offset=41), event_msg(offset=42), Evicted(None), event_msg(offset=43)])
    # Before: the three events came back after the drop, were batched and their offsets committed for a
    # partition another member owned.
    assert svc.partitions.assigned == frozenset() and svc.batcher.counts() == {} and svc.last_message is None


def test_the_worker_is_alive_until_its_thread_ends():
    worker = InferenceWorker(1, type("H", (), {"inference": lambda *a, **k: None})())
    assert worker.alive()  # not started yet: nothing waits on it
    worker.start()
    assert worker.alive()
    worker.stop()
    worker.thread.join(5)
    assert not worker.alive()


# ---- the inference worker ---------------------------------------------------------------------
def test_infer_scores_the_good_events_and_records_a_failure_on_the_batch():
    batch = scored_batch([decode(CODEC, event_msg()), decode(CODEC, Msg(b"junk"))])
    assert len(batch.decisions) == 1 and batch.error is None and batch.model.calls[0][0] == ["Floral midi dress"]
    failed = scored_batch([decode(CODEC, event_msg())], Model(fail=True))
    assert failed.error == "inference failed: ValueError: boom"


def titled_msg(pid: str, title: str, offset: int) -> Msg:
    return Msg(CODEC.encode(event(pid, title=title).to_avro(), "product_event", "in"), key=pid.encode(), offset=offset)


def test_an_event_the_model_fails_on_alone_is_dead_lettered_and_the_rest_of_its_batch_gets_results():
    items = [decode(CODEC, titled_msg(f"p-{i}", t, i)) for i, t in enumerate(["Midi dress", "POISON top", "Jeans"])]
    batch = scored_batch(items, Model(poison="POISON"))
    assert batch.error is None and batch.decisions[1] is None and None not in (batch.decisions[0], batch.decisions[2])
    outs = RecordBuilder(CODEC, "out", "dlq").records(batch)
    assert [(o.kind, o.item.msg.offset()) for o in outs] == [("result", 0), ("dlq", 1), ("result", 2)]
    headers = dict(outs[1].headers)
    assert headers["error"] == b"inference_failed" and headers["error_reason"] == b"ValueError: cannot read POISON"
    assert outs[1].value == items[1].msg.value()  # the original bytes, to replay once the model is fixed
    assert batch.summary(time.perf_counter(), 3, 1.0)["dlq"] == 1


def test_a_lone_event_the_model_fails_on_is_dead_lettered_when_the_model_scores_the_canary():
    batch = scored_batch([decode(CODEC, titled_msg("p-0", "POISON top", 0))], Model(poison="POISON"))
    assert batch.error is None and batch.decisions == [None]
    assert [o.kind for o in RecordBuilder(CODEC, "out", "dlq").records(batch)] == ["dlq"]


def test_a_model_whose_image_path_is_broken_fails_the_batch_even_when_text_only_events_score():
    class BrokenImages(Model):
        def categorize(self, texts, images):
            self.calls.append((list(texts), list(images)))
            if any(img is not None for img in images):
                raise ValueError("image model unavailable")
            return super().categorize(texts, images)

    model = BrokenImages()
    batch = Batch(0, [decode(CODEC, titled_msg(f"p-{i}", "Midi dress", i)) for i in range(3)], time.perf_counter(),
                  model=model)
    images: Future = Future()
    images.set_result(([(None, "no_url"), (np.zeros((32, 32, 3), np.uint8), None), (None, "no_url")], 0.0))
    batch.images = images
    infer(batch)
    # The canary (with a white image) fails too: the model's fault, not the event's (before: a dead letter).
    assert batch.error == "inference failed: ValueError: image model unavailable"
    assert all(it.error is None for it in batch.items)


def test_a_model_that_fails_on_every_event_and_on_the_canary_fails_the_batch_and_dead_letters_nothing():
    model = Model(fail=True)
    batch = scored_batch([decode(CODEC, titled_msg(f"p-{i}", "Midi dress", i)) for i in range(3)], model)
    assert batch.error == "inference failed: ValueError: boom"
    assert all(it.error is None for it in batch.items)
    assert [len(texts) for texts, _ in model.calls] == [3, 1, 1, 1, 1]  # the batch, each event, the canary
    assert model.calls[-1][1][0].shape == (32, 32, 3)  # the canary's white image, at the model's size


def test_the_worker_scores_batches_in_order_and_marks_them_inferred():
    beats = []

    class Beats:
        def inference(self, busy):
            beats.append(busy)

    worker = InferenceWorker(2, Beats())
    worker.start()
    batches = [scored_batch([decode(CODEC, event_msg(offset=i))], seq=i) for i in range(2)]
    for b in batches:
        b.decisions = None
        assert worker.submit(b, 1.0)
    deadline, done = time.monotonic() + 10, []
    while len(done) < 2 and time.monotonic() < deadline:
        done += worker.finished()
        time.sleep(0.01)
    assert [b.seq for b in done] == [0, 1] and all(b.inferred and b.decisions for b in done)
    worker.stop()
    worker.thread.join(5)
    assert not worker.thread.is_alive() and beats[:2] == [True, False]


def test_a_full_worker_queue_refuses_after_the_timeout():
    worker = InferenceWorker(1, None)  # not started: nothing takes from the queue
    assert worker.submit(Batch(0, [], 0.0), 0.01) and worker.full()
    assert not worker.submit(Batch(1, [], 0.0), 0.01)
    assert not worker.idle()


# ---- partition state --------------------------------------------------------------------------
def test_partition_state_changes_return_new_immutable_sets():
    empty = Partitions()
    a = empty.assign([IN0, IN1])
    assert empty.assigned == frozenset() and a.assigned == {IN0, IN1} and a.changed
    r = a.unpaused().revoke([IN1])
    assert r.assigned == {IN0} and r.revoked == {IN1} and r.changed
    lost = r.lose([IN0])
    assert lost.assigned == frozenset() and lost.lost == {IN0}
    back = lost.assign([IN0, IN1])
    assert back.lost == frozenset() and back.revoked == frozenset()
    assert isinstance(back.assigned, frozenset)
    with pytest.raises(AttributeError):
        back.assigned = frozenset()  # frozen


class PausingConsumer:
    def __init__(self):
        self.calls = []

    def pause(self, tps):
        self.calls.append(("pause", sorted((t.topic, t.partition) for t in tps)))

    def resume(self, tps):
        self.calls.append(("resume", sorted((t.topic, t.partition) for t in tps)))


def test_flow_step_resumes_a_new_assignment_then_pauses_and_resumes_per_partition():
    c = PausingConsumer()
    state, newly = flow_step(c, Partitions().assign([IN0, IN1]), {IN0: 16}, 16)
    assert c.calls == [("resume", [IN0, IN1]), ("pause", [IN0])] and newly == 1
    assert state.paused == {IN0} and not state.changed
    state, newly = flow_step(c, state, {IN0: 8}, 16)  # resumed at half
    assert c.calls[-1] == ("resume", [IN0]) and state.paused == frozenset() and newly == 0


def test_service_module_is_a_short_orchestrator():
    from pathlib import Path

    import consumer.service.service as service

    assert len(Path(service.__file__).read_text().splitlines()) <= 200
    assert "processing_guarantee" not in Path(service.__file__).read_text()  # the delivery strategy chooses


def test_a_throwaway_reader_has_its_own_group_and_never_commits_by_itself(monkeypatch):
    from consumer.adapters import kafka_io

    seen = []
    monkeypatch.setattr(kafka_io, "Consumer", lambda conf: seen.append(conf) or conf)
    a, b = kafka_io.make_reader(settings(group_id="g"), "replay"), kafka_io.make_reader(settings(group_id="g"), "replay")
    assert a["group.id"].startswith("g.replay.") and a["group.id"] != b["group.id"]
    assert a["enable.auto.commit"] is False and a["enable.partition.eof"] is True
    assert kafka_io.make_reader(settings(), "show", {"enable.partition.eof": False})["enable.partition.eof"] is False
