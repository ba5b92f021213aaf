"""A small but real TensorFlow categorizer for the consumer tests (implements models.categorizer.Categorizer).

Two seeded Keras models (hashed bag-of-words text → 3 source classes; a tiny conv net on 32x32
pixels → the same 3 classes), ensembled and mapped to 3 targets by the production KL core. The
weights are random, so its *answers* mean nothing; the tests check the pipeline, not accuracy.
"""
from __future__ import annotations

import threading
import zlib
from typing import Sequence

import keras
import numpy as np
from PIL import Image

from models import kl
from models.categorizer import Decision
from models.text import tokenize

BUCKETS = 64
TARGETS = ("TOPS", "DRESS", "BAG")
# Each target's distribution over the 3 source classes (a sharp, smoothed projection).
PROJECTION = kl.smooth(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))


class TinyCategorizer:
    model_version = "tiny-test-1"
    taxonomy_version = "tiny-taxonomy-1"
    image_size = (32, 32)

    def __init__(self, seed: int = 7, image_weight: float = 0.5):
        keras.utils.set_random_seed(seed)
        self.image_weight = image_weight
        text_in = keras.Input((BUCKETS,), name="bow")
        self.text_model = keras.Model(text_in, keras.layers.Dense(3, activation="softmax")(text_in))
        img_in = keras.Input((*self.image_size, 3), dtype="uint8", name="pixels")
        x = keras.layers.Rescaling(1 / 255)(keras.ops.cast(img_in, "float32"))
        x = keras.layers.Conv2D(4, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        self.image_model = keras.Model(img_in, keras.layers.Dense(3, activation="softmax")(x))

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize(self.image_size[::-1]), dtype=np.uint8)

    def prepare_images(self, images) -> list:
        out = []
        for image in images:
            try:
                out.append(self.prepare_image(image))
            except Exception as exc:  # the Categorizer contract: the exception, in its place
                out.append(exc)
        return out

    def _bow(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), BUCKETS), dtype=np.float32)
        for row, text in enumerate(texts):
            for tok in tokenize(text):
                out[row, zlib.crc32(tok.encode()) % BUCKETS] += 1.0
        return out

    def categorize(self, texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[Decision]:
        if not texts:
            return []
        used = np.array([img is not None for img in images])
        text_p = self.text_model(self._bow(texts), training=False).numpy()
        pixels = np.stack([img if img is not None else np.zeros((*self.image_size, 3), np.uint8) for img in images])
        image_p = self.image_model(pixels, training=False).numpy()
        p = kl.ensemble(image_p, text_p, used, self.image_weight)
        choices = kl.choose(kl.kl_matrix(p, PROJECTION), TARGETS)
        return [Decision(c.category, c.kl, c.alternatives, c.abstained, bool(u)) for c, u in zip(choices, used)]


class BlockingTiny(TinyCategorizer):
    """Inference that hangs until released: what a wedged GPU call looks like from outside."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def categorize(self, texts, images):
        self.entered.set()
        self.release.wait(120)
        return super().categorize(texts, images)
