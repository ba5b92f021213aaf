"""Measures what the hardening is for, against a running broker (e.g. `KAFKA_PORT=39107
KAFKA_STATE_DIR=.kafka/manual scripts/kafka-local start`):

  python benchmarks/robustness.py --bootstrap 127.0.0.1:39107 large --size 1040000
  python benchmarks/robustness.py --bootstrap 127.0.0.1:39107 large --size 5000000   # input topic limit raised
  python benchmarks/robustness.py --bootstrap 127.0.0.1:39107 kill9 --guarantee exactly_once --kills 3

``large``: 3 good events, one event of ``--size`` bytes (well-formed Avro whose description breaks
the schema), 3 good events, on one partition; runs the service until 7 events are done (or it
fails) and prints what came out. ``kill9``: the harness of tests/test_guarantees_kafka.py (kill -9
mid-stream ``--kills`` times, then a clean run) and a read_committed reader's counts.
Uses the small test model (tests/tiny_categorizer.py): this measures delivery, not the model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from consumer.config import Settings  # noqa: E402
from consumer.cli.sample import publish  # noqa: E402
from schemas import ProductEvent  # noqa: E402
from schemas.wire import make_codec  # noqa: E402


def topic(admin, prefix, partitions=1, **config) -> str:
    name = f"bench.{prefix}.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions, config=config)])[name].result()
    return name


def read_all(bootstrap, name, timeout=5.0) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest",
                  "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    c.assign([TopicPartition(name, 0)])
    out = []
    while msgs := c.consume(100, timeout):
        out += [m for m in msgs if not m.error()]
    c.close()
    return out


def large(args) -> dict:
    from tiny_categorizer import TinyCategorizer

    from consumer.service import Service

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    limit = {"max.message.bytes": str(args.size + 1_000_000)} if args.size > 1_000_000 else {}
    s = Settings(bootstrap_servers=args.bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                 input_topic=topic(admin, "in", **limit), replay_topic=None, output_topic=topic(admin, "out"),
                 dlq_topic=topic(admin, "dlq"), max_batch_size=8, max_batch_wait_ms=50)
    now = datetime.now(timezone.utc)
    codec = make_codec(None)
    record = {**ProductEvent(product_id="huge", title="Huge", event_time=now).to_avro()}
    pad = args.size - len(codec.encode({**record, "description": ""}, "product_event", s.input_topic)) - 4
    huge = codec.encode({**record, "description": "x" * pad}, "product_event", s.input_topic)
    good = [ProductEvent(product_id=f"g{i}", title="Cotton t-shirt", event_time=now) for i in range(6)]
    publish(s, good[:3])
    p = Producer({"bootstrap.servers": args.bootstrap, "message.max.bytes": args.size + 1_000_000})
    p.produce(s.input_topic, huge, b"huge")
    assert p.flush(30) == 0
    publish(s, good[3:])
    svc = Service(s, TinyCategorizer(), max_events=7)
    outcome = {}

    def run():
        try:
            outcome["rc"] = svc.run()
        except BaseException as exc:  # the code before the fix raised out of run()
            outcome["rc"] = f"crashed: {type(exc).__name__}: {exc}"

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    dlq = read_all(args.bootstrap, s.dlq_topic)
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": s.group_id})
    committed = c.committed([TopicPartition(s.input_topic, 0)], 10)[0].offset
    c.close()
    headers = {k: v.decode() for k, v in (dlq[0].headers() or [])} if dlq else {}
    return {"event_bytes": len(huge), "service_rc": outcome.get("rc", "still running"),
            "results": len(read_all(args.bootstrap, s.output_topic)), "dlq_records": len(dlq),
            "dlq_value_bytes": len(dlq[0].value()) if dlq else None,
            "dlq_headers": {k: headers[k] for k in ("error", "truncated", "original_size") if k in headers},
            "sha256_matches": headers.get("original_sha256") == hashlib.sha256(huge).hexdigest(),
            "committed_offset": committed, "of": 7}


def kill9(args) -> dict:
    from test_guarantees_kafka import kill_restart

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    s = Settings(bootstrap_servers=args.bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                 input_topic=topic(admin, "in", 3), replay_topic=topic(admin, "replay", 3),
                 output_topic=topic(admin, "out", 3), dlq_topic=topic(admin, "dlq"), max_batch_size=5)
    report = kill_restart(s, args.events, args.kills, args.guarantee)
    return {"guarantee": args.guarantee, **report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    sub = ap.add_subparsers(dest="case", required=True)
    lg = sub.add_parser("large")
    lg.add_argument("--size", type=int, default=1_040_000)
    k = sub.add_parser("kill9")
    k.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="exactly_once")
    k.add_argument("--kills", type=int, default=3)
    k.add_argument("--events", type=int, default=120)
    args = ap.parse_args()
    print(json.dumps((large if args.case == "large" else kill9)(args)))


if __name__ == "__main__":
    main()
