"""Calibrated confidence of a KL choice: P(the chosen category is right | the KL row, the text).

The KL distances are not probabilities: a product is ambiguous when its best and second-best
categories are almost equally close, and unfamiliar when even the best one is far. A logistic
model (Platt scaling) on features of the result turns that into a probability:

    margin = KL_2nd - KL_best,   best = KL_best,   image = 1 if an image was used else 0
    keyword_margin = log1p(h_best) - log1p(h_2nd)
    confidence = sigmoid(w · [log1p(margin), log1p(best), image, keyword_margin] + b)

where h_best / h_2nd count the taxonomy keywords of the chosen / the runner-up category that the
product's text names (whole words or phrases of the normalized text, `models.text.normalize`).
The KL row alone cannot tell a bare attribute list ("V-neck, Short sleeve": a top or a dress)
from a text that names its product type: the keywords are the taxonomy's own words for each
category, so a text that names the chosen category's words and not the runner-up's is evidence
the model did not have to guess. The keyword table is a snapshot of the taxonomy the calibration
was fitted with, stored in the calibration itself, so the feature is computed the same way
wherever the calibration is used; a category it does not list (added later by
``shelver taxonomy apply``) counts no keywords until the calibration is refitted.

The weights are fitted by ``training/calibrate.py`` on labelled data the model did not train on and
stored as ``calibration.json`` beside the artifact; this module only reads and applies them (pure
numpy, no I/O except `load_calibration`). The features do not depend on the number of categories,
so the same calibration keeps working when the taxonomy's projections change (corrections,
``shelver taxonomy apply``); it is then approximate, which the reports say.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from models.text import normalize

KL_FEATURES = ("log1p_margin", "log1p_best_kl", "image_used")
FEATURES = (*KL_FEATURES, "keyword_margin")
FILE = "calibration.json"


def features(kl_rows: np.ndarray, image_used: np.ndarray) -> np.ndarray:
    """[B, 3] KL-row features of KL rows [B, T] (T >= 2): log1p margin, log1p best KL, image used."""
    k = np.sort(np.asarray(kl_rows, dtype=np.float64), axis=1)
    best = k[:, 0]
    margin = k[:, 1] - k[:, 0] if k.shape[1] > 1 else np.full(len(k), 10.0)
    return np.stack([np.log1p(margin), np.log1p(best), np.asarray(image_used, dtype=np.float64)], axis=1)


_WORD = re.compile(r"[^\W_]+")


def _words(text: str | None) -> tuple[str, ...]:
    return tuple(_WORD.findall(normalize(text)))


@lru_cache(maxsize=64)
def _table(keywords_per_target: tuple[tuple[str, ...], ...]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Per target, its distinct keywords as word tuples (cached: the same taxonomy batch after batch)."""
    return tuple(tuple(sorted(w for w in {_words(k) for k in kws} if w)) for kws in keywords_per_target)


def keyword_hits(texts: Sequence[str | None], targets: Sequence[str],
                 keywords: Mapping[str, Sequence[str]]) -> np.ndarray:
    """[B, T]: how many distinct keywords of each target the text names (0 for a target without keywords).

    A keyword is named when its words occur consecutively among the text's words (normalized,
    lower case, split at anything that is not a letter or digit: "V-neck" names "v-neck", "V-necked" does not).
    """
    table = _table(tuple(tuple(keywords.get(name, ())) for name in targets))
    out = np.zeros((len(texts), len(targets)))
    for b, text in enumerate(texts):
        words = _words(text)
        at: dict[str, list[int]] = {}
        for i, w in enumerate(words):
            at.setdefault(w, []).append(i)
        for j, kws in enumerate(table):
            out[b, j] = sum(1 for kw in kws if kw[0] in at
                            and (len(kw) == 1 or any(words[i:i + len(kw)] == kw for i in at[kw[0]])))
    return out


def keyword_margin(kl_rows: np.ndarray, texts: Sequence[str | None], targets: Sequence[str],
                   keywords: Mapping[str, Sequence[str]]) -> np.ndarray:
    """[B]: log1p(keywords named of the KL-best target) - log1p(those of the second-best target)."""
    k = np.asarray(kl_rows, dtype=np.float64)
    hits = keyword_hits(texts, targets, keywords)
    order = np.argsort(k, axis=1, kind="stable")
    rows = np.arange(len(k))
    best = hits[rows, order[:, 0]]
    second = hits[rows, order[:, 1]] if k.shape[1] > 1 else np.zeros(len(k))
    return np.log1p(best) - np.log1p(second)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]
    bias: float
    review_threshold: float | None = None  # suggested default for SHELVER_REVIEW_THRESHOLD
    info: dict = field(default_factory=dict, compare=False)  # what it was fitted on, its measured ECE
    features: tuple[str, ...] = KL_FEATURES  # KL_FEATURES or FEATURES (with the keyword margin)
    keywords: dict = field(default_factory=dict)  # category -> its taxonomy keywords (for keyword_margin)

    def __post_init__(self):
        if self.features not in (KL_FEATURES, FEATURES) or len(self.weights) != len(self.features):
            raise ValueError(f"unsupported calibration features {self.features} ({len(self.weights)} weights)")

    def feature_matrix(self, kl_rows: np.ndarray, image_used: np.ndarray, texts: Sequence[str | None] | None = None,
                       targets: Sequence[str] | None = None) -> np.ndarray:
        """[B, len(features)]. Without ``texts`` (or ``targets``) the keyword margin is 0: no text, no keywords."""
        x = features(kl_rows, image_used)
        if self.features == KL_FEATURES:
            return x
        if texts is None or targets is None:
            km = np.zeros(len(x))
        else:
            km = keyword_margin(kl_rows, texts, targets, self.keywords)
        return np.hstack([x, km[:, None]])

    def confidence(self, kl_rows: np.ndarray, image_used: np.ndarray, texts: Sequence[str | None] | None = None,
                   targets: Sequence[str] | None = None) -> np.ndarray:
        """[B] probabilities that the argmin-KL category of each row is right; ``targets`` names the KL columns."""
        x = self.feature_matrix(kl_rows, image_used, texts, targets)
        return _sigmoid(x @ np.asarray(self.weights) + self.bias)

    def to_json(self) -> dict:
        d = {"kind": "platt", "features": list(self.features), "weights": list(self.weights), "bias": self.bias,
             "review_threshold": self.review_threshold, "info": self.info}
        if self.features != KL_FEATURES:
            d["keywords"] = {k: list(v) for k, v in self.keywords.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        feats = tuple(d.get("features", ()))
        if d.get("kind") != "platt" or feats not in (KL_FEATURES, FEATURES):
            raise ValueError(f"unsupported calibration (kind={d.get('kind')!r}, features={d.get('features')})")
        return cls(tuple(float(w) for w in d["weights"]), float(d["bias"]),
                   None if d.get("review_threshold") is None else float(d["review_threshold"]), d.get("info", {}),
                   feats, {str(k): tuple(str(x) for x in v) for k, v in (d.get("keywords") or {}).items()})


def load_calibration(artifact_dir: str | Path) -> Calibration | None:
    """The artifact's calibration, or None when it has none (results then carry confidence null)."""
    f = Path(artifact_dir) / FILE
    return Calibration.from_json(json.loads(f.read_text())) if f.exists() else None
