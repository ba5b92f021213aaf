"""Metric helpers shared by `shelver train` and `shelver evaluate` (pure numpy/sklearn)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def source_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1, top-5 and macro-F1 over the source label space."""
    top5 = np.argsort(-probs, axis=1)[:, :5]
    pred = top5[:, 0]
    return {
        "top1": float((pred == y).mean()),
        "top5": float((top5 == y[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)),
    }


def target_metrics(pred: Sequence[str], true: Sequence[str], targets: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (over targets present in the truth) and the confusion matrix."""
    pred, true = np.asarray(pred), np.asarray(true)
    present = [t for t in targets if (true == t).any()]
    return {
        "n": int(len(true)),
        "accuracy": float((pred == true).mean()) if len(true) else float("nan"),
        "macro_f1": float(f1_score(true, pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {t: float((pred[true == t] == t).mean()) for t in present},
        "confusion": confusion_matrix(true, pred, labels=list(targets)).tolist(),
    }


TARGET_ACCURACY = 0.95  # what a reviewer-free decision must reach


def coverage_curve(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the auto-accepted) when accepting the k most confident, k = 1..N."""
    order = np.argsort(-np.asarray(conf), kind="stable")
    c = np.asarray(correct, float)[order]
    k = np.arange(1, len(c) + 1)
    return k / len(c), np.cumsum(c) / k


def accuracy_at_coverage(conf, correct, coverage: float) -> float:
    cov, acc = coverage_curve(conf, correct)
    return float(acc[max(0, int(np.ceil(coverage * len(cov))) - 1)])


def coverage_at_accuracy(conf, correct, target: float = TARGET_ACCURACY) -> float:
    """The largest share of most-confident rows whose accuracy is still at least ``target`` (0 if none)."""
    cov, acc = coverage_curve(conf, correct)
    ok = np.flatnonzero(acc >= target)
    return float(cov[ok[-1]]) if len(ok) else 0.0
