"""The committed models on held-out catalogue products sent with an image and no usable text.

Issue #6 item 7: an empty title used to be scored as evidence (the text model's prior for no
words, mixed in at the text weight). Such products must be decided from the image alone.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from consumer.config import Settings
from models import kl
from models.artifact import load_categorizer
from training import data

N = 240
NO_TEXT = ["", "   ", "<p></p>", "&nbsp;", "[tab][/tab]", "\n\t"]  # all normalize to no tokens


@pytest.fixture(scope="module")
def categorizer():
    return load_categorizer(Settings().resolved_artifact_dir())


@pytest.fixture(scope="module")
def heldout(categorizer):
    """A seeded sample of the held-out split (never trained on): prepared pixels and true categories."""
    cat = categorizer
    df, rows, truth = data.heldout_sample(cat.labels, cat.artifact.manifest["label_space"]["article_to_label"],
                                          N, seed=0)
    images = []
    for path in df["image_path"].iloc[rows]:
        with Image.open(path) as im:
            images.append(cat.prepare_image(im))
    return images, truth


@pytest.mark.slow
def test_products_without_text_are_decided_by_the_image_alone(categorizer, heldout):
    images, truth = heldout
    texts = [NO_TEXT[i % len(NO_TEXT)] for i in range(len(images))]
    decided = categorizer.categorize(texts, images)
    image_p, _, used = categorizer.source_distributions(texts, images)
    image_only = categorizer.decide(image_p, used)

    assert [d.category for d in decided] == [d.category for d in image_only]
    assert [d.kl for d in decided] == pytest.approx([d.kl for d in image_only])
    assert all(d.image_used for d in decided)
    accuracy = np.mean([d.category == t for d, t in zip(decided, truth)])
    assert accuracy == np.mean([d.category == t for d, t in zip(image_only, truth)])
    assert accuracy > 0.9  # the image model is good on its own: this is real evidence, not a prior


@pytest.mark.slow
def test_products_with_text_still_use_both_models(categorizer, heldout):
    images, _ = heldout
    images = images[:32]
    texts = ["Women Blue Denim Jacket"] * len(images)
    decided = categorizer.categorize(texts, images)
    image_p, text_p, used = categorizer.source_distributions(texts, images)
    both = categorizer.decide(kl.ensemble(image_p, text_p, used, categorizer.image_weight,
                                          combine=categorizer.combine), used)
    assert [d.kl for d in decided] == pytest.approx([d.kl for d in both])


@pytest.mark.slow
def test_a_product_with_neither_an_image_nor_a_word_the_model_reads_abstains_and_goes_to_review(categorizer):
    # Before: scored from the text model's prior for no words (OTHERS with confidence 0.83, not abstained).
    texts = ["NA", "<p>&nbsp;</p>", "Composition", "Machine wash cold\nDo not bleach", "Blue denim jacket"]
    decided = categorizer.categorize(texts, [None] * len(texts))
    assert [(d.category, d.abstained, d.confidence) for d in decided[:4]] == [(categorizer.fallback, True, 0.0)] * 4
    assert not decided[4].abstained and decided[4].category == "OUTERWEAR" and decided[4].confidence > 0
