"""Pure core: text normalization, ensembling, KL selection and the original method's formula."""
import math

import numpy as np
import pytest

from models import kl
from models.text import normalize, tokenize
from training import baseline


@pytest.mark.parametrize("raw, expected", [
    ("<p>Fuzzy <b>tinsel</b> knit</p>", "fuzzy tinsel knit"),
    ("[tab]Details+Fit[/tab] Model is 5'11", "details+fit model is 5'11"),
    ("Ben &amp; Jerry&#39;s &#x41;BC&nbsp;tee", "ben & jerry's abc tee"),
    ("\n\tMidi design,\r\n  V-neck \t", "midi design, v-neck"),
    ("", ""),
    (None, ""),
])
def test_normalize_strips_markup_entities_and_whitespace(raw, expected):
    assert normalize(raw) == expected


def test_tokenize_keeps_inner_hyphens_and_drops_punctuation():
    assert tokenize("<h3>V-neck, Short sleeve!</h3> 100% cotton") == ["v-neck", "short", "sleeve", "100", "cotton"]


def test_kl_matrix_matches_the_definition_and_ignores_zero_mass():
    p = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]])
    expected_0 = 0.5 * math.log(0.5 / 0.25) * 2
    got = kl.kl_matrix(p, q)
    assert got[0, 0] == pytest.approx(expected_0)
    assert got[0, 1] == pytest.approx(0.0, abs=1e-12)  # q is zero only where p is zero


def test_smoothing_keeps_every_kl_finite_and_rows_normalized():
    q = kl.smooth(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), alpha=0.01)
    assert (q > 0).all() and np.allclose(q.sum(axis=1), 1.0)
    assert np.isfinite(kl.kl_matrix(np.array([[0.0, 1.0, 0.0]]), q)).all()


def test_choose_returns_argmin_with_sorted_alternatives_and_abstains_above_threshold():
    d = np.array([[0.9, 0.1, 0.5], [2.0, 3.0, 4.0]])
    first, second = kl.choose(d, ["A", "B", "C"], abstain_threshold=1.0, fallback="OTHERS")
    assert (first.category, first.abstained) == ("B", False)
    assert [c for c, _ in first.alternatives] == ["C", "A"]
    assert (second.category, second.abstained, second.kl) == ("OTHERS", True, 2.0)


def test_ensemble_weights_models_and_falls_back_to_text_without_image():
    image = np.array([[1.0, 0.0], [1.0, 0.0]])
    text = np.array([[0.0, 1.0], [0.0, 1.0]])
    p = kl.ensemble(image, text, np.array([True, False]), image_weight=0.25)
    assert np.allclose(p, [[0.25, 0.75], [0.0, 1.0]])
    assert np.allclose(kl.ensemble(None, text), text)


def test_ensemble_uses_only_the_evidence_each_row_has():
    image = np.array([[1.0, 0.0]] * 4)
    text = np.array([[0.0, 1.0]] * 4)
    image_used = np.array([True, True, False, False])
    text_used = np.array([True, False, True, False])
    p = kl.ensemble(image, text, image_used, image_weight=0.25, text_used=text_used)
    # both → weighted; image only → the image; text only → the text; neither → the text model's prior
    assert np.allclose(p, [[0.25, 0.75], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])


def test_geometric_ensemble_is_the_renormalized_weighted_product_and_keeps_each_rows_evidence():
    image = np.array([[0.5, 0.4, 0.1]] * 3)
    text = np.array([[0.1, 0.5, 0.4]] * 3)
    p = kl.ensemble(image, text, np.array([True, True, False]), image_weight=0.5,
                    text_used=np.array([True, False, True]), combine="geometric")
    both = np.sqrt(image[0] * text[0])
    assert np.allclose(p[0], both / both.sum())
    assert np.allclose(p[1:], [image[1], text[2]])  # image only → the image; text only → the text
    # the class one model rules out stays out (the average would keep half its mass)
    veto = kl.ensemble(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), image_weight=0.5, combine="geometric")
    assert veto[0, 0] < 1e-5 and np.isclose(veto.sum(), 1.0)


def test_an_unknown_ensemble_rule_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="mean, geometric"):
        kl.ensemble(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), combine="max")


def test_tune_ensemble_takes_the_rule_with_more_validation_rows_right_and_the_average_on_a_tie():
    from training.train import tune_ensemble

    q = np.full((3, 3), 0.01) + np.eye(3) * 0.97
    targets = ["A", "B", "C"]
    # each model rules out the class the other favours: only the product keeps the class both allow
    split_image, split_text = np.array([[0.7, 0.3, 0.0]] * 4), np.array([[0.0, 0.3, 0.7]] * 4)
    assert tune_ensemble(split_image, split_text, q, targets, np.array(["B"] * 4)) == ("geometric", 0.5)
    agree_image, agree_text = np.array([[0.9, 0.05, 0.05]] * 4), np.array([[0.8, 0.1, 0.1]] * 4)
    assert tune_ensemble(agree_image, agree_text, q, targets, np.array(["A"] * 4)) == ("mean", 0.5)


def test_image_weights_rule_and_text_assumed_present_when_unknown():
    w = kl.image_weights(np.array([True, True, False, False]), np.array([True, False, True, False]), 0.4)
    assert np.allclose(w, [0.4, 1.0, 0.0, 0.0])
    assert np.allclose(kl.image_weights(np.array([True, False]), None, 0.4), [0.4, 0.0])


def test_top_k_sparsify_keeps_the_k_largest_renormalized():
    out = kl.top_k_sparsify(np.array([[0.4, 0.3, 0.2, 0.1]]), 2)
    assert np.allclose(out, [[4 / 7, 3 / 7, 0.0, 0.0]])


def test_original_method_sums_top3_and_uses_its_epsilon_formula():
    p = baseline.baseline_prediction(np.array([[0.7, 0.2, 0.1, 0.0]]), np.array([[0.0, 0.1, 0.2, 0.7]]))
    assert np.allclose(p, [[0.35, 0.15, 0.15, 0.35]])
    q = np.array([[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.5, 0.0]])
    d = baseline.baseline_kl(p, q)
    # zeros in q are not smoothed away: the prototype's 1e-8 makes them huge but finite
    assert d[0, 0] > 1.0 and np.isfinite(d).all()
    assert baseline.baseline_choose(p, q, ["X", "Y"]) == ["X"]
