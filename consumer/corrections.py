"""Human in the loop: read corrections and taxonomy versions, keep the projections current.

Every instance runs one `ProjectionUpdater` thread. It reads the compacted corrections topic
(``CategoryCorrected``, key = product id) and the compacted taxonomy topic (``TaxonomyPublished``,
key = model version) **from the beginning, with its own consumer that never commits**, so every
instance, and every restart, rebuilds the same state from the same log:

* the latest taxonomy published for this model (or the artifact's own, when none), and
* the latest correction of every product.

What the corrections change is a pure function of that state (``SHELVER_CORRECTIONS_RULE``: the
adapter of `models.correction_rule.fit_adapter`, or the averaged projections of
`models.correction_rule.corrected_projections`; the order in which the two topics interleave does not
matter), so all instances converge to the same decision rule and stamp the same ``taxonomy_version``
(`models.correction_rule.projection_version`). After each poll the thread swaps it into the categorizer
with one reference assignment; the inference thread reads it once per batch, so a batch never mixes
two versions.

Abuse guard: a correction carrying no usable distribution (finite, over this model's labels) and no
text, or undecodable, goes to the DLQ (header ``error``: ``no_distribution``, ``undecodable``) and
withdraws the product's earlier correction, as compaction will. A correction naming a category the
current taxonomy does not know (nor carries from a renamed/merged one) is reported there too
(``unknown_category``) but kept: the rules skip it, and it counts once a taxonomy names the category,
whichever of the two records was read first. Only records that arrive while the instance runs are sent
to the DLQ (offset >= the end offset seen at start), so a restart does not re-send old ones; with N
instances running, each sends its own copy. Each reviewer's total weight is capped (see
`models.correction_rule.reviewer_weights`).

A reader error that is not fatal is logged and reading goes on; a record the schema registry cannot
decode for now (``RegistryUnavailable``) is read again after a back-off, never skipped, since skipping
it on one instance would leave that instance's rule different from the others'.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from consumer.config import Settings
from consumer.adapters.kafka_io import make_producer, make_reader, produce
from consumer.logs import get_logger
from models.correction_rule import Adapter, Correction, corrected_projections, fit_adapter, projection_version
from schemas import CategoryCorrected, TaxonomyPublished
from schemas.wire import RegistryUnavailable, WireFormatError, make_codec

log = get_logger("shelver.corrections")


@dataclass
class Base:
    """The taxonomy the corrections are blended into."""

    version: str
    targets: tuple[str, ...]
    q: np.ndarray
    carried_from: dict[str, list[str]] = field(default_factory=dict)

    def known(self, category: str) -> bool:
        return category in self.targets or any(category in v for v in self.carried_from.values())


class ProjectionState:
    """The state one instance rebuilds from the two topics (no I/O; unit-tested)."""

    def __init__(self, base: Base, labels: int, model_version: str, prior_strength: float, reviewer_cap: float,
                 temperature: float = 1.0, rule: str = "projections", adapter_l2: float = 1.0):
        self.base, self.n_labels, self.model_version = base, labels, model_version
        self.prior_strength, self.reviewer_cap, self.temperature = prior_strength, reviewer_cap, temperature
        self.rule, self.adapter_l2 = rule, adapter_l2
        self.corrections: dict[str, Correction] = {}

    def set_taxonomy(self, rec: TaxonomyPublished) -> bool:
        """Adopt a published taxonomy if it is for this model (False: ignored)."""
        q = np.asarray(rec.projections, dtype=np.float64)
        if rec.model_version != self.model_version or q.shape != (len(rec.targets), self.n_labels):
            return False
        self.base = Base(rec.version, tuple(rec.targets), q, {k: list(v) for k, v in rec.carried_from.items()})
        return True

    def distribution(self, rec: CategoryCorrected) -> np.ndarray | None:
        """The correction's own distribution when it is over this model's labels, else None."""
        d = rec.source_distribution
        if d is None or rec.model_version != self.model_version or len(d) != self.n_labels:
            return None
        p = np.clip(np.asarray(d, dtype=np.float64), 0.0, None)
        if not np.isfinite(p).all():  # an inf would normalize to NaN, a bias toward its category for every product
            return None
        return p / p.sum() if p.sum() > 0 else None

    def put(self, rec: CategoryCorrected, p: np.ndarray) -> None:
        """Record (or replace) the product's correction; compaction keeps only the latest per product too."""
        self.corrections[rec.product_id] = Correction(rec.product_id, rec.category, p, rec.reviewer,
                                                      rec.corrected_at.isoformat())

    def remove(self, product_id: str) -> None:
        self.corrections.pop(product_id, None)

    def projections(self) -> tuple[np.ndarray, tuple[str, ...], str]:
        """(q, targets, version): under the adapter rule the taxonomy's own q (the adapter carries the
        corrections), under the projections rule q with the corrections averaged in."""
        cs = list(self.corrections.values())
        q = self.base.q
        if self.rule == "projections":
            q, _ = corrected_projections(self.base.q, self.base.targets, cs, self.prior_strength, self.reviewer_cap,
                                         self.base.carried_from, self.temperature)
        return q, self.base.targets, projection_version(self.base.version, cs, self.base.targets,
                                                        self.base.carried_from)

    def adapter(self) -> Adapter | None:
        """The corrections' adapter (None under the projections rule or without applicable corrections)."""
        if self.rule != "adapter":
            return None
        return fit_adapter(self.base.q, self.base.targets, list(self.corrections.values()), self.adapter_l2,
                           self.reviewer_cap, self.base.carried_from)


class ProjectionUpdater(threading.Thread):
    """The reader thread (see the module docstring). ``categorizer`` needs ``set_projections``,
    ``projections``, ``labels``, ``model_version`` and ``artifact.text_model`` (ArtifactCategorizer)."""

    def __init__(self, settings: Settings, categorizer, metrics=None):
        super().__init__(name="projections", daemon=True)
        self.s, self.model, self.metrics = settings, categorizer, metrics
        q, targets, version = categorizer.projections
        self.state = ProjectionState(Base(version, targets, q), len(categorizer.labels), categorizer.model_version,
                                     settings.corrections_prior_strength, settings.corrections_reviewer_cap,
                                     settings.corrections_temperature, settings.corrections_rule,
                                     settings.corrections_adapter_l2)
        self.codec = make_codec(settings.schema_registry_url, settings.schema_registry_options)
        self.topics = [t for t in (settings.taxonomy_topic, settings.corrections_topic) if t]
        # Its own throwaway group and no commits: every instance reads everything, every time.
        self.consumer = make_reader(settings, "projections")
        self.producer = make_producer(settings)
        self.caught_up = threading.Event()
        self.stopping = threading.Event()
        self.applied_version = version
        self.dlq_sent = 0
        self._live_from: dict[tuple[str, int], int] = {}
        self._behind: set[tuple[str, int]] = set()
        self.registry_backoff_s = 0.0  # > 0 after a record the registry could not decode yet: wait, then reread it

    def _assign(self) -> None:
        parts = []
        for topic in self.topics:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            deadline = time.monotonic() + 10.0
            while meta.error is not None and time.monotonic() < deadline:  # just created: metadata catches up
                time.sleep(0.2)
                meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:  # e.g. not created: serve with what we have, say so
                log.warning("cannot read topic; its updates are not applied", topic=topic, error=str(meta.error))
                continue
            for p in sorted(meta.partitions):
                low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                self._live_from[(topic, p)] = high
                if high > low:
                    self._behind.add((topic, p))
                parts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        self.consumer.assign(parts)
        if not self._behind:
            self.caught_up.set()

    def run(self) -> None:
        try:
            self._assign()
            while not self.stopping.is_set():
                if self.registry_backoff_s:
                    self.stopping.wait(self.registry_backoff_s)
                msgs = self.consumer.consume(500, 0.5)
                if self._handle(msgs):
                    self._apply()
                if not self._behind and not self.caught_up.is_set():
                    self._apply()
                    self.caught_up.set()
                self.producer.poll(0)
        except Exception as exc:  # keep serving with the last good projections; say so loudly
            log.error("projection updater stopped", error=f"{type(exc).__name__}: {exc}")
            self.caught_up.set()
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)

    def _handle(self, msgs) -> bool:
        changed = False
        pending: dict[str, CategoryCorrected] = {}  # product id -> latest correction that needs the text model
        for i, msg in enumerate(msgs):
            key = (msg.topic(), msg.partition())
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    self._behind.discard(key)
                elif msg.error().fatal():
                    raise RuntimeError(f"reading {msg.topic()}: {msg.error()}")
                else:  # librdkafka retries on its own (a broker restart, a leader move)
                    log.warning("corrections reader error; reading goes on", error=str(msg.error()))
                continue
            try:
                if msg.topic() == self.s.taxonomy_topic:
                    changed |= self._taxonomy(msg)
                else:
                    changed |= self._correction(msg, msg.offset() >= self._live_from.get(key, 0), pending)
            except RegistryUnavailable as exc:
                self._reread_from(msgs[i:], exc)
                break
            self.registry_backoff_s = 0.0
            if msg.offset() + 1 >= self._live_from.get(key, 0):
                self._behind.discard(key)
        if pending:  # corrections that came with text only: the text model supplies the distribution
            tm = self.model.artifact.text_model
            for rec in pending.values():
                # One text per call: a batched call's float32 results depend (~1e-7) on the batch's other texts
                # and padding, and every instance must compute exactly the same distribution from the same text.
                self.state.put(rec, np.asarray(tm.predict_proba([rec.text])[0], dtype=np.float64))
            changed = True
        return changed

    def _reread_from(self, unread, exc: Exception) -> None:
        """Seek every partition back to its first record not handled yet, and back off before reading again."""
        first: dict[tuple[str, int], int] = {}
        for m in unread:
            if not m.error():
                first.setdefault((m.topic(), m.partition()), m.offset())
        for (topic, part), offset in first.items():
            self.consumer.seek(TopicPartition(topic, part, offset))
        self.registry_backoff_s = min(30.0, max(0.5, 2 * self.registry_backoff_s))
        log.warning("schema registry unavailable; the record will be read again", error=str(exc)[:200],
                    retry_in_s=self.registry_backoff_s)

    def _taxonomy(self, msg) -> bool:
        try:
            rec = TaxonomyPublished.from_avro(self.codec.decode(msg.value(), "taxonomy_published", msg.topic()))
        except RegistryUnavailable:
            raise  # not the record's fault: read again (`_handle`)
        except Exception as exc:
            log.warning("undecodable taxonomy record ignored", offset=msg.offset(), error=str(exc)[:200])
            return False
        if not self.state.set_taxonomy(rec):
            log.info("taxonomy for another model ignored", version=rec.version, model_version=rec.model_version)
            return False
        log.info("taxonomy adopted", version=rec.version, targets=len(rec.targets))
        return True

    def _correction(self, msg, live: bool, pending: dict) -> bool:
        if msg.value() is None:  # tombstone: the product's correction is withdrawn
            pending.pop((msg.key() or b"").decode(), None)
            self.state.remove((msg.key() or b"").decode())
            return True
        try:
            rec = CategoryCorrected.from_avro(self.codec.decode(msg.value(), "category_corrected", msg.topic()))
        except (WireFormatError, ValueError) as exc:
            return self._withdraw(msg, pending, (msg.key() or b"").decode(errors="replace"), live, "undecodable",
                                  str(exc))
        p = self.state.distribution(rec)
        if p is None and not rec.text:
            return self._withdraw(msg, pending, rec.product_id, live, "no_distribution",
                                  "no finite source_distribution for this model and no text")
        if not self.state.base.known(rec.category):  # kept all the same: a later taxonomy may name it
            self._reject(msg, live, "unknown_category", f"{rec.category!r} is not in taxonomy {self.state.base.version}")
        pending.pop(rec.product_id, None)  # a later record of the same product replaces an earlier one
        if p is not None:
            self.state.put(rec, p)
            return True
        pending[rec.product_id] = rec
        return False

    def _withdraw(self, msg, pending: dict, product_id: str, live: bool, code: str, reason: str) -> bool:
        """A product's newest record is unusable: its earlier correction no longer holds (compaction will
        keep only this record, so an instance starting later has none either)."""
        pending.pop(product_id, None)
        had = product_id in self.state.corrections
        self.state.remove(product_id)
        self._reject(msg, live, code, reason)
        return had

    def _reject(self, msg, live: bool, code: str, reason: str) -> bool:
        log.warning("correction rejected", code=code, reason=reason[:200], offset=msg.offset(), live=live)
        if live and self.s.dlq_topic:
            produce(self.producer, self.s.dlq_topic, msg.value(), msg.key(), headers=[
                ("error", code.encode()), ("error_reason", reason[:500].encode()),
                ("source_topic", msg.topic().encode()), ("source_partition", str(msg.partition()).encode()),
                ("source_offset", str(msg.offset()).encode())], on_delivery=partial(self._delivered, code))
            self.dlq_sent += 1
        return False

    def _delivered(self, code: str, err, _msg) -> None:
        """Counted with the service's dead letters (shelver_dead_letters_total) once the broker has it."""
        if err is not None:
            log.warning("rejected correction not delivered to the DLQ", code=code, error=str(err))
        elif self.metrics is not None:
            self.metrics.dead_letters.labels(code).inc()

    def _apply(self) -> None:
        q, targets, version = self.state.projections()
        if version != self.applied_version or targets != self.model.projections[1]:
            # Fitted here, on this thread: the inference thread only ever sees a finished (q, adapter) pair.
            adapter = self.state.adapter()
            self.model.set_projections(q, targets, version, adapter)
            self.applied_version = version
            log.info("projections updated", taxonomy_version=version, corrections=len(self.state.corrections),
                     rule=self.state.rule)


def start_projection_updater(settings: Settings, categorizer, metrics=None) -> ProjectionUpdater | None:
    """Start the reader and wait (bounded) until it has read both topics to their end, so the first
    batch already uses the current projections. None when switched off or the model cannot swap."""
    if not (settings.corrections_topic or settings.taxonomy_topic) or not hasattr(categorizer, "set_projections"):
        return None
    updater = ProjectionUpdater(settings, categorizer, metrics)
    updater.start()
    if not updater.caught_up.wait(settings.corrections_catchup_timeout_s):
        log.warning("corrections not read to the end in time; starting with what is read so far",
                    timeout_s=settings.corrections_catchup_timeout_s)
    return updater
