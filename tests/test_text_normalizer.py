"""The text normalizer (models.text): boilerplate removal, the versions an artifact names, and
no train/serve skew: the trainer and the service turn the same raw text into the same ids."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from models.text import _SPACE as _SPACE_RUNS
from models.text import clean, is_boilerplate, normalize, tokenize
from models.text_model import TextEncoder

RAW = (
    "<p>Composition</p><p>Black <b>suede</b> ankle boots,&nbsp;rounded toe</p>\n"
    "Warranty: 3 months against manufacturing defects\n"
    "Wash care\nMachine wash cold\nDo not bleach\n"
    "[tab]Size &amp; Fit[tab]\nThe model (height 5'8\") is wearing a size 38\n"
    "NA\n5 cm heel, side zip fastening"
)


def test_v2_keeps_the_product_and_drops_the_page_template():
    assert clean(RAW) == "black suede ankle boots, rounded toe 5 cm heel, side zip fastening"


def test_v1_is_unchanged_for_artifacts_trained_with_it():
    # v1 only strips markup: warranty and care text stay, as the older artifacts were trained.
    t = normalize(RAW)
    assert t.startswith("composition black suede ankle boots")
    assert "warranty" in t and "machine wash cold" in t and "\n" not in t


@pytest.mark.parametrize("line", [
    "composition", "wash care:", "na", "n/a", "-", "warranty for manufacturing defects: 6 months",
    "machine wash", "hand wash separately in cold water", "do not tumble dry", "dry clean only",
    "warm iron", "the model (height 6') is wearing a size m", "size & fit",
])
def test_boilerplate_lines(line):
    assert is_boilerplate(line)


@pytest.mark.parametrize("line", [
    "100% suede, rounded toe, side zip fastening, 5 cm heel",
    "a classic crossover belted trench constructed from matte coated fabric",
    "washed denim jeans with a regular fit",  # "washed" is the product, not a care line
    "ironed pleats in a midi skirt",
])
def test_product_lines_are_kept(line):
    assert not is_boilerplate(line)
    assert clean(line) == line


def test_tokenize_selects_the_normalizer_by_name():
    assert "warranty" in tokenize(RAW, "v1") and "warranty" not in tokenize(RAW, "v2")
    with pytest.raises(KeyError):
        tokenize(RAW, "v3")


def test_encoder_json_keeps_its_normalizer_and_old_artifacts_read_as_v1():
    enc = TextEncoder.build([RAW, "red dress"], n_buckets=64, normalizer="v2")
    assert "warranty" not in enc.vocab
    back = TextEncoder.from_json(enc.to_json())
    assert back.normalizer == "v2" and back.ids(RAW) == enc.ids(RAW)
    old = enc.to_json()
    del old["normalizer"]  # written before v2 existed
    assert TextEncoder.from_json(old).normalizer == "v1"


def test_trainer_and_service_produce_identical_ids_for_the_same_raw_text():
    """The trainer's dataset rows and the service's event text → encoder ids, on real raw
    descriptions (HTML, [tab] markup, warranty and care lines) from the shared data."""
    from consumer import scoring
    from schemas import ProductEvent
    from training import text_corpus
    from training.train_text import _dataset

    desc = text_corpus.catalogue_descriptions()
    marked = [desc[k] for k in sorted(desc) if "<" in desc[k]]
    raws = marked[:100] + [desc[k] for k in sorted(desc)[:100]] + [RAW]
    assert len(marked) >= 20 and any("arranty" in r for r in raws)
    enc = TextEncoder.build(raws, n_buckets=2**12, char_ngrams=(3, 5), normalizer="v2")

    ds = _dataset(enc, raws, np.zeros((len(raws), 2), np.float32), np.ones(len(raws), np.float32), 32, None)
    trained = [row[row != 0].tolist() for batch, _, _ in ds for row in batch.numpy()]

    events = [ProductEvent(product_id=str(i), title="", description=r, event_time="2026-12-03T00:00:00Z")
              for i, r in enumerate(raws)]
    served = [row[row != 0].tolist() for row in enc.encode([scoring.text_of(ev) for ev in events])]
    assert trained == served
    assert not any("warranty" in enc.tokens(scoring.text_of(ev)) for ev in events)


def test_title_and_description_are_separate_lines_for_the_normalizer():
    """A heading at the start of the description is still a heading line when a title precedes it."""
    from consumer import scoring
    from schemas import ProductEvent

    ev = ProductEvent(product_id="1", title="Nike Men Blue T-shirt", description="Composition\nBlue cotton tee",
                      event_time="2026-12-03T00:00:00Z")
    assert clean(scoring.text_of(ev)) == "nike men blue t-shirt blue cotton tee"


def test_hm_mapping_agrees_with_the_catalogue_mapping():
    """Every H&M type that names a catalogue articleType maps to that articleType's target."""
    from training import data, text_corpus

    catalogue = data.article_type_targets()
    raw = yaml.safe_load(text_corpus.HM_TYPE_TO_TARGET.read_text())["mapping"]
    targets = {c for c in catalogue.values()}
    for hm_type, entry in raw.items():
        if entry is None:
            continue
        assert entry["target"] in targets, hm_type
        if entry.get("as"):
            assert catalogue[entry["as"]] == entry["target"], (hm_type, entry)


def test_hm_mapping_covers_every_product_type_in_the_data():
    import pandas as pd

    from training import text_corpus

    raw = yaml.safe_load(text_corpus.HM_TYPE_TO_TARGET.read_text())["mapping"]
    types = set(pd.read_parquet(text_corpus.HM_ARTICLES, columns=["product_type_name"])["product_type_name"])
    assert types <= set(raw), sorted(types - set(raw))  # every type decided: mapped or null


def test_the_previous_artifact_still_loads_and_serves_with_the_normalizer_it_was_trained_with():
    """v2-20261124 (titles, v1 normalizer) keeps working beside the newer default."""
    from models.artifact import load_categorizer
    from models.paths import ARTIFACTS_DIR, newest_artifact

    old = load_categorizer(ARTIFACTS_DIR / "v2-20261124", engine="tensorflow")
    assert old.artifact.text_model.encoder.normalizer == "v1"
    decision = old.categorize(["Levis Women Blue Skinny Jeans"], [None])[0]
    assert decision.category == "PANT"
    default = newest_artifact()
    assert default.name != "v2-20261124"
    assert load_categorizer(default, engine="tensorflow").artifact.text_model.encoder.normalizer == "v2"


def test_markup_is_stripped_exactly_as_by_the_plain_patterns():
    """The linear-time stripping (`models.text._sub_closed`) gives what the regular expressions alone gave:
    artifacts trained with them read text as before."""
    import html
    import random

    from models import text

    def by_the_patterns(t: str) -> str:
        t = text._BRACKET_TAG.sub(" ", text._TAG.sub(" ", t))
        return text._ENTITY.sub(lambda m: " " if not html.unescape(m.group(0)).isprintable()
                                else html.unescape(m.group(0)), t)

    rng = random.Random(7)
    for _ in range(5000):
        raw = "".join(rng.choice("<>[]p br/ahx\n&;#1") for _ in range(rng.randint(0, 40)))
        assert text._strip_markup(raw) == by_the_patterns(raw), raw
        assert text._sub_closed(text._BLOCK_TAG, "\n", raw, ">") == text._BLOCK_TAG.sub("\n", raw), raw


@pytest.mark.timeout(10)
def test_a_text_of_unclosed_tags_and_brackets_is_normalized_within_the_tests_timeout():
    # Each unclosed "<" or "[" once scanned to the end of the text: 200,000 of them took about 15 s per call
    # (the service normalizes an event's text three times). Now a few milliseconds.
    for raw in ("<" * 200_000, "[" * 200_000, "<br" * 70_000, "x <p" * 50_000):
        assert clean(raw) == normalize(raw) == _SPACE_RUNS.sub(" ", raw).strip().lower()  # nothing closes: kept


def test_one_very_long_word_gives_a_bounded_number_of_ids_and_normal_text_is_unchanged(monkeypatch):
    enc = TextEncoder.build(["red dress"], n_buckets=2**12, char_ngrams=(3, 5), normalizer="v2")
    assert len(enc.ids("a" * 20_000)) == TextEncoder.MAX_IDS  # before: 60,000 ids, its batch padded to that width
    assert enc.encode(["red dress", "a" * 20_000]).shape == (2, TextEncoder.MAX_IDS)
    texts = [RAW, RAW * 8, "Midi design, V-neck, Short sleeve, Button fastening"]
    capped = [enc.ids(t) for t in texts]
    monkeypatch.setattr(TextEncoder, "MAX_IDS", 10**9)
    assert capped == [enc.ids(t) for t in texts]  # under the cap: exactly the ids the models were trained on
