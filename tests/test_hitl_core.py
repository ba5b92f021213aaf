"""Human in the loop, pure parts: the correction update rule, the reviewer cap, version stamps,
calibration math, taxonomy-file validation and re-projection (hand-made inputs, no I/O)."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from consumer.corrections import Base, ProjectionState
from consumer.scoring import needs_review
from models import kl
from models.calibration import Calibration, features
from models.taxonomy import (
    Category, Correction, Taxonomy, TaxonomyError, changed_projections, corrected_projections, parse_taxonomy,
    plan_change, projection_version, reviewer_weights,
)
from schemas import CategoryCorrected, TaxonomyPublished
from training.calibrate import coverage_curve, ece, fit_platt, threshold_for_accuracy

S = 4
PRIOR = kl.smooth(np.array([[1.0, 1, 0, 0], [0, 0, 1, 1]]), 0.01)
TARGETS = ("A", "B")
NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)


def corr(pid, cat, p, reviewer=None):
    return Correction(pid, cat, np.asarray(p, float), reviewer, "t")


def tv(a, b):
    return 0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum()


def test_without_corrections_the_projections_are_the_prior():
    q, mass = corrected_projections(PRIOR, TARGETS, [])
    np.testing.assert_allclose(q, PRIOR)
    assert mass.tolist() == [0, 0]


def test_corrections_pull_their_target_towards_the_corrected_products_mean_only():
    p = [0.0, 1.0, 0.0, 0.0]
    few, _ = corrected_projections(PRIOR, TARGETS, [corr(f"x{i}", "A", p, f"r{i}") for i in range(2)], 10, 20)
    many, mass = corrected_projections(PRIOR, TARGETS, [corr(f"x{i}", "A", p, f"r{i}") for i in range(200)], 10, 20)
    assert tv(many[0], p) < tv(few[0], p) < tv(PRIOR[0], p)  # converges to the LEEP estimate
    np.testing.assert_allclose(many[0], (10 * PRIOR[0] + 200 * np.array(p)) / 210)
    np.testing.assert_allclose(many[1], PRIOR[1])  # B untouched
    assert mass.tolist() == [200, 0] and (many > 0).all()
    np.testing.assert_allclose(many.sum(axis=1), 1.0)


def test_one_reviewer_cannot_move_a_projection_further_than_the_cap_allows():
    flood = [corr(f"x{i}", "A", [0, 0, 0, 1.0], "mallory") for i in range(10_000)]
    q, mass = corrected_projections(PRIOR, TARGETS, flood, prior_strength=10, reviewer_cap=20)
    assert mass[0] == pytest.approx(20)
    assert tv(q[0], PRIOR[0]) <= 20 / (10 + 20) * tv(PRIOR[0], [0, 0, 0, 1.0]) + 1e-9
    honest = [corr(f"h{i}", "A", PRIOR[0], f"r{i}") for i in range(100)]  # other reviewers dilute it further
    q2, _ = corrected_projections(PRIOR, TARGETS, flood + honest, 10, 20)
    assert tv(q2[0], PRIOR[0]) < tv(q[0], PRIOR[0]) / 4


def test_reviewer_weights_share_the_cap_and_ignore_order():
    w = reviewer_weights(["a"] * 40 + ["b"] * 5 + [None] * 2, cap=20)
    assert w[:40].sum() == pytest.approx(20) and w[40:45].tolist() == [1] * 5 and w[45:].tolist() == [1, 1]
    np.testing.assert_allclose(reviewer_weights(["b", "a", "a", "a"], 2), reviewer_weights(["a", "a", "b", "a"], 2)[[2, 0, 1, 3]])


def test_unknown_categories_are_ignored_and_carried_names_count_for_their_new_category():
    cs = [corr("1", "OLD_A", [0, 1.0, 0, 0]), corr("2", "NOPE", [0, 0, 0, 1.0])]
    q, mass = corrected_projections(PRIOR, TARGETS, cs, carried_from={"A": ["OLD_A"]})
    assert mass.tolist() == [1, 0] and q[0, 1] > PRIOR[0, 1]


def test_projection_version_is_the_same_whatever_the_order_and_changes_with_the_content():
    a = [corr("1", "A", [1, 0, 0, 0], "r"), corr("2", "B", [0, 0, 1, 0])]
    assert projection_version("v1", [], TARGETS) == "v1"
    assert projection_version("v1", a, TARGETS) == projection_version("v1", a[::-1], TARGETS)
    assert projection_version("v1", a, TARGETS).startswith("v1+c2.")
    assert projection_version("v1", a[:1], TARGETS) != projection_version("v1", a, TARGETS)
    assert projection_version("v1", [corr("3", "ZZZ", [1, 0, 0, 0])], TARGETS) == "v1"


def _rec(pid, cat, dist=None, model="m1", text=None, reviewer=None):
    return CategoryCorrected(product_id=pid, category=cat, source_distribution=dist, model_version=model, text=text,
                             reviewer=reviewer, corrected_at=NOW)


def test_projection_state_keeps_the_latest_correction_per_product_and_checks_the_model():
    st = ProjectionState(Base("v1", TARGETS, PRIOR), S, "m1", 10, 20)
    assert st.distribution(_rec("1", "A", [1, 1, 0, 0])).tolist() == [0.5, 0.5, 0, 0]
    assert st.distribution(_rec("1", "A", [1, 1, 0, 0], model="m0")) is None  # another model's label space
    assert st.distribution(_rec("1", "A", [1, 1, 0])) is None
    st.put(_rec("1", "A"), np.array([0, 1.0, 0, 0]))
    st.put(_rec("1", "B"), np.array([0, 0, 0, 1.0]))  # the same product corrected again: replaces
    q, targets, version = st.projections()
    assert len(st.corrections) == 1 and q[1, 3] > PRIOR[1, 3] and q[0, 1] == pytest.approx(PRIOR[0, 1])
    assert version.startswith("v1+c1.") and targets == TARGETS
    other = TaxonomyPublished(version="v2", model_version="m0", fallback="A", targets=["A"], projections=[[0.25] * 4],
                              document="", published_at=NOW)
    assert not st.set_taxonomy(other) and st.base.version == "v1"
    assert st.set_taxonomy(other.model_copy(update={"model_version": "m1"}))
    assert st.projections()[1] == ("A",) and not st.base.known("B")


def test_needs_review_only_with_a_confidence_under_the_threshold():
    assert needs_review(0.5, 0.6) and not needs_review(0.7, 0.6)
    assert not needs_review(None, 0.6) and not needs_review(0.1, None)


# ---- calibration ---------------------------------------------------------------------------------------


def test_features_are_margin_best_and_image_and_confidence_grows_with_the_margin():
    k = np.array([[0.5, 0.1, 2.0], [0.2, 0.25, 3.0]])
    np.testing.assert_allclose(features(k, [True, False]), [[np.log1p(0.4), np.log1p(0.1), 1], [np.log1p(0.05), np.log1p(0.2), 0]])
    cal = Calibration((3.0, -1.0, 0.5), -1.0, 0.6)
    c = cal.confidence(np.array([[0.1, 0.2], [0.1, 1.0], [0.1, 5.0]]), [False] * 3)
    assert (np.diff(c) > 0).all() and ((0 < c) & (c < 1)).all()
    assert Calibration.from_json(cal.to_json()) == cal
    with pytest.raises(ValueError):
        Calibration.from_json({**cal.to_json(), "features": ["x"]})


def test_fit_platt_recovers_a_known_logistic_model_and_the_fit_is_calibrated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    y = rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5)))
    w, b = fit_platt(x, y)
    np.testing.assert_allclose([*w, b], [2.0, -1.0, 0.5], atol=0.1)
    conf = 1 / (1 + np.exp(-(x @ w + b)))
    assert ece(conf, y) < 0.02
    assert ece(np.full(len(y), 0.99), y) > 0.3  # an overconfident constant is not


def test_coverage_curve_and_threshold_pick_the_most_confident_first():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 0, 1, 0])
    cov, acc = coverage_curve(conf, correct)
    np.testing.assert_allclose(cov, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(acc, [1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert threshold_for_accuracy(conf, correct, 0.95) == 0.8
    assert threshold_for_accuracy(conf, correct, 0.7) == 0.6


# ---- taxonomy files --------------------------------------------------------------------------------------

LABELS = ["Bra", "Briefs", "other:LINGERIE", "Dresses"]
A2L = {"Bra": "Bra", "Briefs": "Briefs", "Swimwear": "other:LINGERIE", "Dresses": "Dresses"}
CURRENT = Taxonomy("v1", "DRESS", (Category("LINGERIE", "lingerie", ("bra",), ("Bra", "Briefs")),
                                   Category("DRESS", "dresses", ("dress",), ("Dresses",))))


def doc(*cats, version="v2", fallback="DRESS"):
    return {"version": version, "fallback": fallback, "categories": list(cats)}


def cat(name, **kw):
    return {"name": name, "description": f"{name.lower()} things", "keywords": [name.lower()], **kw}


def test_a_bad_taxonomy_file_lists_every_problem():
    with pytest.raises(TaxonomyError) as e:
        parse_taxonomy(doc(cat("bad name"), cat("DRESS", description=""), cat("DRESS"), {"name": "X", "colour": 1},
                           fallback="NONE", version=""))
    text = str(e.value)
    for fragment in ("'version' is required", "UPPER_CASE", "description is required", "duplicate", "fallback",
                     "unknown field", "at least one keyword"):
        assert fragment in text


def test_plan_change_rejects_unknown_sources_old_names_reused_versions_and_categories_without_evidence():
    with pytest.raises(TaxonomyError) as e:
        plan_change(parse_taxonomy(doc(cat("LINGERIE", source_classes=["Bras"]), cat("DRESS"), cat("NEW", **{"from": ["GONE"]}),
                                       version="v1")), CURRENT, LABELS, A2L)
    text = str(e.value)
    assert "unknown source classes ['Bras']" in text and "'GONE'" in text and "already applied" in text
    assert "NEW: needs examples or source classes" in text


def test_rename_and_merge_carry_corrections_a_split_does_not():
    rename = parse_taxonomy(doc(cat("UNDERWEAR", source_classes=["Bra", "Briefs"], **{"from": ["LINGERIE"]}), cat("DRESS",
                                source_classes=["Dresses"])))
    carried, rebuilt = plan_change(rename, CURRENT, LABELS, A2L)
    assert carried == {"UNDERWEAR": ["LINGERIE"]} and rebuilt == ["UNDERWEAR"]
    split = parse_taxonomy(doc(cat("LINGERIE", source_classes=["Bra", "Briefs"], **{"from": ["LINGERIE"]}),
                               cat("SWIMWEAR", examples=["bikini"], **{"from": ["LINGERIE"]}),
                               cat("DRESS", source_classes=["Dresses"])))
    carried, rebuilt = plan_change(split, CURRENT, LABELS, A2L)
    assert carried == {} and rebuilt == ["SWIMWEAR"]  # LINGERIE unchanged: keeps its row and its own corrections


def test_corrections_survive_a_chain_of_renames_and_a_category_that_stays_keeps_what_it_carried():
    # v1 LINGERIE -> v2 UNDERWEAR -> v3 INTIMATES: before, v3 carried only UNDERWEAR, and every correction
    # naming LINGERIE stopped counting (and new ones went to the DLQ as unknown_category).
    v2 = parse_taxonomy(doc(cat("UNDERWEAR", source_classes=["Bra", "Briefs"], **{"from": ["LINGERIE"]}),
                            cat("DRESS", source_classes=["Dresses"])))
    carried_v2, _ = plan_change(v2, CURRENT, LABELS, A2L)
    v3 = parse_taxonomy(doc(cat("INTIMATES", source_classes=["Bra", "Briefs"], **{"from": ["UNDERWEAR"]}),
                            cat("DRESS", source_classes=["Dresses"]), version="v3"))
    carried_v3, _ = plan_change(v3, v2, LABELS, A2L, carried_v2)
    assert carried_v3 == {"INTIMATES": ["LINGERIE", "UNDERWEAR"]}
    v4 = parse_taxonomy(doc(cat("INTIMATES", source_classes=["Bra", "Briefs"]), cat("DRESS", source_classes=["Dresses"]),
                            cat("SKIRT", examples=["a pleated midi skirt"]), version="v4"))
    assert plan_change(v4, v3, LABELS, A2L, carried_v3)[0] == {"INTIMATES": ["LINGERIE", "UNDERWEAR"]}
    v5 = parse_taxonomy(doc(cat("INTIMATES", source_classes=["Bra", "Briefs"]), cat("DRESS", source_classes=["Dresses"]),
                            cat("LINGERIE", examples=["lace body"]), version="v5"))  # the old name in use again
    assert plan_change(v5, v3, LABELS, A2L, carried_v3)[0] == {"INTIMATES": ["UNDERWEAR"]}


def test_changed_projections_keep_unchanged_rows_and_project_new_ones_from_examples_and_sources():
    current_q = kl.smooth(np.array([[1.0, 1, 1, 0], [0, 0, 0, 1]]), 0.01)
    new = parse_taxonomy(doc(cat("LINGERIE", source_classes=["Bra", "Briefs"]), cat("SWIMWEAR", examples=["bikini", "swimsuit"]),
                             cat("DRESS", source_classes=["Dresses"], examples=["midi dress"])))

    def predict(texts):  # a fake predictor is fine here: this is the pure projection rule
        return np.array([[0, 0, 1.0, 0] if "dress" not in t else [0, 0, 0, 1.0] for t in texts])

    q = changed_projections(new, ["LINGERIE", "DRESS"], current_q, ["SWIMWEAR", "DRESS"], LABELS, A2L, predict)
    np.testing.assert_allclose(q[0], current_q[0])
    assert q[1].argmax() == 2 and q[1, 2] > 0.98  # only examples: their mean prediction
    np.testing.assert_allclose(q[2], kl.smooth(np.array([[0, 0, 0, 1.0]]), 0.01)[0])  # sources and examples agree
    assert (q > 0).all()


def _shelver(*args, env=None):
    """The real CLI in a subprocess (in-process it would bind structlog to this test's captured stderr)."""
    import os
    import subprocess
    import sys

    from consumer.config import REPO_ROOT

    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def test_taxonomy_apply_cli_rejects_a_bad_file_listing_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v9\nfallback: OTHERS\ncategories:\n  - name: swim\n    keywords: []\n")
    proc = _shelver("taxonomy", "apply", str(bad))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "UPPER_CASE" in proc.stderr and "description is required" in proc.stderr and "fallback 'OTHERS'" in proc.stderr


@pytest.mark.slow  # loads TensorFlow and the committed text model
def test_taxonomy_apply_dry_run_projects_a_split_from_a_handful_of_examples(tmp_path):
    import json

    import yaml

    from consumer.config import REPO_ROOT

    doc = yaml.safe_load((REPO_ROOT / "models" / "taxonomies" / "marketplace.yaml").read_text())
    doc["version"] = "marketplace-v2-swimwear"
    doc["categories"].append({"name": "SWIMWEAR", "description": "Swimsuits and bikinis.", "keywords": ["bikini"],
                              "from": ["LINGERIE"], "examples": ["Triangle bikini top", "Navy swimsuit"]})
    f = tmp_path / "split.yaml"
    f.write_text(yaml.safe_dump(doc))
    # No broker: with the taxonomy topic switched off nothing was published before and nothing is published.
    proc = _shelver("taxonomy", "apply", "--dry-run", str(f), env={"SHELVER_TAXONOMY_TOPIC": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rebuilt"] == ["SWIMWEAR"] and out["carried_from"] == {} and out["published"] is False
    assert out["targets"][-1] == "SWIMWEAR" and out["previous"] == "marketplace-v1"
