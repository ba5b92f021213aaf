"""The original prototype's ensemble and KL choice (../shared/reference/original-method.md).

Reproduced faithfully so evaluations can report it side by side with ours: subCategory
label space, top-3 sparsified distributions summed, target projections from the text
model on the bare normalized category names (also top-3), and the prototype's own KL
formula with a 1e-8 epsilon instead of smoothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from models.kl import normalize_rows, top_k_sparsify
from models.text import normalize

TOP_K = 3
EPS = 1e-8


def baseline_prediction(image_probs: np.ndarray | None, text_probs: np.ndarray) -> np.ndarray:
    """Steps 1-3: sparsify each model to its top 3, sum, renormalize."""
    total = top_k_sparsify(text_probs, TOP_K)
    if image_probs is not None:
        total = total + top_k_sparsify(image_probs, TOP_K)
    return normalize_rows(total)


def baseline_projections(category_text_probs: np.ndarray) -> np.ndarray:
    """Step 4: each target's projection = the text model's top-3 distribution for its name."""
    return top_k_sparsify(category_text_probs, TOP_K)


def category_queries(targets: Sequence[str]) -> list[str]:
    """The bare category names as the prototype fed them to the text model."""
    return [normalize(t) for t in targets]


def baseline_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Step 5: Σ_{i: p_i≠0} p_i·log((p_i+ε)/(q_i+ε)) for every prediction/target pair: [B, T]."""
    p = np.asarray(p, dtype=np.float64)[:, None, :]
    q = np.asarray(q, dtype=np.float64)[None, :, :]
    terms = np.where(p > 0, p * np.log((p + EPS) / (q + EPS)), 0.0)
    return terms.sum(axis=-1)


def baseline_choose(p: np.ndarray, q: np.ndarray, targets: Sequence[str]) -> list[str]:
    return [targets[i] for i in np.argmin(baseline_kl(p, q), axis=1)]
