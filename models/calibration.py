"""Calibrated confidence of a KL choice: P(the chosen category is right | the KL row).

The KL distances are not probabilities: a product is ambiguous when its best and second-best
categories are almost equally close, and unfamiliar when even the best one is far. A logistic
model (Platt scaling) on three features of the KL row turns that into a probability:

    margin = KL_2nd - KL_best,   best = KL_best,   image = 1 if an image was used else 0
    confidence = sigmoid(w · [log1p(margin), log1p(best), image] + b)

The weights are fitted by ``training/calibrate.py`` on labelled data the model did not train on and
stored as ``calibration.json`` beside the artifact; this module only reads and applies them (pure
numpy, no I/O except `load_calibration`). The features do not depend on the number of categories,
so the same calibration keeps working when the taxonomy's projections change (corrections,
``shelver taxonomy apply``); it is then approximate, which the reports say.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FEATURES = ("log1p_margin", "log1p_best_kl", "image_used")
FILE = "calibration.json"


def features(kl_rows: np.ndarray, image_used: np.ndarray) -> np.ndarray:
    """[B, 3] calibration features of KL rows [B, T] (T >= 2)."""
    k = np.sort(np.asarray(kl_rows, dtype=np.float64), axis=1)
    best = k[:, 0]
    margin = k[:, 1] - k[:, 0] if k.shape[1] > 1 else np.full(len(k), 10.0)
    return np.stack([np.log1p(margin), np.log1p(best), np.asarray(image_used, dtype=np.float64)], axis=1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]
    bias: float
    review_threshold: float | None = None  # suggested default for SHELVER_REVIEW_THRESHOLD
    info: dict = field(default_factory=dict, compare=False)  # what it was fitted on, its measured ECE

    def confidence(self, kl_rows: np.ndarray, image_used: np.ndarray) -> np.ndarray:
        """[B] probabilities that the argmin-KL category of each row is right."""
        x = features(kl_rows, image_used)
        return _sigmoid(x @ np.asarray(self.weights) + self.bias)

    def to_json(self) -> dict:
        return {"kind": "platt", "features": list(FEATURES), "weights": list(self.weights), "bias": self.bias,
                "review_threshold": self.review_threshold, "info": self.info}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        if d.get("kind") != "platt" or list(d.get("features", ())) != list(FEATURES):
            raise ValueError(f"unsupported calibration (kind={d.get('kind')!r}, features={d.get('features')})")
        return cls(tuple(float(w) for w in d["weights"]), float(d["bias"]),
                   None if d.get("review_threshold") is None else float(d["review_threshold"]), d.get("info", {}))


def load_calibration(artifact_dir: str | Path) -> Calibration | None:
    """The artifact's calibration, or None when it has none (results then carry confidence null)."""
    f = Path(artifact_dir) / FILE
    return Calibration.from_json(json.loads(f.read_text())) if f.exists() else None
