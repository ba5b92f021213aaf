"""What the dashboard and the taxonomy page show, read from the topics (never committing).

A `Tally` thread reads the review, corrections and taxonomy topics from the beginning with a throwaway
reader and keeps: the model's category per reviewed product, the latest correction per product (each for
the ``review_dashboard_max_products`` newest products, so memory stays bounded however long the topics
are), and the latest taxonomy published for the artifact's model. `Tally.summary` turns that into the dashboard's
numbers (pure, in `summarize`). The review lag comes from the review group's committed offsets (finished
offsets named in the commit metadata count as done); the current ``taxonomy_version`` from the newest
result on the output topic.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumer.adapters.kafka_io import make_reader
from consumer.config import Settings
from consumer.logs import get_logger
from consumer.review.ledger import decode_done
from models.taxonomy_document import Taxonomy, load_taxonomy, parse_taxonomy
from schemas import CategoryAssigned, CategoryCorrected, TaxonomyPublished
from schemas.wire import WireFormatError, make_codec

log = get_logger("shelver.review.stats")


@dataclass(frozen=True)
class Decision:
    product_id: str
    category: str
    reviewer: str | None
    at: datetime


def summarize(model_choice: dict[str, str], decisions: list[Decision], now: datetime, hours: int = 24) -> dict:
    """Decisions per hour (the last ``hours``), per reviewer, and per category the share the model had right
    among the reviewed products whose model choice is known (keyed by the model's category)."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    per_hour = Counter()
    for d in decisions:
        if d.at >= start:
            per_hour[(d.at - start) // timedelta(hours=1)] += 1
    hourly = [((start + timedelta(hours=i)).strftime("%H:00"), per_hour.get(i, 0)) for i in range(hours)]
    per_reviewer = Counter(d.reviewer or "(none)" for d in decisions)
    right, seen = Counter(), Counter()
    for d in decisions:
        model = model_choice.get(d.product_id)
        if model is not None:
            seen[model] += 1
            right[model] += d.category == model
    accuracy = {c: (right[c] / seen[c], seen[c]) for c in sorted(seen)}
    return {"hourly": hourly, "per_reviewer": sorted(per_reviewer.items(), key=lambda kv: (-kv[1], kv[0])),
            "accuracy": accuracy, "decisions": len(decisions)}


class Newest(OrderedDict):
    """A map that keeps only its ``limit`` most recently written keys (a rewrite counts as new)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(a, float) - np.asarray(b, float)).sum())


class Artifact:
    """The served artifact's taxonomy and projections, read without TensorFlow."""

    def __init__(self, folder: Path):
        manifest = json.loads((folder / "manifest.json").read_text())
        self.model_version = manifest["version"]
        self.labels = list(manifest.get("label_space", {}).get("labels", []))
        data = np.load(folder / "projections.npz")
        self.targets = [str(t) for t in data["targets"]]
        self.q = data["q"]
        self.taxonomy = load_taxonomy(folder / "taxonomy.yaml")


class Tally(threading.Thread):
    def __init__(self, settings: Settings, artifact: Artifact):
        super().__init__(name="review-tally", daemon=True)
        self.settings, self.artifact = settings, artifact
        self.codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.model_choice: dict[str, str] = Newest(settings.review_dashboard_max_products)
        self.corrections: dict[str, Decision] = Newest(settings.review_dashboard_max_products)
        self.published: TaxonomyPublished | None = None
        self._cache: tuple[float, dict] | None = None
        self.topics = [t for t in (settings.review_topic, settings.corrections_topic, settings.taxonomy_topic) if t]

    def run(self) -> None:
        reader = make_reader(self.settings, "review-tally", {"fetch.min.bytes": 1, "fetch.wait.max.ms": 100})
        try:
            while not self._halt.is_set():
                try:
                    md = reader.list_topics(timeout=5)
                    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in self.topics if t in md.topics
                             for p in md.topics[t].partitions]
                    if parts:
                        break
                except KafkaException:
                    pass
                self._halt.wait(1)
            reader.assign(parts)
            while not self._halt.is_set():
                for msg in reader.consume(200, 0.2):
                    if not msg.error():
                        self._take(msg)
        except Exception:  # noqa: BLE001 - the dashboard shows what was read so far
            log.error("review tally stopped", exc_info=True)
        finally:
            reader.close()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def _take(self, msg) -> None:
        topic, value = msg.topic(), msg.value()
        try:
            if topic == self.settings.review_topic:
                rec = CategoryAssigned.from_avro(self.codec.decode(value, "category_assigned", topic))
                with self._lock:
                    self.model_choice[rec.product_id] = rec.category
            elif topic == self.settings.corrections_topic:
                key = (msg.key() or b"").decode(errors="replace")
                if value is None:  # tombstone: the product's correction is withdrawn
                    with self._lock:
                        self.corrections.pop(key, None)
                    return
                rec = CategoryCorrected.from_avro(self.codec.decode(value, "category_corrected", topic))
                with self._lock:
                    self.corrections[rec.product_id] = Decision(rec.product_id, rec.category, rec.reviewer,
                                                                rec.corrected_at)
            elif topic == self.settings.taxonomy_topic and value is not None:
                rec = TaxonomyPublished.from_avro(self.codec.decode(value, "taxonomy_published", topic))
                if rec.model_version == self.artifact.model_version:
                    with self._lock:
                        self.published = rec
        except (WireFormatError, ValueError) as exc:
            log.warning("record skipped by the tally", topic=topic, offset=msg.offset(), error=str(exc)[:200])

    # ---- pages --------------------------------------------------------------------------------
    def taxonomy(self) -> tuple[Taxonomy, str]:
        """The running taxonomy (the latest published for this model, else the artifact's) and where it is from."""
        with self._lock:
            published = self.published
        if published is not None:
            try:
                return parse_taxonomy(yaml.safe_load(published.document)), f"published {published.published_at:%Y-%m-%d %H:%M} UTC"
            except Exception:  # noqa: BLE001 - an old record's document may not parse: show the artifact's
                pass
        return self.artifact.taxonomy, f"the artifact {self.artifact.model_version}"

    def drift(self) -> list[tuple[str, float]]:
        """Per category of the running taxonomy: total variation between its published projection and the
        artifact's (categories new since the artifact: against nothing, shown as 1.0)."""
        with self._lock:
            published = self.published
        if published is None:
            return [(t, 0.0) for t in self.artifact.targets]
        base = dict(zip(self.artifact.targets, self.artifact.q))
        q = np.asarray(published.projections, float)
        return [(t, total_variation(q[i], base[t]) if t in base else 1.0) for i, t in enumerate(published.targets)]

    def summary(self, max_age_s: float = 2.0) -> dict:
        now = time.monotonic()
        if self._cache and now - self._cache[0] < max_age_s:
            return self._cache[1]
        with self._lock:
            choice, decisions = dict(self.model_choice), list(self.corrections.values())
        out = summarize(choice, decisions, datetime.now(timezone.utc))
        out["lag"] = review_lag(self.settings)
        out["latest"] = latest_result(self.settings)
        out["drift"] = self.drift()
        self._cache = (now, out)
        return out


def _plain_consumer(settings: Settings, group: str) -> Consumer:
    return Consumer({**settings.kafka_common(), "group.id": group, "enable.auto.commit": False})


def review_lag(settings: Settings, timeout: float = 5.0) -> dict | None:
    """Items waiting per partition of the review topic: records past the review group's position, less
    the finished ones its commit metadata names (None when the broker does not answer)."""
    c = _plain_consumer(settings, settings.review_group_id)
    try:
        md = c.list_topics(settings.review_topic, timeout=timeout).topics.get(settings.review_topic)
        if md is None or md.error is not None:
            return None
        tps = [TopicPartition(settings.review_topic, p) for p in sorted(md.partitions)]
        waiting = {}
        for tp in c.committed(tps, timeout):
            low, high = c.get_watermark_offsets(tp, timeout=timeout)
            position = tp.offset if tp.offset >= 0 else low
            done = {o for o in decode_done(position, tp.metadata) if o < high}
            waiting[tp.partition] = max(0, high - position - len(done))
        return {"total": sum(waiting.values()), "partitions": waiting}
    except KafkaException:
        return None
    finally:
        c.close()


def latest_result(settings: Settings, timeout: float = 3.0) -> dict | None:
    """The newest result on the output topic (its taxonomy_version is the running one), or None."""
    c = make_reader(settings, "review-latest", {"fetch.min.bytes": 1, "fetch.wait.max.ms": 10})
    codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
    try:
        md = c.list_topics(settings.output_topic, timeout=timeout).topics.get(settings.output_topic)
        if md is None or md.error is not None:
            return None
        parts = []
        for p in sorted(md.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(settings.output_topic, p), timeout=timeout)
            if high > low:
                parts.append(TopicPartition(settings.output_topic, p, max(low, high - 5)))
        if not parts:
            return None
        c.assign(parts)
        best, pending, deadline = None, {tp.partition for tp in parts}, time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for msg in c.consume(50, 0.2):
                if msg.error():
                    if msg.error().code() == -191:
                        pending.discard(msg.partition())
                    continue
                try:
                    rec = CategoryAssigned.from_avro(codec.decode(msg.value(), "category_assigned", msg.topic()))
                except (WireFormatError, ValueError):
                    continue
                if best is None or rec.processed_at > best.processed_at:
                    best = rec
        return None if best is None else {"taxonomy_version": best.taxonomy_version,
                                          "model_version": best.model_version, "processed_at": best.processed_at}
    except KafkaException:
        return None
    finally:
        c.close()


__all__ = ["Artifact", "Decision", "Newest", "Tally", "latest_result", "review_lag", "summarize", "total_variation"]
