"""The bar the text model must clear: TF-IDF (word 1–2-grams + character 3–5-grams) with logistic
regression over the 12 targets, trained on the same texts as the text model.

Plain on purpose (no tuning, default regularization, raw text lowercased by scikit-learn): it is
the reference a reviewer would build first. `shelver evaluate` retrains it in every run and the
report shows it beside the model, per category.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union


def build() -> object:
    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32),
        TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(3, 5),
            min_df=2,
            sublinear_tf=True,
            max_features=300_000,
            dtype=np.float32,
        ),
    )
    return make_pipeline(features, LogisticRegression(max_iter=300))


def train(texts: Sequence[str], targets: Sequence[str]) -> object:
    """A fitted pipeline: ``.predict(texts)`` → target names."""
    return build().fit(list(texts), list(targets))
