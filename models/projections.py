"""Projections: each target category as a distribution q_t over the source labels, and the KL choice.

A product goes to the target whose projection is KL-nearest to its predicted source distribution
(`models.kl`). `build_projections` builds them at training time from three pieces of evidence;
`changed_projections` rebuilds only the changed rows when a new taxonomy version is applied.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from models import kl
from models.taxonomy_document import Taxonomy, mapped_classes, resolve_sources


class _Predicts(Protocol):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def build_projections(
    taxonomy: Taxonomy,
    labels: Sequence[str],
    text_model: _Predicts | None,
    examples: Sequence[tuple[str, str]] | None = None,
    alpha: float = 1e-2,
    w_text: float = 0.0,
    w_map: float = 0.5,
    w_examples: float = 0.5,
) -> np.ndarray:
    """[T, S] projections: a weighted mix, per target, of

    (a) the text model's distribution for "name. description" (the original method's idea,
        with the description added so the name is not the only cue),
    (b) uniform mass on the explicitly mapped source classes,
    (c) the mean predicted distribution of labelled example texts of the target (LEEP-style:
        how the model actually responds to that target's products).
    A missing piece (no model, no mapped class, no example) drops out and the remaining
    weights are renormalized; rows are smoothed with `models.kl.smooth` so every entry > 0.

    Defaults come from 2-fold cross-validation inside the marketplace taxonomy examples
    (training/marketplace_eval.py): (a) hurts there even at weight 0.05 (the category prose
    spreads mass over unrelated titles' classes, which then attracts vague descriptions),
    so it is off by default; (b) and (c) tie.
    """
    targets = taxonomy.targets
    n = len(labels)
    text = np.zeros((len(targets), n))
    if text_model is not None and w_text > 0:
        prompts = [f"{c.name.lower()}. {c.description}" for c in taxonomy.categories]
        text = kl.normalize_rows(text_model.predict_proba(prompts))
    mapped = np.zeros((len(targets), n))
    for t, c in enumerate(taxonomy.categories):
        mapped[t, mapped_classes(c, labels)] = 1.0
    mapped = kl.normalize_rows(mapped)
    ex = np.zeros((len(targets), n))
    if examples and text_model is not None and w_examples > 0:
        texts, names = zip(*examples)
        probs = kl.normalize_rows(text_model.predict_proba(list(texts)))
        names = np.array(names)
        for t, name in enumerate(targets):
            if (names == name).any():
                ex[t] = probs[names == name].mean(axis=0)
    q = np.zeros((len(targets), n))
    for w, part in ((w_text, text), (w_map, mapped), (w_examples, ex)):
        present = part.sum(axis=1, keepdims=True) > 0
        q += w * np.where(present, part, 0.0)
    q[q.sum(axis=1) == 0] = 1.0  # a target without any evidence: uniform, not undefined
    return kl.smooth(q, alpha)


def choose_categories(
    p: np.ndarray,
    q: np.ndarray,
    targets: Sequence[str],
    threshold: float | None = None,
    fallback: str = "OTHERS",
) -> list[kl.Choice]:
    """KL-nearest target per prediction row (abstaining to ``fallback`` above ``threshold``)."""
    return kl.choose(kl.kl_matrix(p, q), targets, abstain_threshold=threshold, fallback=fallback)


def changed_projections(
    new: Taxonomy,
    current_targets: Sequence[str],
    current_q: np.ndarray,
    rebuilt: Sequence[str],
    labels: Sequence[str],
    article_to_label: dict[str, str],
    predict,
    alpha: float = 1e-2,
) -> np.ndarray:
    """[T_new, S]: kept rows copied from ``current_q``; rebuilt rows = ½ uniform over the resolved
    source classes + ½ mean predicted distribution of the category's examples (the same LEEP-style
    recipe as `build_projections`, a missing half dropping out), smoothed."""
    rows = []
    cur = {t: i for i, t in enumerate(current_targets)}
    for c in new.categories:
        if c.name not in rebuilt:
            rows.append(np.asarray(current_q[cur[c.name]], dtype=np.float64))
            continue
        parts = []
        idx = resolve_sources(c, labels, article_to_label)
        if idx:
            m = np.zeros(len(labels))
            m[idx] = 1.0 / len(idx)
            parts.append(m)
        if c.examples:
            parts.append(kl.normalize_rows(np.asarray(predict(list(c.examples)), dtype=np.float64)).mean(axis=0))
        rows.append(kl.smooth(np.mean(parts, axis=0)[None, :], alpha)[0])
    return np.stack(rows)
