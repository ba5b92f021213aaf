"""The text corpus's Myntra source: attribute lists labelled from their product names by a classifier
of the catalogue's own titles (real catalogue titles; a small Myntra-shaped CSV)."""

import csv

import numpy as np
import pytest

from training import data, text_corpus

pytestmark = pytest.mark.skipif(not data.data_dir().exists(), reason="the catalogue is not beside the checkout")


@pytest.fixture(scope="module")
def catalogue_classifier():
    df = data.load_catalogue()
    space = data.label_space(df, data.article_type_targets())
    y = space.encode(df["articleType"])
    tr, te = data.split(df, y)
    titles = df["productDisplayName"].fillna("").astype(str).tolist()
    clf = text_corpus.title_classifier([titles[i] for i in tr], y[tr])
    return clf, space, [titles[i] for i in te], y[te]


def test_title_classifier_names_held_out_catalogue_titles(catalogue_classifier):
    clf, _, titles, truth = catalogue_classifier
    assert np.mean(clf.predict(titles) == truth) > 0.95


def test_myntra_rows_keep_only_sure_names_once_each_with_the_named_type(catalogue_classifier, tmp_path):
    clf, space, _, _ = catalogue_classifier
    rows = [
        ("Parx Men Green Slim Fit Checked Casual Shirt", "Green checked casual shirt, has a spread collar"),
        ("Parx Men Blue Slim Fit Checked Casual Shirt", "Green checked casual shirt, has a spread collar"),
        ("ADIVA Girls Pink Maxi Dress", "Pink maxi dress, has a round neck, sleeveless"),
        ("Cortina Brown & White Set of 2 Window Curtains", "Set of 2 window curtains, polyester"),
    ]
    path = tmp_path / "myntra.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Product_ID", "Product_Name", "Description"])
        w.writerows((i, n, d) for i, (n, d) in enumerate(rows))
    texts, labels = text_corpus.myntra_labelled(clf, path)
    named = {t: space.labels[k] for t, k in zip(texts, labels)}
    assert len(texts) == len(named) == 2  # the shirt twice under two names is one row; curtains are unsure
    assert named == {rows[0][1]: "Shirts", rows[2][1]: "Dresses"}
    texts, _ = text_corpus.myntra_labelled(clf, path, min_confidence=1.01)
    assert texts == []


def test_a_source_class_maps_to_its_category_whether_pooled_or_its_own_article_type():
    targets = data.article_type_targets()
    assert data.LabelSpace.target_of("other:JUMPSUIT", targets) == "JUMPSUIT"
    assert data.LabelSpace.target_of("Dresses", targets) == targets["Dresses"] == "DRESS"
