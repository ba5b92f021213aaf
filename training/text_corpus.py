"""The text model's training corpus: catalogue titles and descriptions, H&M descriptions and the
hand-labelled marketplace examples, as (text, label row, weight) triples over the source labels.

Every source is optional (the ablation in the model card leaves them out one at a time), and
every text goes in raw: the model's own encoder normalizes it, as the service does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from models.paths import shared_data
from training import data

HM_TYPE_TO_TARGET = data.LABELS_DIR / "hm_product_type_to_target.yaml"
DESCRIPTIONS = shared_data("fashion-product-descriptions") / "descriptions.jsonl"
HM_ARTICLES = shared_data("hm-articles") / "articles.parquet"
MYNTRA = shared_data("myntra-catalogue") / "myntra_products_catalog.csv"
DESCRIPTION_FIELDS = ("description", "style_note", "materials_care_desc", "size_fit_desc")


def hm_type_targets(path: Path = HM_TYPE_TO_TARGET) -> dict[str, tuple[str, str | None]]:
    """H&M product type → (target, catalogue articleType or None); types mapped to null are left out."""
    raw = yaml.safe_load(Path(path).read_text())["mapping"]
    return {str(k): (str(v["target"]), v.get("as")) for k, v in raw.items() if v}


def catalogue_descriptions(path: Path = DESCRIPTIONS) -> dict[int, str]:
    """Catalogue id → its long text (the four fields, one per line, raw: boilerplate included)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            text = "\n".join(d[k] for k in DESCRIPTION_FIELDS if d.get(k))
            if text:
                out[int(d["id"])] = text
    return out


def hm_articles(path: Path = HM_ARTICLES) -> pd.DataFrame:
    """H&M descriptions with their mapped target and articleType; one row per distinct (text, type)."""
    mapping = hm_type_targets()
    df = pd.read_parquet(path, columns=["product_type_name", "detail_desc"]).dropna()
    df = df[df["detail_desc"].str.strip() != ""]
    df = df[df["product_type_name"].isin(mapping)].drop_duplicates(["detail_desc", "product_type_name"])
    df = df.sort_values(["product_type_name", "detail_desc"]).reset_index(
        drop=True
    )  # file order never matters
    df["target"] = [mapping[t][0] for t in df["product_type_name"]]
    df["article_type"] = [mapping[t][1] for t in df["product_type_name"]]
    return df.rename(columns={"detail_desc": "text"})


def myntra_texts(path: Path = MYNTRA) -> list[str]:
    """The unlabelled attribute-list descriptions (word-vector pretraining only), distinct, sorted."""
    df = pd.read_csv(path, usecols=["Description"]).dropna()
    return sorted(set(df["Description"].astype(str)))


# A Myntra name labels its description only when the title classifier is at least this sure. Chosen
# on the catalogue's held-out titles before any marketplace text was scored: at 0.8 it keeps 91% of
# them and is right on 98.6% (0.9: 83%, 99.0%); on Myntra it keeps 6,043 of 12,491 rows.
MYNTRA_NAME_CONFIDENCE = 0.8
# The corpus source name of those rows (the model card's licence table keys on it).
MYNTRA_SOURCE = "Myntra descriptions (types from their names)"


def title_classifier(titles: list[str], labels: np.ndarray):
    """TF-IDF (word 1-2-grams) + logistic regression from catalogue titles to source classes.

    Why: Myntra's product names are written like the catalogue's titles ("Parx Men Green Slim Fit
    Checked Casual Shirt"), so a classifier of the catalogue's own titles can name the product type
    of a Myntra attribute list, which has no label. 96.3% right on the catalogue's held-out titles.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                          LogisticRegression(C=10, max_iter=300))
    return model.fit(titles, labels)


def myntra_labelled(classifier, path: Path = MYNTRA,
                    min_confidence: float = MYNTRA_NAME_CONFIDENCE) -> tuple[list[str], np.ndarray]:
    """Myntra descriptions labelled by ``classifier`` from their product names: (texts, source class
    index), one row per distinct (description, class), only where the classifier is sure enough."""
    df = pd.read_csv(path, usecols=["Product_Name", "Description"]).dropna()
    proba = classifier.predict_proba(df["Product_Name"].astype(str).tolist())
    classes = np.asarray(classifier.classes_)
    df = df.assign(label=classes[proba.argmax(1)], sure=proba.max(1) >= min_confidence)
    df = df[df["sure"]].drop_duplicates(["Description", "label"]).sort_values(["label", "Description"])
    return df["Description"].astype(str).tolist(), df["label"].to_numpy()


@dataclass
class Corpus:
    """Parallel lists: raw texts, label rows [N, S] (one-hot or soft), weights, the target
    category of each text (what the TF-IDF baseline learns) and its source."""

    texts: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, source: str, texts: list[str], rows: np.ndarray, weight: float, targets: list[str]) -> None:
        assert len(texts) == len(rows) == len(targets), source
        self.texts += texts
        self.rows.append(np.asarray(rows, np.float32))
        self.weights.append(np.full(len(texts), weight, np.float32))
        self.targets += list(targets)
        self.sources += [source] * len(texts)

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.texts, np.concatenate(self.rows), np.concatenate(self.weights)

    def counts(self) -> dict[str, int]:
        return {s: self.sources.count(s) for s in dict.fromkeys(self.sources)}


def label_rows(space: data.LabelSpace, article_types, targets, soft: dict[str, np.ndarray]) -> np.ndarray:
    """One-hot on the articleType's source class where the space has it, else the target's soft row."""
    index = {lab: i for i, lab in enumerate(space.labels)}
    out = np.zeros((len(targets), len(space.labels)), np.float32)
    for r, (a, t) in enumerate(zip(article_types, targets)):
        label = space.article_to_label.get(a) if a else None
        if label in index:
            out[r, index[label]] = 1.0
        else:
            out[r] = soft[t]
    return out
