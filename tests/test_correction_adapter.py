"""The corrections' adapter (`models.correction_rule.fit_adapter`), pure: what it learns, that every
instance computes it bit for bit whatever the order, and that one reviewer's pull stays within the
bound the README states (hand-made distributions, no I/O)."""
from __future__ import annotations

import numpy as np
import pytest

from consumer.corrections import Base, ProjectionState
from models import kl
from models.correction_rule import Correction, adapter_features, fit_adapter, projection_version

TARGETS = ("TOPS", "DRESS", "PANT")
PRIOR = kl.smooth(np.array([[1.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), 0.01)  # sources: tee, top, dress, jeans
BOXY_DRESS = [0.05, 0.6, 0.3, 0.05]  # a dress the text model reads as mostly a top
REAL_TOP = [0.3, 0.62, 0.05, 0.03]


def around(centre, n, seed):
    return np.random.default_rng(seed).dirichlet(np.asarray(centre) * 60, n)


def choose(adapter, p, q=PRIOR):
    k = kl.kl_matrix(p, q)
    return np.asarray(TARGETS)[(k if adapter is None else adapter.adjusted(k, p)).argmin(1)]


def stream(seed=0):
    dresses = [Correction(f"d{i}", "DRESS", p, f"r{i % 3}", f"t{i}") for i, p in enumerate(around(BOXY_DRESS, 12, seed))]
    tops = [Correction(f"t{i}", "TOPS", p, f"r{i % 3}", f"t{i}") for i, p in enumerate(around(REAL_TOP, 12, seed + 1))]
    return dresses + tops


def test_corrected_boxy_dresses_teach_similar_products_while_real_tops_stay_tops():
    new_dresses, new_tops = around(BOXY_DRESS, 200, 7), around(REAL_TOP, 200, 8)
    assert np.mean(choose(None, new_dresses) == "DRESS") < 0.1  # the uncorrected rule reads them as tops
    adapter = fit_adapter(PRIOR, TARGETS, stream())
    assert np.mean(choose(adapter, new_dresses) == "DRESS") > 0.95
    assert np.mean(choose(adapter, new_tops) == "TOPS") > 0.95
    assert np.all(choose(adapter, np.array([[0.01, 0.01, 0.01, 0.97]])) == "PANT")  # far from every correction


def test_no_applicable_correction_means_no_adapter():
    assert fit_adapter(PRIOR, TARGETS, []) is None
    assert fit_adapter(PRIOR, TARGETS, [Correction("x", "SPACESHIPS", np.full(4, 0.25))]) is None


def test_every_instance_fits_bit_identical_adapters_whatever_the_order():
    cs = stream()
    a = fit_adapter(PRIOR, TARGETS, cs)
    for seed in range(3):
        shuffled = [cs[i] for i in np.random.default_rng(seed).permutation(len(cs))]
        assert np.array_equal(fit_adapter(PRIOR, TARGETS, shuffled).theta, a.theta)


def test_the_fit_reaches_the_minimum_of_its_objective():
    cs = stream()
    a = fit_adapter(PRIOR, TARGETS, cs, l2=1.0)
    p = np.stack([c.p for c in cs])
    y = np.array([TARGETS.index(c.category) for c in cs])

    def objective(theta):
        logits = -kl.kl_matrix(p, PRIOR) + adapter_features(p) @ theta
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
        return -logp[np.arange(len(y)), y].sum() + 0.5 * np.sum(theta ** 2)

    best = objective(a.theta)
    rng = np.random.default_rng(0)
    assert all(objective(a.theta + 1e-3 * rng.standard_normal(a.theta.shape)) > best for _ in range(20))


@pytest.mark.parametrize("cap,l2", [(2.0, 1.0), (20.0, 1.0), (5.0, 3.0)])
def test_one_reviewer_moves_any_margin_by_at_most_four_cap_over_l2(cap, l2):
    honest = stream()
    # One reviewer floods the topic: 300 products, all pushed to PANT, whatever they are.
    flood = [Correction(f"f{i}", "PANT", p, "mallory") for i, p in enumerate(around(REAL_TOP, 300, 3))]
    a = fit_adapter(PRIOR, TARGETS, honest, l2, cap)
    b = fit_adapter(PRIOR, TARGETS, honest + flood, l2, cap)
    assert np.linalg.norm(b.theta - a.theta) <= 2 * cap / l2
    probe = np.vstack([around(c, 100, 9) for c in (BOXY_DRESS, REAL_TOP, [0.25] * 4)])
    shift = b.shift(probe) - a.shift(probe)
    margins = np.abs(shift[:, :, None] - shift[:, None, :]).max()
    assert 0 < margins <= 4 * cap / l2
    # The cap is what bounds it: without it (cap = the flood's size) the same reviewer moves far more.
    c = fit_adapter(PRIOR, TARGETS, honest + flood, l2, 300.0)
    assert np.linalg.norm(c.theta - a.theta) > np.linalg.norm(b.theta - a.theta)


def test_renamed_categories_carry_their_corrections_into_the_adapter():
    cs = [Correction(c.product_id, "FROCK" if c.category == "DRESS" else c.category, c.p, c.reviewer, c.stamp)
          for c in stream()]
    renamed = fit_adapter(PRIOR, TARGETS, cs, carried_from={"DRESS": ["FROCK"]})
    assert np.array_equal(renamed.theta, fit_adapter(PRIOR, TARGETS, stream()).theta)


def test_projection_state_under_the_adapter_rule_keeps_the_taxonomy_and_stamps_the_same_version():
    adapter_state = ProjectionState(Base("v1", TARGETS, PRIOR), 4, "m1", 3, 20, 0.3, rule="adapter")
    averaged = ProjectionState(Base("v1", TARGETS, PRIOR), 4, "m1", 3, 20, 0.3, rule="projections")
    for st in (adapter_state, averaged):
        st.corrections = {c.product_id: c for c in stream()}
    q, targets, version = adapter_state.projections()
    assert np.array_equal(q, PRIOR) and targets == TARGETS  # the adapter, not q, carries the corrections
    assert version == averaged.projections()[2] == projection_version("v1", stream(), TARGETS)
    assert np.array_equal(adapter_state.adapter().theta, fit_adapter(PRIOR, TARGETS, stream(), 1.0, 20).theta)
    assert averaged.adapter() is None and not np.allclose(averaged.projections()[0], PRIOR)


def test_adjusted_divergences_stay_non_negative_so_the_confidence_stays_defined():
    from models.calibration import Calibration

    adapter = fit_adapter(PRIOR, TARGETS, stream(), l2=0.01)  # a weak L2: large shifts
    p = np.vstack([around(c, 50, 11) for c in (BOXY_DRESS, REAL_TOP, [0.25] * 4)])
    k = kl.kl_matrix(p, PRIOR)
    adjusted = adapter.adjusted(k, p)
    assert np.abs(adapter.shift(p)).max() > 1.0  # the shifts are large enough to matter
    assert (adjusted >= k - 1e-12).all() and (adjusted >= 0).all()
    cal = Calibration((1.0, -1.0, 0.0), 0.0)
    assert np.isfinite(cal.confidence(adjusted, np.zeros(len(p), bool))).all()


# ---- the margin loss tried on 2026-12-04 (training.learning_curve.fit_margin_adapter; not adopted) -------


def test_the_margin_loss_leaves_corrections_the_model_already_agrees_with_untaught_where_cross_entropy_moves():
    from training.learning_curve import fit_margin_adapter

    agreeing = [Correction(f"p{i}", "PANT", p, f"r{i % 3}") for i, p in enumerate(around([0.02, 0.02, 0.02, 0.94], 12, 3))]
    assert np.all(choose(None, np.stack([c.p for c in agreeing])) == "PANT")  # each already right by many nats
    assert not np.any(fit_margin_adapter(PRIOR, TARGETS, agreeing, margin=1.0).theta)
    assert np.abs(fit_adapter(PRIOR, TARGETS, agreeing).theta).max() > 1e-3  # the cross-entropy keeps pushing


def test_the_margin_loss_still_teaches_corrections_the_model_gets_wrong():
    from training.learning_curve import fit_margin_adapter

    adapter = fit_margin_adapter(PRIOR, TARGETS, stream(), margin=1.0)
    assert np.mean(choose(adapter, around(BOXY_DRESS, 200, 7)) == "DRESS") > 0.9
    assert np.mean(choose(adapter, around(REAL_TOP, 200, 8)) == "TOPS") > 0.9
