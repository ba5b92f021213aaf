"""Pooled EfficientNet-Lite0 features of catalogue images, cached on disk.

The backbone is frozen while the head trains, so each image goes through it once (twice
with horizontal flips) and the head trains in seconds on the cached 1280-d vectors.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from models.efficientnet_lite import checkpoint_path
from models.image import DEFAULT_BACKBONE, build_backbone, prepare_image
from models.paths import CACHE_DIR

# Bump when prepare_image or the backbone graph changes in a way that alters features.
FEATURE_VERSION = 2  # 2: the final resize is resize_bicubic (within 1 level of Pillow)


def load_pixels(path: str, image_size: tuple[int, int], flip: bool = False) -> np.ndarray:
    """One image file → uint8 [H, W, 3] through the serving resize (mirrored if ``flip``)."""
    with Image.open(path) as img:
        pixels = prepare_image(img, image_size)
    return np.ascontiguousarray(pixels[:, ::-1]) if flip else pixels


@functools.cache
def _weights_fingerprint() -> str:
    return hashlib.sha256(checkpoint_path().read_bytes()).hexdigest()[:16]


@functools.cache
def _feature_fn(image_size: tuple[int, int], backbone: str = DEFAULT_BACKBONE):
    model = build_backbone(image_size, backbone=backbone)
    return tf.function(lambda x: model(x, training=False)), model.output_shape[-1]


def cache_key(image_paths: list[str], image_size: tuple[int, int], flip: bool, backbone: str = DEFAULT_BACKBONE) -> str:
    h = hashlib.sha256()
    h.update("\n".join(image_paths).encode())
    weights = _weights_fingerprint() if backbone == DEFAULT_BACKBONE else backbone
    h.update(f"|{tuple(image_size)}|{flip}|{weights}|v{FEATURE_VERSION}".encode())
    return h.hexdigest()[:24]


def extract_features(
    image_paths: list[str],
    image_size: tuple[int, int],
    batch_size: int = 64,
    flip: bool = False,
    cache_dir: str | os.PathLike = "features",
    workers: int = 2,
    backbone: str = DEFAULT_BACKBONE,
) -> np.ndarray:
    """float16 [N, D] pooled backbone features (D = 1280 for EfficientNet-Lite0), in the order of ``image_paths``.

    Batches are decoded and resized by ``workers`` threads (PIL releases the GIL) while the
    previous batch runs through the backbone; at most ``2 * workers`` batches wait in memory.
    The result is cached under ``cache_dir`` (relative paths: under `models.paths.CACHE_DIR`),
    keyed by the paths, size, flip and checkpoint hash.
    """
    image_size = tuple(image_size)
    cache = Path(cache_dir)
    cache = cache if cache.is_absolute() else CACHE_DIR / cache
    prefix = "lite0" if backbone == DEFAULT_BACKBONE else backbone.replace(":", "-")
    file = cache / f"{prefix}_{image_size[0]}x{image_size[1]}_{cache_key(image_paths, image_size, flip, backbone)}.npy"
    if file.exists():
        return np.load(file)

    def decode(batch: list[str]) -> np.ndarray:
        return np.stack([load_pixels(p, image_size, flip) for p in batch])

    fn, dim = _feature_fn(image_size, backbone)
    features = np.empty((len(image_paths), dim), np.float16)
    batches = [image_paths[i : i + batch_size] for i in range(0, len(image_paths), batch_size)]
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(image_paths), desc=f"features {image_size}", unit="img") as bar,
    ):
        pending = collections.deque(pool.submit(decode, b) for b in batches[: 2 * workers])
        start = 0
        for i in range(len(batches)):
            pixels = pending.popleft().result()
            if i + len(pending) + 1 < len(batches):
                pending.append(pool.submit(decode, batches[i + len(pending) + 1]))
            n = len(pixels)
            if n < batch_size:  # pad the last batch: one graph for all batches, no retrace
                pixels = np.concatenate([pixels, np.zeros((batch_size - n, *pixels.shape[1:]), np.uint8)])
            features[start : start + n] = fn(tf.constant(pixels)).numpy()[:n]
            start += n
            bar.update(n)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, file)
    return features


def image_probabilities(predict, image_size, paths: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """An image model (``predict``: uint8 batch → probabilities) on decoded pixels, decoding overlapped."""
    out = []
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(paths), desc="image model", unit="img") as bar:
        decoded = pool.map(lambda b: np.stack([load_pixels(p, image_size) for p in b]), batches)
        for pixels in decoded:
            out.append(np.asarray(predict(tf.constant(pixels))))
            bar.update(len(pixels))
    return np.concatenate(out)
