"""The online correction rules: what people's corrections change in the choice (pure, no I/O).

Two rules, both pure functions of the latest correction per product, which every running instance
rebuilds from the corrections topic (`consumer.corrections`):

* ``adapter`` (the default, `fit_adapter`): a small per-target adapter over the product's source
  distribution, fitted to the corrections, that shifts each target's divergence. It learns *which
  distributions belong where* on the marketplace (a product the text model reads as mostly tops but
  partly dresses, corrected to DRESS, moves the boundary for similar products) without moving the
  projections of real tops.
* ``projections`` (the first rule, `corrected_projections`): the corrected products' distributions
  averaged into their category's projection q_t.

`projection_version` stamps the result so instances that have read the same corrections agree;
`reviewer_weights` bounds one reviewer's pull.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models import kl


@dataclass(frozen=True)
class Correction:
    """One person's decision: product ``product_id`` belongs to ``category``; ``p`` is its predicted
    distribution over the source labels (what the model saw when it chose)."""

    product_id: str
    category: str
    p: np.ndarray  # [S], sums to one
    reviewer: str | None = None
    stamp: str = ""  # e.g. the correction time; only feeds `projection_version`


def reviewer_weights(reviewers: Sequence[str | None], cap: float) -> np.ndarray:
    """Weight per correction: 1, except that all corrections of one reviewer share at most ``cap``.

    A reviewer with n > cap corrections gives each min(1, cap / n): the reviewer's own mean is kept,
    its pull is bounded, and the result does not depend on the order corrections arrived in (so every
    instance reading the same compacted topic agrees). Corrections without a reviewer count as one
    reviewer, ``None``.
    """
    counts: dict[str | None, int] = {}
    for r in reviewers:
        counts[r] = counts.get(r, 0) + 1
    return np.array([min(1.0, cap / counts[r]) for r in reviewers], dtype=np.float64)


def tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of ``p`` raised to the power ``temperature`` and renormalized: < 1 flattens (a corrected
    product's runner-up source classes count more), 1 leaves them as they are. Still distributions."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    if temperature == 1.0:
        return kl.normalize_rows(p)
    return kl.normalize_rows(np.where(p > 0, p, 0.0) ** temperature)


def corrected_projections(
    prior: np.ndarray,
    targets: Sequence[str],
    corrections: Sequence[Correction],
    prior_strength: float = 10.0,
    reviewer_cap: float = 20.0,
    carried_from: dict[str, Sequence[str]] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Projections after corrections, and the corrections' total weight per target ([T, S], [T]).

    LEEP-style running estimate of P(source | target) from corrected products, blended with the
    taxonomy's prior q_t (which stands for ``prior_strength`` corrections):

        q_t = (k * prior_t + sum_i w_i p~_i) / (k + sum_i w_i)      over corrections i of target t

    with w_i from `reviewer_weights` and p~_i = `tempered` (p_i, ``temperature``): each corrected
    product's distribution raised to the power tau and renormalized before it is averaged (tau < 1
    flattens the model's over-sharp answers on products it never saw; tau = 1 is the plain mean).
    Rows stay strictly positive because the prior is. Bound on abuse: every p~_i is a distribution
    and one reviewer's corrections weigh at most ``reviewer_cap`` in total, so they move any q_t at
    most cap / (k + cap) of the way (total variation) towards that reviewer's own (tempered) mean,
    less as other reviewers' corrections accumulate, whatever the temperature. A correction counts for target t when it names t or a
    name in ``carried_from[t]`` (renames and merges); any other name is ignored here (the reader sends
    those to the DLQ).
    """
    prior = np.asarray(prior, dtype=np.float64)
    owner = _owners(targets, carried_from)
    num = np.zeros_like(prior)
    mass = np.zeros(len(targets))
    # Summed in one fixed order (product, then the rest of the key): float sums then do not depend on the order the
    # corrections were read in, so every instance computes bit-identical projections from the same corrections.
    kept = _applicable(corrections, owner)
    if kept:
        w = reviewer_weights([c.reviewer for c in kept], reviewer_cap)
        for c, wi in zip(kept, w):
            t = owner[c.category]
            num[t] += wi * tempered(np.asarray(c.p, dtype=np.float64)[None, :], temperature)[0]
            mass[t] += wi
    q = (prior_strength * prior + num) / (prior_strength + mass)[:, None]
    return kl.normalize_rows(q), mass


def _owners(targets: Sequence[str], carried_from: dict[str, Sequence[str]] | None) -> dict[str, int]:
    """Category name (current or carried from a renamed/merged one) → target row."""
    owner: dict[str, int] = {}
    for t, name in enumerate(targets):
        for alias in (carried_from or {}).get(name, ()):
            owner.setdefault(alias, t)
        owner[name] = t  # a current name always wins over an alias
    return owner


def _applicable(corrections: Sequence[Correction], owner: dict[str, int]) -> list[Correction]:
    """The corrections naming a known category, in one fixed order (product, then the rest of the key):
    float sums over them then do not depend on the order they were read in."""
    return sorted((c for c in corrections if c.category in owner),
                  key=lambda c: (c.product_id, c.category, c.reviewer or "", c.stamp))


@dataclass(frozen=True)
class Adapter:
    """Learned per-target shifts of the divergences: KL'_t(p) = KL(p ‖ q_t) − θ_tᵀ (√p, 1), less its row
    maximum, so that KL' ≥ KL ≥ 0 (a constant per product changes neither the choice nor the margins, and the
    confidence's log1p features stay defined).

    ``theta`` is [S + 1, T]. The features √p have unit length whatever the product, which is what
    makes one reviewer's pull boundable (see `fit_adapter`)."""

    theta: np.ndarray
    corrections: int = 0

    def shift(self, p: np.ndarray) -> np.ndarray:
        """[B, T] amounts (nats, ≤ 0) to subtract from each target's divergence."""
        a = adapter_features(p) @ self.theta
        return a - a.max(axis=1, keepdims=True)

    def adjusted(self, kl_rows: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The divergences the choice, the alternatives and the confidence then read."""
        return np.asarray(kl_rows, dtype=np.float64) - self.shift(p)


def adapter_features(p: np.ndarray) -> np.ndarray:
    """(√p, 1) per row: the Hellinger embedding of the distribution, plus a bias."""
    p = kl.normalize_rows(np.clip(np.asarray(p, dtype=np.float64), 0.0, None))
    return np.hstack([np.sqrt(p), np.ones((len(p), 1))])


def fit_adapter(
    base_q: np.ndarray,
    targets: Sequence[str],
    corrections: Sequence[Correction],
    l2: float = 1.0,
    reviewer_cap: float = 20.0,
    carried_from: dict[str, Sequence[str]] | None = None,
    max_iter: int = 3000,
    tol: float = 1e-9,
) -> Adapter | None:
    """The adapter that best explains the corrections on top of argmin KL (None without corrections).

    Minimises, over θ ([S + 1, T]),

        Σ_i w_i · CE(softmax_t(−KL(p_i ‖ q_t) + θ_tᵀ x_i), category_i) + l2/2 · ‖θ‖²,   x_i = (√p_i, 1)

    with w_i from `reviewer_weights` (one reviewer's corrections weigh at most ``reviewer_cap``). The
    objective is l2-strongly convex, so its minimiser is unique and found by accelerated gradient
    descent with a fixed step and a deterministic stop; corrections are taken in one fixed order
    (product, then the rest of the key), so every instance computes bit-identical θ from the same
    corrections, whatever the order it read them in.

    Bound on one reviewer: the gradient of one unit of weight is at most ‖P − Y‖·‖x‖ ≤ √2·√2 = 2, so
    adding or withdrawing all of one reviewer's corrections (weight ≤ cap) moves the minimiser by at
    most 2·cap / l2 (Frobenius norm), and any product's divergence margin between two targets by at
    most 4·cap / l2 nats (80 nats at the defaults cap 20, l2 1: the cap bounds a reviewer's share of
    the weight; it does not stop a reviewer from moving products near a boundary).
    """
    base_q = np.asarray(base_q, dtype=np.float64)
    owner = _owners(targets, carried_from)
    kept = _applicable(corrections, owner)
    if not kept:
        return None
    p = kl.normalize_rows(np.stack([np.clip(np.asarray(c.p, dtype=np.float64), 0.0, None) for c in kept]))
    x = adapter_features(p)
    offset = -kl.kl_matrix(p, base_q)
    y = np.zeros((len(kept), len(targets)))
    y[np.arange(len(kept)), [owner[c.category] for c in kept]] = 1.0
    w = reviewer_weights([c.reviewer for c in kept], reviewer_cap)[:, None]
    # Smoothness: the softmax cross-entropy's Hessian is at most 1/2 in the logits and ‖x‖² = 2.
    lipschitz = l2 + float(w.sum())
    momentum = (np.sqrt(lipschitz) - np.sqrt(l2)) / (np.sqrt(lipschitz) + np.sqrt(l2))
    theta = np.zeros((x.shape[1], len(targets)))
    ahead = theta
    for _ in range(max_iter):
        grad = x.T @ (w * (_softmax(offset + x @ ahead) - y)) + l2 * ahead
        nxt = ahead - grad / lipschitz
        ahead, theta = nxt + momentum * (nxt - theta), nxt
        if float(np.abs(grad).max()) <= tol:
            break
    return Adapter(theta, len(kept))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def projection_version(base_version: str, corrections: Sequence[Correction], targets: Sequence[str],
                       carried_from: dict[str, Sequence[str]] | None = None) -> str:
    """``<base>`` without applicable corrections, else ``<base>+c<count>.<digest>``.

    The digest covers the sorted (product, category, reviewer, stamp) of the corrections that count,
    so every instance that has read the same corrections stamps the same version, whatever the order.
    """
    names = set(targets) | {a for v in (carried_from or {}).values() for a in v}
    kept = sorted((c.product_id, c.category, c.reviewer or "", c.stamp) for c in corrections if c.category in names)
    if not kept:
        return base_version
    digest = hashlib.sha256(repr(kept).encode()).hexdigest()[:8]
    return f"{base_version}+c{len(kept)}.{digest}"
