"""Pure core of the category choice: ensembling and KL-nearest target selection.

Everything here works on numpy arrays and does no I/O, so it is unit-testable with
hand-made distributions and shared by serving, evaluation and the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_EPS = 1e-12


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; an all-zero row stays all-zero."""
    x = np.asarray(x, dtype=np.float64)
    s = x.sum(axis=-1, keepdims=True)
    return np.divide(x, s, out=np.zeros_like(x), where=s > 0)


def image_weights(
    image_used: np.ndarray, text_used: np.ndarray | None, image_weight: float
) -> np.ndarray:
    """Per-row weight of the image distribution: only the evidence an event has counts.

    Both present: ``image_weight``. Image only: 1 (an empty title is not evidence; the
    text model's output for no words is its prior, which would pull every product towards
    the commonest classes). Text only: 0. Neither: 0, i.e. the text model's prior, the
    only distribution left (the validator already refuses events with no content at all).
    """
    image_used = np.asarray(image_used, dtype=bool)
    text_used = np.ones_like(image_used) if text_used is None else np.asarray(text_used, dtype=bool)
    both = image_used & text_used
    return np.where(both, float(image_weight), np.where(image_used, 1.0, 0.0))


# How the two distributions are combined (an artifact's manifest: ``ensemble.combine``; absent: "mean").
COMBINE_RULES = ("mean", "geometric")


def ensemble(
    image_probs: np.ndarray | None,
    text_probs: np.ndarray,
    image_used: np.ndarray | None = None,
    image_weight: float = 0.5,
    text_used: np.ndarray | None = None,
    combine: str = "mean",
) -> np.ndarray:
    """The two models' distributions over the source labels, combined with weight ``image_weight``.

    ``mean``: the weighted average. ``geometric``: the weighted geometric mean, renormalized
    (a product of experts: a class either model rules out stays out, where the average keeps
    half its mass). Each row uses only the evidence it has (`image_weights`): a missing image
    never drags the prediction towards an arbitrary image output, and missing text
    (``text_used`` False: no tokens) never drags it towards the text model's prior; with
    weight 1 or 0 both rules return that one distribution.
    """
    if combine not in COMBINE_RULES:
        raise ValueError(f"ensemble rule must be one of {', '.join(COMBINE_RULES)}, not {combine!r}")
    text = normalize_rows(text_probs)
    if image_probs is None:
        return text
    image = normalize_rows(image_probs)
    if image_used is None:
        image_used = np.ones(len(text), dtype=bool)
    w = image_weights(image_used, text_used, image_weight)[:, None]
    if combine == "mean":
        return normalize_rows(w * image + (1.0 - w) * text)
    log_p = w * np.log(np.maximum(image, _EPS)) + (1.0 - w) * np.log(np.maximum(text, _EPS))
    return normalize_rows(np.exp(log_p - log_p.max(axis=1, keepdims=True)))


def top_k_sparsify(p: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest entries, renormalized (the original method's step)."""
    p = np.asarray(p, dtype=np.float64)
    if k >= p.shape[-1]:
        return normalize_rows(p)
    idx = np.argpartition(-p, k - 1, axis=-1)[..., :k]
    out = np.zeros_like(p)
    np.put_along_axis(out, idx, np.take_along_axis(p, idx, axis=-1), axis=-1)
    return normalize_rows(out)


def smooth(q: np.ndarray, alpha: float = 1e-3) -> np.ndarray:
    """Mix each projection with the uniform distribution so no entry is zero.

    Without this a target whose projection misses one source class would get an
    infinite KL from every prediction that puts mass there.
    """
    q = normalize_rows(q)
    n = q.shape[-1]
    return (1.0 - alpha) * q + alpha / n


def kl_matrix(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_b || q_t) for every prediction row b and target row t: shape [B, T].

    Terms with p_i = 0 contribute nothing (the 0 log 0 = 0 convention); q must be
    smoothed (strictly positive) beforehand.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    plogp = np.where(p > 0, p * np.log(np.maximum(p, _EPS)), 0.0).sum(axis=1)  # [B]
    cross = p @ np.log(np.maximum(q, _EPS)).T  # [B, T]
    return np.maximum(plogp[:, None] - cross, 0.0)


@dataclass(frozen=True)
class Choice:
    category: str
    kl: float
    alternatives: tuple[tuple[str, float], ...]
    abstained: bool


def choose(
    kl: np.ndarray,
    targets: Sequence[str],
    abstain_threshold: float | None = None,
    fallback: str = "OTHERS",
    n_alternatives: int = 2,
) -> list[Choice]:
    """Argmin-KL target per row, its runners-up, and abstention above the threshold."""
    order = np.argsort(kl, axis=1, kind="stable")
    out: list[Choice] = []
    for row, idx in zip(kl, order):
        best = int(idx[0])
        alts = tuple((targets[int(j)], float(row[j])) for j in idx[1 : 1 + n_alternatives])
        abstain = abstain_threshold is not None and float(row[best]) > abstain_threshold
        out.append(
            Choice(
                category=fallback if abstain else targets[best],
                kl=float(row[best]),
                alternatives=alts,
                abstained=bool(abstain),
            )
        )
    return out
