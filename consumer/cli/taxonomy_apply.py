"""``shelver taxonomy apply <file>``: validate a taxonomy file, compute its projections, publish it.

The networks are not touched: only the projections q_t change. Categories that keep their name and
source classes and bring no examples keep their current row; new categories and changed ones are
projected from their source classes and examples with the artifact's text model (seconds). The
result goes to the compacted taxonomy topic (key = model version); every running instance's
`consumer.corrections.ProjectionUpdater` adopts it between two batches and stamps its version on
results; ``shelver replay`` then re-scores old products under it.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from consumer.config import Settings
from consumer.adapters.kafka_io import make_producer, make_reader, produce
from models.projections import changed_projections
from models.taxonomy_document import load_taxonomy, parse_taxonomy, plan_change
from schemas import TaxonomyPublished
from schemas.wire import make_codec


def latest_published(settings: Settings, model_version: str, timeout_s: float = 30.0) -> TaxonomyPublished | None:
    """The last taxonomy published for ``model_version`` (reads the whole, small, compacted topic)."""
    if not settings.taxonomy_topic:
        return None
    codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
    consumer = make_reader(settings, "taxonomy")
    try:
        meta = consumer.list_topics(settings.taxonomy_topic, timeout=10).topics[settings.taxonomy_topic]
        if meta.error is not None:
            return None
        todo = set()
        parts = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(settings.taxonomy_topic, p), timeout=10)
            if high > low:
                todo.add(p)
                parts.append(TopicPartition(settings.taxonomy_topic, p, OFFSET_BEGINNING))
        consumer.assign(parts)
        latest = None
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(100, 1.0):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                        continue
                    raise RuntimeError(f"reading {settings.taxonomy_topic}: {msg.error()}")
                rec = TaxonomyPublished.from_avro(codec.decode(msg.value(), "taxonomy_published", msg.topic()))
                if rec.model_version == model_version:
                    latest = rec
        if todo:
            raise RuntimeError(f"could not read {settings.taxonomy_topic} to its end in {timeout_s:.0f}s")
        return latest
    finally:
        consumer.close()


def apply_taxonomy(settings: Settings, path: str | Path, dry_run: bool = False) -> dict:
    """Validate and publish; returns a summary. Raises `models.taxonomy_document.TaxonomyError` on a bad file."""
    from models.text_model import load_text_model  # TensorFlow, only once the file is known to parse

    started = time.perf_counter()
    doc_text = Path(path).read_text()
    new = parse_taxonomy(yaml.safe_load(doc_text))
    artifact = settings.resolved_artifact_dir()
    manifest = json.loads((artifact / "manifest.json").read_text())
    labels = manifest["label_space"]["labels"]
    a2l = manifest["label_space"]["article_to_label"]
    published = latest_published(settings, manifest["version"])
    if published is not None:
        current = parse_taxonomy(yaml.safe_load(published.document))
        cur_targets, cur_q = published.targets, np.asarray(published.projections)
    else:
        current = load_taxonomy(artifact / "taxonomy.yaml")
        with np.load(artifact / "projections.npz") as z:
            cur_targets, cur_q = [str(t) for t in z["targets"]], z["q"].astype(np.float64)
    # the published record's own aliases travel on: corrections survive a chain of renames
    carried, rebuilt = plan_change(new, current, labels, a2l, published.carried_from if published else None)
    text_model = load_text_model(artifact / "text") if rebuilt else None
    q = changed_projections(new, cur_targets, cur_q, rebuilt, labels, a2l,
                            text_model.predict_proba if text_model else None)
    rec = TaxonomyPublished(version=new.version, model_version=manifest["version"], fallback=new.fallback,
                            targets=list(new.targets), projections=q.tolist(), carried_from=carried,
                            document=doc_text, published_at=datetime.now(timezone.utc))
    summary = {"version": new.version, "previous": current.version, "model_version": manifest["version"],
               "targets": list(new.targets), "rebuilt": rebuilt, "carried_from": carried,
               "published": not dry_run, "topic": settings.taxonomy_topic}
    if not dry_run:
        if not settings.taxonomy_topic:
            raise RuntimeError("no taxonomy topic configured (SHELVER_TAXONOMY_TOPIC)")
        codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        producer = make_producer(settings)
        failures: list[str] = []
        produce(producer, settings.taxonomy_topic, codec.encode(rec.to_avro(), "taxonomy_published", settings.taxonomy_topic),
                manifest["version"].encode(), on_delivery=lambda err, m: err and failures.append(str(err)))
        # Only a delivered record counts as applied: flush and check the report.
        if producer.flush(30) or failures:
            raise RuntimeError(f"publishing the taxonomy failed: {failures[:1] or 'flush timed out'}")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
