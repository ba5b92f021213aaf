"""Human in the loop against the real broker with the committed artifact (text-only events):
review routing, corrections shared by every instance, and a taxonomy split applied to a running
service then replayed."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_helpers import committed, read_topic, results, run_service, wait_for

from consumer.config import Settings
from consumer.corrections import start_projection_updater
from consumer.metrics import Metrics
from consumer.cli.replay import replay
from consumer.cli.sample import publish
from models.artifact import ArtifactCategorizer, load_artifact
from schemas import CategoryCorrected, ProductEvent
from schemas.wire import make_codec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def artifact():
    return load_artifact(Settings().resolved_artifact_dir())


@pytest.fixture
def settings(kafka_bootstrap, topic_factory):
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def compacted(prefix: str, partitions: int) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, config={"cleanup.policy": "compact"})],
                            operation_timeout=30)[name].result()
        return name

    def make(**overrides) -> Settings:
        base = dict(
            bootstrap_servers=kafka_bootstrap, group_id=f"shelver-hitl-{uuid.uuid4().hex[:8]}",
            input_topic=topic_factory(3, "in"), replay_topic=topic_factory(3, "replay"),
            output_topic=topic_factory(3, "out"), dlq_topic=topic_factory(1, "dlq"),
            review_topic=topic_factory(1, "review"), corrections_topic=compacted("corrections", 3),
            taxonomy_topic=compacted("taxonomy", 1), max_batch_size=8, max_batch_wait_ms=50,
        )
        return Settings(**{**base, **overrides})

    return make


def events(titles: list[str], prefix: str) -> list[ProductEvent]:
    now = datetime.now(timezone.utc)
    return [ProductEvent(product_id=f"{prefix}{i}", title=t, event_time=now) for i, t in enumerate(titles)]


CLEAR_AND_VAGUE = [
    "Black leather ankle boots with block heel", "Leather shoulder bag with card slots and zip", "Gold hoop earrings",
    "Blue skinny fit jeans, five pockets, zip fly", "Floral midi dress with V-neck", "Men's cotton crew neck t-shirt",
    "Print, 100% silk", "Flowy fabric, decorative knots", "Contrasting finish", "Elastic, inner lining",
    "Pleated fabric, chain print", "Fringed finish",
]


@pytest.mark.slow  # the committed artifact: ~10-16 s
def test_low_confidence_results_carry_needs_review_and_also_go_to_the_review_topic(settings, artifact):
    s = settings(review_threshold=0.9)
    publish(s, events(CLEAR_AND_VAGUE, "r"))
    svc, t = run_service(s, ArtifactCategorizer(artifact), max_events=len(CLEAR_AND_VAGUE))
    t.join(120)
    assert svc.rc == 0
    out = results(s, read_topic(s, s.output_topic, len(CLEAR_AND_VAGUE)))
    review = read_topic(s, s.review_topic, 1)
    assert all(r.confidence is not None and 0 <= r.confidence <= 1 for r in out)
    flagged = {r.product_id for r in out if r.needs_review}
    assert flagged == {r.product_id for r in out if r.confidence < 0.9}
    assert 0 < len(flagged) < len(out)  # clear products are accepted, vague ones are not
    assert sorted(m.key().decode() for m in review) == sorted(flagged)
    assert all(r.needs_review for r in results(s, review))
    assert sum(committed(s).values()) == len(CLEAR_AND_VAGUE)


@pytest.mark.slow  # the committed artifact: ~10-16 s
def test_failed_review_delivery_stops_without_committing(settings, artifact):
    # The review topic does not exist (the broker does not auto-create): results are delivered, the
    # review copies are not, so the batch must not be committed.
    s = settings(review_threshold=1.0, review_topic=f"missing.{uuid.uuid4().hex[:8]}",
                 kafka_options={"message.timeout.ms": "3000"})
    publish(s, events(CLEAR_AND_VAGUE[:4], "f"))
    svc, t = run_service(s, ArtifactCategorizer(artifact), max_events=4)
    t.join(120)
    assert svc.rc == 1 and "delivery" in svc.failure and "missing." in svc.failure
    assert sum(committed(s).values()) == 0


def publish_corrections(s: Settings, records: list[CategoryCorrected]) -> None:
    codec = make_codec(None)
    producer = Producer({"bootstrap.servers": s.bootstrap_servers})
    for r in records:
        producer.produce(s.corrections_topic, codec.encode(r.to_avro(), "category_corrected", s.corrections_topic),
                         r.product_id.encode())
    assert producer.flush(30) == 0


@pytest.mark.slow  # the committed artifact: ~10-16 s
def test_corrections_reach_every_instance_identically_survive_restarts_and_reject_abuse(settings, artifact):
    s = settings()
    first = ArtifactCategorizer(artifact)
    base_version = first.taxonomy_version
    metrics = Metrics()
    updater = start_projection_updater(s, first, metrics)
    now = datetime.now(timezone.utc)
    good = [CategoryCorrected(product_id=f"c{i}", category="LINGERIE", text=t, reviewer=f"rev{i % 2}", corrected_at=now)
            for i, t in enumerate(["Triangular design, bow fastening on neck and back", "Elastic, thin straps",
                                   "Lace bralette with scalloped edges", "Elastic, inner lining"])]
    dist = [1.0 / len(first.labels)] * len(first.labels)
    good.append(CategoryCorrected(product_id="c9", category="OTHERS", source_distribution=dist,
                                  model_version=first.model_version, corrected_at=now))
    bad = [CategoryCorrected(product_id="x1", category="SPACESHIPS", text="rocket", corrected_at=now),
           CategoryCorrected(product_id="x2", category="TOPS", source_distribution=[1.0, 0.0], model_version="other",
                             corrected_at=now)]
    try:
        publish_corrections(s, good + bad)
        wait_for(lambda: first.taxonomy_version.startswith(f"{base_version}+c5."), what="corrections applied")
        decision = first.categorize(["Elastic, inner lining"], [None])[0]
        assert decision.taxonomy_version == first.taxonomy_version  # results are stamped with the new version
        # The default rule: the taxonomy's projections stay, an adapter fitted to the five corrections shifts
        # the divergences (models.correction_rule.fit_adapter).
        np.testing.assert_array_equal(first.projections[0], artifact.projections)
        assert first.adapter is not None and first.adapter.corrections == 5
        lingerie = list(first.projections[1]).index("LINGERIE")
        assert first.adapter.theta[:, lingerie].any()
        dlq = read_topic(s, s.dlq_topic, 2)
        assert sorted(dict(m.headers())["error"].decode() for m in dlq) == ["no_distribution", "unknown_category"]
        assert sorted(m.key().decode() for m in dlq) == ["x1", "x2"]
        # counted with the service's dead letters once delivered (they were not counted at all before)
        for code in ("no_distribution", "unknown_category"):
            wait_for(lambda c=code: metrics.registry.get_sample_value("shelver_dead_letters_total", {"error": c}) == 1,
                     what=f"{code} counted")

        # A second instance (or this one restarted) rebuilds exactly the same projections from the topic,
        # and does not send the old rejects to the DLQ again.
        second = ArtifactCategorizer(artifact)
        other = start_projection_updater(s, second)
        try:
            assert second.taxonomy_version == first.taxonomy_version
            np.testing.assert_array_equal(second.projections[0], first.projections[0])
            np.testing.assert_array_equal(second.adapter.theta, first.adapter.theta)  # bit for bit
            assert other.dlq_sent == 0
        finally:
            other.stop()
    finally:
        updater.stop()


SWIMWEAR_EXAMPLES = ["Triangle bikini top with ties", "One-piece swimsuit with racer back", "High-waisted bikini bottoms",
                     "Swimsuit with cut-out back and adjustable straps", "Women's swimwear, printed bikini set"]
# Written before the split was tried; measured: 7/10 land in SWIMWEAR (a "one-piece swimsuit" reads as a
# jumpsuit, a bandeau top as a bra, a tankini as a dress: the source label space has no swimwear class,
# it is pooled in other:LINGERIE, so projections alone cannot separate those), 6/7 intimates stay in
# LINGERIE (the shapewear bodysuit shares the other:LINGERIE pool with swimwear); with v3-20261203, 5/7.
SWIM = ["Black halter-neck bikini set", "Striped one-piece swimsuit with thin straps", "Bandeau bikini top, removable padding",
        "Navy swimsuit, chlorine resistant", "Red bikini bottoms with side ties", "Women's printed swimsuit with padded cups",
        "Sporty racerback swimsuit for pool training", "Triangle bikini, tie fastening at the neck", "Tankini set with floral print",
        "Black swimwear with high-cut legs"]
INTIMATES = ["Lace underwire bra", "Cotton briefs, pack of three", "Padded push-up bra with lace trim",
             "Silk nightdress with lace trim", "Seamless shapewear bodysuit", "Men's cotton boxer trunks",
             "Sheer black tights, 20 denier"]


def split_file(path: Path) -> Path:
    doc = yaml.safe_load((REPO / "models" / "taxonomies" / "marketplace.yaml").read_text())
    doc["version"] = "marketplace-v2-swimwear"
    doc["categories"].append({
        "name": "SWIMWEAR", "description": "Swimsuits, bikinis and beachwear.", "from": ["LINGERIE"],
        "keywords": ["swimsuit", "bikini", "swimwear", "bathing suit", "halter neck"], "examples": SWIMWEAR_EXAMPLES,
    })
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow
def test_taxonomy_split_applied_to_a_running_service_and_replayed(settings, artifact, tmp_path):
    s = settings(review_topic="")
    model = ArtifactCategorizer(artifact)
    updater = start_projection_updater(s, model)
    svc, t = run_service(s, model)
    try:
        started = datetime.now(timezone.utc) - timedelta(seconds=1)
        products = events(SWIM, "swim") + events(INTIMATES, "lin")
        publish(s, products)
        before = {r.product_id: r for r in results(s, read_topic(s, s.output_topic, len(products), settle=0.2))}
        assert "SWIMWEAR" not in {r.category for r in before.values()}
        assert {r.taxonomy_version for r in before.values()} == {artifact.manifest["taxonomy"]["version"]}

        env = {**os.environ, "PYTHONPATH": str(REPO), "SHELVER_BOOTSTRAP_SERVERS": s.bootstrap_servers,
               "SHELVER_TAXONOMY_TOPIC": s.taxonomy_topic, "SHELVER_GROUP_ID": s.group_id}
        cli = subprocess.run([sys.executable, "-m", "consumer.cli", "taxonomy", "apply", str(split_file(tmp_path / "t.yaml"))],
                             env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert '"rebuilt": ["SWIMWEAR"]' in cli.stdout
        wait_for(lambda: model.taxonomy_version == "marketplace-v2-swimwear", what="taxonomy adopted")

        assert replay(s, s.input_topic, started, None, s.replay_topic) == len(products)
        out = results(s, read_topic(s, s.output_topic, 2 * len(products), settle=0.2))
        replayed = {r.product_id: r for r in out if r.replayed}
        assert set(replayed) == {p.product_id for p in products}
        assert {r.taxonomy_version for r in replayed.values()} == {"marketplace-v2-swimwear"}
        swim = [r.category for pid, r in replayed.items() if pid.startswith("swim")]
        intimates = [r.category for pid, r in replayed.items() if pid.startswith("lin")]
        assert swim.count("SWIMWEAR") >= 6, swim  # measured 7 of 10, see SWIM
        # measured 6 of 7 with v2-20261124, 5 of 7 with v3-20261203 (its other:LINGERIE pool also learned H&M's
        # swimwear, so two intimates now sit nearer the new category): most intimates stay, at most two move
        assert intimates.count("LINGERIE") >= 5 and intimates.count("SWIMWEAR") <= 2, intimates
    finally:
        svc.stop()
        t.join(60)
        updater.stop()


def test_ensure_topics_makes_the_corrections_and_taxonomy_topics_compacted(kafka_bootstrap):
    from confluent_kafka.admin import ConfigResource

    from consumer.adapters.admin import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    s = Settings(bootstrap_servers=kafka_bootstrap, input_topic=f"in.{suffix}", replay_topic=None,
                 output_topic=f"out.{suffix}", dlq_topic=f"dlq.{suffix}", review_topic=f"review.{suffix}",
                 corrections_topic=f"corr.{suffix}", taxonomy_topic=f"tax.{suffix}")
    ensure_topics(s, partitions=2)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[f"tax.{suffix}"].partitions) == 1 and len(meta[f"corr.{suffix}"].partitions) == 2
    for name, policy in ((f"corr.{suffix}", "compact"), (f"tax.{suffix}", "compact"), (f"review.{suffix}", "delete")):
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        assert admin.describe_configs([res])[res].result()["cleanup.policy"].value == policy


@pytest.mark.slow  # the committed artifact and 2 x 284 + 190 marketplace descriptions: ~40 s
def test_corrections_streamed_into_a_running_service_change_uncorrected_results_as_the_offline_curve_says(
        settings, artifact):
    """The learning curve's experiment (`training.learning_curve`, committed model, adapter rule) replayed
    through the broker: the examples part streamed as text-only corrections while the service runs,
    the evaluation part scored before and after as ordinary product events (nobody corrected them)."""
    from models import kl
    from training.learning_curve import corrections_of, decide
    from training.marketplace_eval import DEV_LABELS, UNLABELABLE, dev_split, load_dev

    try:
        dev = load_dev(DEV_LABELS)
    except FileNotFoundError as exc:
        pytest.skip(f"marketplace descriptions not available: {exc}")
    ex_idx, ev_idx = dev_split(dev)
    ex, ev = dev.iloc[ex_idx], dev.iloc[ev_idx]
    ex, ev = ex[ex["label"] != UNLABELABLE], ev[ev["label"] != UNLABELABLE]
    s = settings(review_topic="")
    assert s.corrections_rule == "adapter"
    model = ArtifactCategorizer(artifact)
    updater = start_projection_updater(s, model)
    svc, t = run_service(s, model)
    now = datetime.now(timezone.utc)

    def score(prefix: str, already: int) -> dict[str, str]:
        products = [ProductEvent(product_id=f"{prefix}{i}", description=text, event_time=now)
                    for i, text in zip(ev["index"], ev["text"])]
        publish(s, products)
        out = results(s, read_topic(s, s.output_topic, already + len(products), timeout=120, settle=0.2))
        return {r.product_id.removeprefix(prefix): r.category for r in out if r.product_id.startswith(prefix)}

    try:
        before = score("before-", 0)
        base_version = model.taxonomy_version
        publish_corrections(s, [CategoryCorrected(product_id=f"example-{i}", category=label, text=text,
                                                  reviewer=f"reviewer-{n % 5}", corrected_at=now)
                                for n, (i, label, text) in enumerate(zip(ex["index"], ex["label"], ex["text"]))])
        wait_for(lambda: model.taxonomy_version.startswith(f"{base_version}+c{len(ex)}."), timeout=120,
                 what="all corrections applied")
        after = score("after-", len(ev))
    finally:
        svc.stop()
        t.join(60)
        updater.stop()

    # The offline curve's computation on the same products (training.learning_curve.decide, Keras).
    tm, names = artifact.text_model, np.asarray(artifact.targets)
    p_ex = np.stack([kl.normalize_rows(tm.predict_proba([x]).astype(np.float64))[0] for x in ex["text"]])
    p_ev = kl.normalize_rows(tm.predict_proba(ev["text"].tolist()).astype(np.float64))
    cs = corrections_of(ex["index"], ex["label"], p_ex, 5)
    offline_before = names[decide("none", artifact.projections, names, [], p_ev)]
    offline_after = names[decide("adapter", artifact.projections, names, cs, p_ev, s.corrections_adapter_l2)]
    keys, truth = [str(i) for i in ev["index"]], ev["label"].to_numpy()
    online_before = np.array([before[k] for k in keys])
    online_after = np.array([after[k] for k in keys])
    # The service runs LiteRT, the curve Keras: a product on a near tie may fall the other way.
    assert np.sum(online_before != offline_before) <= 2 and np.sum(online_after != offline_after) <= 2
    acc = {name: float(np.mean(v == truth)) for name, v in
           [("online before", online_before), ("online after", online_after),
            ("offline before", offline_before), ("offline after", offline_after)]}
    assert abs(acc["online after"] - acc["offline after"]) <= 2 / len(truth), acc
    # The corrections changed results on products nobody corrected, in the direction the offline curve
    # went (it went up with v3-20261203, 84.2% -> 84.5%; with v4-20261204's text model, which v5-20261204
    # carries, it goes down, 85.6% -> 84.5%: both saw these examples in training, see docs/human-in-the-loop.md).
    assert np.sum(online_after != online_before) > 0, acc
    offline_change = acc["offline after"] - acc["offline before"]
    online_change = acc["online after"] - acc["online before"]
    assert abs(online_change - offline_change) <= 2 / len(truth), acc
    assert np.sign(online_change) == np.sign(offline_change) or abs(offline_change) <= 1 / len(truth), acc
