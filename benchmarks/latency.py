"""Latency under a fixed load: events produced at R/s over P partitions, the service running alongside.

Latency of an event = the broker's append time of its result (the output topic is created with
``message.timestamp.type=LogAppendTime``, so it is the moment the result was delivered) minus the
input record's create time (set by the producer when it is sent). Both clocks are this machine's.
Reported overall and per input partition, over the events sent after a short warm-up.

    python benchmarks/latency.py --rate 40 --seconds 60 [--partitions 6] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from image_server import CpuMeter  # noqa: E402

from consumer.config import Settings  # noqa: E402
from consumer.adapters.kafka_io import make_producer  # noqa: E402
from consumer.cli.sample import sample_events  # noqa: E402
from consumer.service import Service  # noqa: E402
from schemas.wire import make_codec  # noqa: E402

WARMUP_S = 5.0  # events sent in the first seconds are left out (the first batches pay one-off costs)


@dataclass
class LatencyRun:
    rate: float
    seconds: float
    partitions: int
    sent: int
    latencies_ms: dict[int, np.ndarray] = field(default_factory=dict)  # input partition → latencies
    pauses: int = 0
    batches: int = 0
    mean_batch: float = 0.0
    mean_infer_ms: float = 0.0
    share: float = 0.0  # of the measured capacity (set by run_all)
    cpu: dict = field(default_factory=dict)  # core-seconds while producing and serving (image_server.CpuMeter)

    @property
    def all_ms(self) -> np.ndarray:
        return np.concatenate(list(self.latencies_ms.values())) if self.latencies_ms else np.zeros(0)

    def percentiles(self, values: np.ndarray | None = None) -> tuple[float, float, float]:
        v = self.all_ms if values is None else values
        return tuple(float(x) for x in np.percentile(v, [50, 95, 99])) if len(v) else (float("nan"),) * 3

    def partition_p99s(self) -> dict[int, float]:
        return {p: self.percentiles(v)[2] for p, v in sorted(self.latencies_ms.items())}

    def fairness(self) -> float:
        """Worst partition's p99 over the median partition's p99 (1.0 = perfectly even)."""
        p99 = list(self.partition_p99s().values())
        return max(p99) / max(float(np.median(p99)), 1e-9) if p99 else float("nan")


class Timed:
    """The categorizer with every batch's size and inference time recorded."""

    def __init__(self, model):
        self._model, self.stats = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def categorize(self, texts, images):
        t = time.perf_counter()
        out = self._model.categorize(texts, images)
        self.stats.append((len(texts), time.perf_counter() - t))
        return out


def _topics(s: Settings, partitions: int) -> None:
    admin = AdminClient(s.kafka_common())
    new = [
        NewTopic(s.input_topic, num_partitions=partitions),
        # the broker stamps each result when it appends it: the delivery time, not the send time
        NewTopic(s.output_topic, num_partitions=partitions, config={"message.timestamp.type": "LogAppendTime"}),
        NewTopic(s.dlq_topic, num_partitions=1),
    ]
    for f in admin.create_topics(new, operation_timeout=30).values():
        f.result()


def run_latency(base: Settings, model, catalogue, image_url: str, rate: float, seconds: float,
                partitions: int = 6, batch: int = 32, pids: tuple[int | None, int | None] = (None, None)) -> LatencyRun:
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(update=dict(
        group_id=f"lat-{tag}", input_topic=f"lat.in.{tag}", replay_topic=None, output_topic=f"lat.out.{tag}",
        dlq_topic=f"lat.dlq.{tag}", max_batch_size=batch,
        image_allowed_hosts=[*base.image_allowed_hosts, "127.0.0.1"], log_level="WARNING",
    ))
    _topics(s, partitions)
    n = int(rate * seconds)
    codec = make_codec(None)
    events = sample_events(catalogue, image_url, n, seed=2)
    values = [(e.product_id.encode(), codec.encode(e.to_avro(), "product_event", s.input_topic)) for e in events]

    model = Timed(model)
    svc = Service(s, model)
    thread = threading.Thread(target=svc.run, name="service")
    thread.start()
    while not svc.assignment and thread.is_alive():
        time.sleep(0.01)
    time.sleep(1.0)  # let the fetcher settle on its partitions before the clock starts

    sent: dict[tuple[int, int], int] = {}  # (partition, offset) → create time (ms)

    def on_delivery(err, msg):
        if err is None:
            sent[(msg.partition(), msg.offset())] = msg.timestamp()[1]

    producer = make_producer(s)  # as a backend would publish: librdkafka's batching (linger.ms 5), acks=all
    meter = CpuMeter(*pids)  # broker, image server
    t0 = time.perf_counter()
    warm_until_ms = time.time() * 1000 + WARMUP_S * 1000
    for i, (key, value) in enumerate(values):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.produce(s.input_topic, value, key, partition=i % partitions, on_delivery=on_delivery)
        producer.poll(0)
    producer.flush(30)
    deadline = time.perf_counter() + max(60.0, seconds)
    while svc.completed < n and thread.is_alive() and time.perf_counter() < deadline:
        time.sleep(0.05)
    cpu = meter.stop()
    svc.stop()
    thread.join()
    if svc.completed < n:
        raise RuntimeError(f"latency run stopped after {svc.completed}/{n} events: {svc.failure}")

    run = LatencyRun(rate, seconds, partitions, n, pauses=getattr(svc, "pauses", 0), cpu=cpu)
    per: dict[int, list[float]] = {p: [] for p in range(partitions)}
    for part, offset, appended in _read_results(s, codec, n):
        created = sent.get((part, offset))
        if created is not None and created >= warm_until_ms:
            per[part].append(appended - created)
    run.latencies_ms = {p: np.array(v) for p, v in per.items() if v}
    stats = model.stats
    if stats:
        run.batches = len(stats)
        run.mean_batch = float(np.mean([b for b, _ in stats]))
        run.mean_infer_ms = float(np.mean([t for _, t in stats])) * 1e3
    return run


def _read_results(s: Settings, codec, n: int):
    """(source partition, source offset, broker append time ms) of every result on the output topic."""
    c = Consumer({**s.kafka_common(), "group.id": f"lat-reader-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    meta = c.list_topics(s.output_topic, timeout=10).topics[s.output_topic]
    c.assign([TopicPartition(s.output_topic, p, 0) for p in meta.partitions])
    out, deadline = [], time.time() + 60
    while len(out) < n and time.time() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            r = codec.decode(m.value(), "category_assigned", s.output_topic)
            out.append((r["source_partition"], r["source_offset"], m.timestamp()[1]))
    c.close()
    return out


def describe(run: LatencyRun) -> str:
    p50, p95, p99 = run.percentiles()
    parts = " ".join(f"p{p}={v:.0f}" for p, v in run.partition_p99s().items())
    return (f"{run.rate:.1f} ev/s x {run.seconds:.0f}s over {run.partitions} partitions: p50 {p50:.0f} ms, "
            f"p95 {p95:.0f} ms, p99 {p99:.0f} ms; per-partition p99 [{parts}] worst/median {run.fairness():.2f}; "
            f"pauses {run.pauses}; batches {run.batches}, mean size {run.mean_batch:.1f}, "
            f"mean inference {run.mean_infer_ms:.0f} ms")


def main(argv: list[str] | None = None) -> None:
    from consumer.logs import configure
    from image_server import image_server
    from models.artifact import load_categorizer
    from training.data import data_dir, load_catalogue

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data")
    args = p.parse_args(argv)
    settings = Settings()
    configure("WARNING")
    root = data_dir(args.data)
    catalogue = load_catalogue(root)
    model = load_categorizer(settings.resolved_artifact_dir(), engine=settings.inference_engine)
    with image_server(root / "images") as (url, _):
        run = run_latency(settings, model, catalogue, url, args.rate, args.seconds, args.partitions, args.batch_size)
    print(describe(run))


if __name__ == "__main__":
    main()
