"""Cached backbone features match the serving model, and a head trained on them serves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from models.image import build_backbone, build_image_classifier, prepare_image
from training.image_features import extract_features
from training.train_image import balanced_class_weights, train_head

SIZE = (64, 48)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths, labels = [], []
    for i, (name, label) in enumerate(
        [("chelsea", 0), ("coffee", 1), ("cat", 0), ("rocket", 1), ("astronaut", 1)]
    ):
        path = folder / f"{i}.jpg"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        paths.append(str(path))
        labels.append(label)
    return paths, np.array(labels)


def test_features_equal_the_serving_backbone_and_are_cached(photos, tmp_path):
    paths, _ = photos
    feats = extract_features(paths, SIZE, batch_size=2, cache_dir=tmp_path)  # 3 batches, last one padded
    assert feats.shape == (5, 1280) and feats.dtype == np.float16
    pixels = np.stack([prepare_image(Image.open(p), SIZE) for p in paths])
    direct = build_backbone(SIZE).predict(pixels, verbose=0)
    np.testing.assert_allclose(feats.astype(np.float32), direct, rtol=0.01, atol=0.01)

    assert len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(extract_features(paths, SIZE, cache_dir=tmp_path), feats)
    flipped = extract_features(paths, SIZE, flip=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    mirrored = build_backbone(SIZE).predict(pixels[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(flipped.astype(np.float32), mirrored, rtol=0.01, atol=0.01)
    assert not np.allclose(flipped, feats, atol=0.01)


def test_trained_head_serves_in_the_classifier(photos, tmp_path):
    paths, labels = photos
    feats = extract_features(paths, SIZE, cache_dir=tmp_path)
    weights, history = train_head(feats, labels, feats, labels, num_classes=2, epochs=60, seed=1, verbose=0)
    assert [w.shape for w in weights] == [(1280, 2), (2,)]
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][-1] < history["loss"][0]

    model = build_image_classifier(2, SIZE)
    model.get_layer("head").set_weights(weights)
    pixels = np.stack([prepare_image(Image.open(p), SIZE) for p in paths])
    np.testing.assert_array_equal(model.predict(pixels, verbose=0).argmax(axis=1), labels)


def test_class_weights_favour_rare_classes():
    w = balanced_class_weights(np.array([0] * 90 + [1] * 10), num_classes=3, power=1.0)
    assert w[1] > w[0] and w[2] == 0.0
    assert np.isclose(np.mean([w[c] for c in [0] * 90 + [1] * 10]), 1.0)
