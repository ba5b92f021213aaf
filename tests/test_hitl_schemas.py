"""The hitl schema changes: CategoryAssigned gains confidence/needs_review compatibly; the new
CategoryCorrected and TaxonomyPublished records round-trip in both wire formats."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from schemas import CategoryAssigned, CategoryCorrected, TaxonomyPublished, load_schema, schema_text
from schemas.wire import SingleObjectCodec, make_codec

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def assigned(**kw) -> CategoryAssigned:
    return CategoryAssigned(product_id="p-1", category="DRESS", kl=0.12, alternatives=[{"category": "SKIRT", "kl": 0.9}],
                            abstained=False, image_used=False, image_error="no_url", model_version="m1",
                            taxonomy_version="t1", source_topic="products.new", source_partition=0, source_offset=4,
                            processed_at=NOW, **kw)


def test_pydantic_mirrors_the_new_avsc_fields():
    for model, name in ((CategoryAssigned, "category_assigned"), (CategoryCorrected, "category_corrected"),
                        (TaxonomyPublished, "taxonomy_published")):
        assert list(model.model_fields) == [f["name"] for f in json.loads(schema_text(name))["fields"]]


def test_old_category_assigned_writer_decodes_with_defaults():
    old = SingleObjectCodec(readers={"category_assigned": load_schema("history/category_assigned.v0")})
    record = {k: v for k, v in assigned().to_avro().items() if k not in ("confidence", "needs_review")}
    data = old.encode(record, "category_assigned", "t")
    back = CategoryAssigned.from_avro(SingleObjectCodec().decode(data, "category_assigned", "t"))
    assert back.confidence is None and back.needs_review is False and back == assigned()


def test_old_consumer_reads_new_category_assigned_without_the_new_fields():
    old_reader = SingleObjectCodec(readers={"category_assigned": load_schema("history/category_assigned.v0")},
                                   writers=[load_schema("category_assigned")])
    data = SingleObjectCodec().encode(assigned(confidence=0.42, needs_review=True).to_avro(), "category_assigned", "t")
    decoded = old_reader.decode(data, "category_assigned", "t")
    assert "confidence" not in decoded and decoded["category"] == "DRESS"


@pytest.mark.parametrize("codec_factory", [SingleObjectCodec, lambda: make_codec("mock://hitl", {})])
def test_new_records_round_trip(codec_factory):
    codec = codec_factory()
    records = [
        (assigned(confidence=0.93, needs_review=False), "category_assigned"),
        (CategoryCorrected(product_id="p-1", category="SWIMWEAR", source_distribution=[0.25, 0.75], model_version="m1",
                           text="triangle bikini top", reviewer="ana", corrected_at=NOW), "category_corrected"),
        (CategoryCorrected(product_id="p-2", category="TOPS", corrected_at=NOW), "category_corrected"),
        (TaxonomyPublished(version="v2", model_version="m1", fallback="OTHERS", targets=["A", "OTHERS"],
                           projections=[[0.5, 0.5], [0.25, 0.75]], carried_from={"A": ["OLD"]}, document="version: v2",
                           published_at=NOW), "taxonomy_published"),
    ]
    for rec, schema in records:
        assert type(rec).from_avro(codec.decode(codec.encode(rec.to_avro(), schema, "t"), schema, "t")) == rec


def test_confidence_must_be_a_probability():
    with pytest.raises(ValueError):
        assigned(confidence=1.5)


def test_compose_creates_the_hitl_topics_with_compaction_where_state_lives():
    import yaml

    from consumer.config import REPO_ROOT, Settings

    init = "\n".join(yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["kafka-init"]["entrypoint"])
    s = Settings()
    for topic in (s.review_topic, s.corrections_topic, s.taxonomy_topic):
        assert f"--topic {topic} " in init
    for topic in (s.corrections_topic, s.taxonomy_topic):
        assert f"--topic {topic} --partitions" in init and init.split(f"--topic {topic} ")[1].split("\n")[0].endswith(
            "cleanup.policy=compact")
