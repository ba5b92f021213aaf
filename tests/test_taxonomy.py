"""Projections onto the source label space and the KL choice, on hand-made inputs."""
from __future__ import annotations

import numpy as np

from models.taxonomy import Category, Taxonomy, build_projections, choose_categories, load_taxonomy
from training.marketplace_eval import TAXONOMY

LABELS = ["Dresses", "Jeans", "Trousers", "Heels", "other:SHOE"]
TAX = Taxonomy(
    version="t1",
    fallback="OTHERS",
    categories=(
        Category("DRESS", "dresses", ("midi",), ("Dresses",)),
        Category("PANT", "trousers and jeans", ("jeans",), ("Jeans", "Trousers")),
        Category("SHOE", "footwear", ("heel",), ("Heels", "Flip Flops")),
        Category("OTHERS", "everything else", (), ()),
    ),
)


class KeywordModel:
    """A real (if tiny) predictor: puts most mass on the label named in the text."""

    def predict_proba(self, texts):
        out = np.full((len(texts), len(LABELS)), 0.02)
        for i, t in enumerate(texts):
            for j, lab in enumerate(LABELS):
                if lab.lower().rstrip("s") in t.lower():
                    out[i, j] = 1.0
        return out / out.sum(axis=1, keepdims=True)


def test_projection_rows_are_smoothed_distributions():
    q = build_projections(TAX, LABELS, KeywordModel(), None, alpha=1e-3, w_text=0.2)
    assert q.shape == (4, len(LABELS))
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert (q > 0).all()


def test_explicit_mapping_moves_mass_onto_mapped_classes():
    text_only = build_projections(TAX, LABELS, KeywordModel(), None, w_text=0.2, w_map=0.0)
    mapped = build_projections(TAX, LABELS, KeywordModel(), None, w_text=0.2, w_map=0.5)
    shoe = 2
    # Heels and the pooled rare shoe types (other:SHOE) gain; Flip Flops is not a label, ignored
    assert mapped[shoe, 3] > text_only[shoe, 3] and mapped[shoe, 4] > text_only[shoe, 4]
    assert mapped[shoe, :3].sum() < text_only[shoe, :3].sum()
    mapping_only = build_projections(TAX, LABELS, None, None, alpha=1e-3)
    np.testing.assert_allclose(mapping_only[1, [1, 2]].sum(), 1 - 1e-3 * 3 / 5)
    np.testing.assert_allclose(mapping_only[3], 1 / len(LABELS))  # OTHERS: no evidence at all


def test_examples_pull_projection_towards_their_predictions():
    examples = [("jean skinny fit", "PANT")] * 3
    without = build_projections(TAX, LABELS, KeywordModel(), None, w_text=0.2)
    with_ex = build_projections(TAX, LABELS, KeywordModel(), examples, w_text=0.2)
    assert with_ex[1, 1] > without[1, 1]  # PANT row, Jeans column
    np.testing.assert_allclose(with_ex[[0, 2, 3]], without[[0, 2, 3]])


def test_kl_choice_picks_the_right_target_and_abstains():
    q = build_projections(TAX, LABELS, None, None)
    p = np.array([[0.9, 0.05, 0.05, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0.1, 0.6, 0.3]])
    choices = choose_categories(p, q, TAX.targets)
    assert [c.category for c in choices] == ["DRESS", "PANT", "SHOE"]
    abstained = choose_categories(p, q, TAX.targets, threshold=0.0, fallback=TAX.fallback)
    assert all(c.abstained and c.category == "OTHERS" for c in abstained)


def test_marketplace_taxonomy_loads_with_mapping_for_every_target():
    tax = load_taxonomy(TAXONOMY)
    assert len(tax.targets) == 12 and tax.fallback in tax.targets
    assert all(c.source_classes and c.keywords for c in tax.categories)


def test_soft_label_rows_are_distributions_even_for_a_target_without_source_classes():
    """A capped label space can lack every source class of a target (SKIRT here): its row must not be
    0/0 (NaN would poison the text model's weights), and mapped targets keep their frequency rows."""
    from training.marketplace_eval import target_soft_labels

    taxonomy = load_taxonomy(TAXONOMY)
    labels = ["Tshirts", "Shirts", "Dresses", "other:OTHERS"]
    rows = target_soft_labels(taxonomy, labels, np.array([30.0, 10.0, 5.0, 1.0]))
    for name, row in rows.items():
        assert np.isfinite(row).all() and abs(row.sum() - 1) < 1e-6, name
    np.testing.assert_allclose(rows["TOPS"][:2], [31 / 42, 11 / 42], rtol=1e-6)
    np.testing.assert_allclose(rows["SKIRT"], 0.25)
