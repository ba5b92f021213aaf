"""Loading a catalogue in the Kaggle fashion-product-images layout, its label space and splits.

Works on any folder with ``styles.csv`` and ``images/<id>.jpg`` (the shared copy or a
user's own Kaggle download); nothing here is copied into the repository.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from models.paths import catalogue_dir
from models.paths import LABELS_DIR, MARKETPLACE_DIR, REPO_ROOT, SHARED_DATA_DIRS  # noqa: F401 - re-exported

ARTICLE_TYPE_TO_TARGET = LABELS_DIR / "article_type_to_target.yaml"

# Rare articleTypes are merged by target category (see `label_space`); a merged group that
# still has fewer products than this is dropped from the source label space.
DEFAULT_MIN_COUNT = 20


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The catalogue folder (``models.paths.catalogue_dir``: argument, SHELVER_DATA_DIR, shared data)."""
    return catalogue_dir(explicit)


def load_catalogue(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """styles.csv rows that have an image, with an ``image_path`` column and clean text."""
    root = data_dir(path)
    df = pd.read_csv(root / "styles.csv", dtype={"id": "int64"}, keep_default_na=True, on_bad_lines="skip")
    df["productDisplayName"] = df["productDisplayName"].fillna("").astype(str)
    df["image_path"] = [str(root / "images" / f"{i}.jpg") for i in df["id"]]
    has_image = np.array([os.path.exists(p) for p in df["image_path"]])
    return df[has_image].reset_index(drop=True)


def article_type_targets(path: Path = ARTICLE_TYPE_TO_TARGET) -> dict[str, str]:
    """The hand-written articleType → marketplace category mapping (documented ground truth)."""
    return {str(k): str(v) for k, v in yaml.safe_load(path.read_text())["mapping"].items()}


@dataclass(frozen=True)
class LabelSpace:
    labels: tuple[str, ...]  # source classes, index = model output position
    article_to_label: dict[str, str]  # every kept articleType → its source class

    def encode(self, article_types: pd.Series) -> np.ndarray:
        """Source class index per row, -1 for articleTypes outside the label space."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index.get(self.article_to_label.get(a, ""), -1) for a in article_types], dtype=np.int64)

    @staticmethod
    def target_of(label: str, targets: dict[str, str]) -> str:
        """The marketplace category of a source class: a pool's is in its name (``other:<TARGET>``, see
        `label_space`), an articleType's comes from ``targets`` (`article_type_targets`)."""
        return label.removeprefix("other:") if label.startswith("other:") else targets[label]


def label_space(df: pd.DataFrame, targets: dict[str, str], min_count: int = DEFAULT_MIN_COUNT) -> LabelSpace:
    """articleType classes; rare ones merged per target category, then tiny groups dropped.

    An articleType with at least ``min_count`` products is its own class. Rarer types are
    pooled into ``other:<TARGET>`` by their marketplace category (e.g. Jumpsuit 14 +
    Rompers 10 → ``other:JUMPSUIT``), which keeps every target reachable without
    inventing classes the data cannot support; a pool still under ``min_count`` is dropped.
    """
    counts = df["articleType"].value_counts()
    article_to_label: dict[str, str] = {}
    for article, n in counts.items():
        if n >= min_count:
            article_to_label[article] = article
        elif article in targets:
            article_to_label[article] = f"other:{targets[article]}"
    pooled = pd.Series([article_to_label.get(a) for a in df["articleType"]]).value_counts()
    keep = {label for label, n in pooled.items() if n >= min_count}
    article_to_label = {a: lab for a, lab in article_to_label.items() if lab in keep}
    return LabelSpace(labels=tuple(sorted(keep)), article_to_label=article_to_label)


def subsample(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Row mask keeping at most ``per_class`` rows of each class (smoke runs)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        keep[rng.permutation(idx)[:per_class]] = True
    return keep


def split(df: pd.DataFrame, y: np.ndarray, holdout: float = 0.15, seed: int = 13) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class: index arrays (train, held-out); rows with y < 0 excluded."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == cls)
        idx = idx[np.argsort(df["id"].to_numpy()[idx])]  # order by id first: independent of file order
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * holdout)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_validation_split(df: pd.DataFrame, y: np.ndarray, seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, validation, held-out) row positions as `shelver train` uses them: :func:`split`'s held-out 15%,
    and 10% of the rest, stratified again, for early stopping and the ensemble's tuning."""
    train, heldout = split(df, y)
    fit, validation = split(df.iloc[train].reset_index(drop=True), y[train], holdout=0.1, seed=seed + 1)
    return train[fit], train[validation], heldout


def heldout_sample(labels, article_to_label: dict[str, str], limit: int = 0,
                   seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(catalogue rows a model of these labels maps, held-out row indices, their true target categories).

    The held-out split of ``split`` (never trained on); with ``limit`` a seeded, sorted subsample of it.
    """
    index = {lab: i for i, lab in enumerate(labels)}
    df = load_catalogue()
    y = np.array([index.get(article_to_label.get(a, ""), -1) for a in df["articleType"]])
    df, y = df[y >= 0].reset_index(drop=True), y[y >= 0]
    _, rows = split(df, y)
    if limit and limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    mapping = article_type_targets()
    return df, rows, [mapping.get(a, "OTHERS") for a in df["articleType"].iloc[rows]]


def data_hash(df: pd.DataFrame) -> str:
    """Short fingerprint of the rows and labels a model was trained on (goes into the manifest)."""
    h = hashlib.sha256()
    for row in df[["id", "articleType", "subCategory", "productDisplayName"]].itertuples(index=False):
        h.update("\x1f".join(map(str, row)).encode())
    return h.hexdigest()[:16]


def load_marketplace(path: str | os.PathLike | None = None) -> list[dict]:
    """The target marketplace's development sample (description, image_url), in file order."""
    import json

    root = Path(path or os.environ.get("SHELVER_MARKETPLACE_DIR") or MARKETPLACE_DIR)
    return json.loads((root / "product_data.json").read_text())
