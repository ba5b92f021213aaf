"""Target taxonomies and their projections onto the source label space.

A projection q_t is a distribution over the source labels that stands for target category
t; a product goes to the target whose projection is KL-nearest to its predicted source
distribution (`models.kl`). Projections mix three pieces of evidence, see
`build_projections`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import yaml

from models import kl


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    keywords: tuple[str, ...]
    source_classes: tuple[str, ...]  # catalogue articleTypes that belong to this category


@dataclass(frozen=True)
class Taxonomy:
    version: str
    fallback: str
    categories: tuple[Category, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)


def load_taxonomy(path: str | Path) -> Taxonomy:
    d = yaml.safe_load(Path(path).read_text())
    cats = tuple(
        Category(
            name=str(c["name"]),
            description=str(c.get("description", "")),
            keywords=tuple(str(k) for k in c.get("keywords", ())),
            source_classes=tuple(str(s) for s in c.get("source_classes", ())),
        )
        for c in d["categories"]
    )
    return Taxonomy(version=str(d.get("version", Path(path).stem)), fallback=str(d.get("fallback", "OTHERS")),
                    categories=cats)


class _Predicts(Protocol):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def mapped_classes(category: Category, labels: Sequence[str]) -> list[int]:
    """Label indices of the category's source classes; pooled rare types (``other:<NAME>``) included."""
    wanted = set(category.source_classes) | {f"other:{category.name}"}
    return [i for i, lab in enumerate(labels) if lab in wanted]


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
