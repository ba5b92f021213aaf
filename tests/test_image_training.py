"""Cached backbone features match the serving model, and a head trained on them serves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from models.image import build_backbone, build_image_classifier, prepare_image
from training.image_features import extract_features
from training.train_image import balanced_class_weights, fine_tune, train_head

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


def test_keras_applications_backbone_runs_the_same_pipeline(photos):
    """A keras.applications backbone (its ImageNet weights need internet, so random weights
    here) plugs into head training, the uint8 classifier and fine-tuning."""
    photos, y = photos
    size, name = (96, 96), "keras:MobileNetV3Small"
    pixels = np.stack([prepare_image(Image.open(p), size) for p in photos])
    backbone = build_backbone(size, imagenet=False, backbone=name)
    features = np.asarray(backbone(pixels, training=False))
    head, _ = train_head(features, y, features, y, 2, epochs=2, verbose=0)
    model = build_image_classifier(2, size, imagenet=False, backbone=name)
    model.get_layer("backbone").set_weights(backbone.get_weights())
    model.get_layer("head").set_weights(head)
    logits = features @ head[0] + head[1]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(model.predict(pixels, verbose=0), expected / expected.sum(1, keepdims=True), atol=1e-4)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    history = fine_tune(model, photos, y, epochs=1, batch_size=4, force=True, backbone_name=name)
    assert history is not None and "loss" in history
    after = model.get_layer("backbone").get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert any(changed) and not all(changed)  # only the top of the backbone was unfrozen
    assert np.allclose(model.predict(pixels, verbose=0).sum(axis=1), 1.0, atol=1e-4)


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone((96, 96), imagenet=False, backbone="keras:ResNet50")  # needs external preprocessing
