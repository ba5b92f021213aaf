"""Human in the loop, second round of pure rules: the keyword feature of the confidence and the tempered
correction update (hand-made inputs, no I/O)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from consumer.config import Settings
from consumer.corrections import Base, ProjectionState
from models import kl
from models.calibration import FEATURES, KL_FEATURES, Calibration, keyword_hits, keyword_margin
from models.taxonomy import Correction, corrected_projections, tempered

S = 4
PRIOR = kl.smooth(np.array([[1.0, 1, 0, 0], [0, 0, 1, 1]]), 0.01)
TARGETS = ("A", "B")
KEYWORDS = {"TOPS": ("t-shirt", "v-neck", "short sleeve", "top"), "DRESS": ("dress", "midi design", "v-neck")}


def tv(a, b):
    return 0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum()


# ---- keyword feature of the confidence ------------------------------------------------------------------


def test_keyword_hits_count_distinct_whole_word_phrases_of_the_normalized_text():
    texts = ["Cotton fabric, V-neck, Short sleeve, V-NECK", "<p>A <b>midi design</b> dress</p>", "V-necked top",
             "shortsleeve", None, ""]
    h = keyword_hits(texts, ["TOPS", "DRESS", "UNKNOWN"], KEYWORDS)
    assert h.tolist() == [[2, 1, 0],  # v-neck counted once per category, short sleeve as a phrase
                          [0, 2, 0],  # HTML stripped, case folded
                          [1, 0, 0],  # "v-necked" is not "v-neck"; "top" is a word
                          [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_keyword_margin_compares_the_chosen_category_with_the_runner_up():
    targets = ["TOPS", "DRESS"]
    texts = ["v-neck, short sleeve, t-shirt", "v-neck, short sleeve, t-shirt", "midi design dress", "plain words"]
    kl_rows = np.array([[0.1, 0.5], [0.5, 0.1], [0.1, 0.2], [0.1, 0.2]])  # best: TOPS, DRESS, TOPS, TOPS
    m = keyword_margin(kl_rows, texts, targets, KEYWORDS)
    np.testing.assert_allclose(m, [np.log1p(3) - np.log1p(1), np.log1p(1) - np.log1p(3), -np.log1p(2), 0.0])


def test_the_keyword_feature_moves_the_confidence_and_is_zero_without_text():
    kl_rows = np.array([[0.1, 0.3], [0.1, 0.3]])
    cal = Calibration((1.0, -0.5, 0.5, 2.0), 0.0, 0.8, features=FEATURES, keywords=KEYWORDS)
    named, other = cal.confidence(kl_rows, [False, False], ["a t-shirt with a v-neck", "a dress"], ["TOPS", "DRESS"])
    assert named > other  # the text names the chosen category's words vs the runner-up's
    x = cal.feature_matrix(kl_rows, [False, False])  # no texts: no keyword evidence
    assert x.shape == (2, 4) and (x[:, 3] == 0).all()
    blind = Calibration((1.0, -0.5, 0.5), 0.0)  # KL-only calibrations still work as before
    assert blind.feature_matrix(kl_rows, [False, False], ["a dress"] * 2, ["TOPS", "DRESS"]).shape == (2, 3)


def test_a_keyword_calibration_round_trips_through_json_and_rejects_mismatches():
    cal = Calibration((1.0, -0.5, 0.5, 2.0), 0.1, 0.8, {"ece": 0.01}, FEATURES, KEYWORDS)
    d = cal.to_json()
    assert d["features"] == list(FEATURES) and d["keywords"]["TOPS"] == list(KEYWORDS["TOPS"])
    back = Calibration.from_json(d)
    assert back == cal and back.keywords == KEYWORDS
    old = Calibration.from_json({"kind": "platt", "features": list(KL_FEATURES), "weights": [1, 2, 3], "bias": 0})
    assert old.features == KL_FEATURES and old.keywords == {}
    with pytest.raises(ValueError):
        Calibration((1.0, 2.0, 3.0), 0.0, features=FEATURES)  # 4 features, 3 weights
    with pytest.raises(ValueError):
        Calibration.from_json({**d, "features": [*FEATURES, "x"]})


def test_the_service_confidence_sees_the_products_texts():
    from models.artifact import ArtifactCategorizer

    q = kl.smooth(np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), 0.01)
    cal = Calibration((1.0, 0.0, 0.0, 3.0), 0.0, features=FEATURES, keywords=KEYWORDS)
    stub = SimpleNamespace(_projections=(q, ("TOPS", "DRESS"), "v1", None), abstain_threshold=None, fallback="TOPS",
                           artifact=SimpleNamespace(calibration=cal))
    p = np.array([[0.7, 0.3, 0, 0], [0.7, 0.3, 0, 0]])
    used = np.zeros(2, bool)
    a, b = ArtifactCategorizer.decide(stub, p, used, ["v-neck t-shirt", "a dress"])
    assert a.category == b.category == "TOPS"
    assert a.confidence == pytest.approx(float(cal.confidence(kl.kl_matrix(p[:1], q), used[:1], ["v-neck t-shirt"],
                                                              ["TOPS", "DRESS"])[0]))
    assert a.confidence > b.confidence


# ---- tempered corrections -------------------------------------------------------------------------------


def test_tempering_flattens_keeps_distributions_and_one_is_the_identity():
    p = np.array([[0.8, 0.15, 0.05, 0.0]])
    flat = tempered(p, 0.3)
    np.testing.assert_allclose(flat.sum(), 1.0)
    assert flat[0, 0] < p[0, 0] and flat[0, 2] > p[0, 2] and flat[0, 3] == 0  # mass moves to runner-ups, not to zeros
    assert (np.argsort(flat[0, :3]) == np.argsort(p[0, :3])).all()  # order kept
    np.testing.assert_allclose(tempered(p, 1.0), p)


def test_a_tempered_update_averages_the_tempered_distributions():
    p = np.array([0.9, 0.1, 0.0, 0.0])
    cs = [Correction(f"x{i}", "A", p, f"r{i}") for i in range(10)]
    q, mass = corrected_projections(PRIOR, TARGETS, cs, prior_strength=3, reviewer_cap=20, temperature=0.5)
    np.testing.assert_allclose(q[0], (3 * PRIOR[0] + 10 * tempered(p[None, :], 0.5)[0]) / 13)
    np.testing.assert_allclose(q[1], PRIOR[1])
    plain, _ = corrected_projections(PRIOR, TARGETS, cs, prior_strength=3, reviewer_cap=20)
    np.testing.assert_allclose(plain[0], (3 * PRIOR[0] + 10 * p) / 13)  # temperature 1: the plain mean


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_the_reviewer_cap_bound_holds_whatever_the_temperature(temperature):
    target = np.array([0.0, 0.0, 0.0, 1.0])
    flood = [Correction(f"x{i}", "A", np.array([0.01, 0.01, 0.01, 0.97]), "mallory") for i in range(5_000)]
    k, cap = 3.0, 20.0
    q, mass = corrected_projections(PRIOR, TARGETS, flood, k, cap, temperature=temperature)
    assert mass[0] == pytest.approx(cap)
    assert tv(q[0], PRIOR[0]) <= cap / (k + cap) * tv(PRIOR[0], target) + 1e-9


def test_the_service_state_runs_the_tempered_rule_with_its_settings():
    s = Settings()
    st = ProjectionState(Base("v1", TARGETS, PRIOR), S, "m1", s.corrections_prior_strength,
                         s.corrections_reviewer_cap, s.corrections_temperature)
    st.corrections = {"1": Correction("1", "A", np.array([0.7, 0.3, 0.0, 0.0]), "r", "t")}
    q, _, _ = st.projections()
    want, _ = corrected_projections(PRIOR, TARGETS, list(st.corrections.values()), s.corrections_prior_strength,
                                    s.corrections_reviewer_cap, temperature=s.corrections_temperature)
    np.testing.assert_allclose(q, want)
    assert s.corrections_temperature < 1.0  # the default is the tempered rule chosen by training/learning_curve.py


def test_projections_are_bit_identical_whatever_order_the_corrections_were_read_in():
    rng = np.random.default_rng(3)
    cs = [Correction(f"p{i}", "AB"[i % 2], rng.dirichlet(np.full(S, 0.3)), f"r{i % 3}", f"t{i}") for i in range(60)]
    q, mass = corrected_projections(PRIOR, TARGETS, cs, 3, 20, temperature=0.3)
    for seed in range(3):
        shuffled = [cs[i] for i in np.random.default_rng(seed).permutation(len(cs))]
        q2, mass2 = corrected_projections(PRIOR, TARGETS, shuffled, 3, 20, temperature=0.3)
        assert np.array_equal(q, q2) and np.array_equal(mass, mass2)  # exact, not approximately
