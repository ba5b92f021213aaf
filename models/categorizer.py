"""The one interface the consumer depends on: whole batches in, decisions out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Decision:
    category: str
    kl: float
    alternatives: tuple[tuple[str, float], ...]  # the next two targets and their KL
    abstained: bool
    image_used: bool
    confidence: float | None = None  # calibrated P(category is right); None without a calibration
    taxonomy_version: str | None = None  # projections the choice used (they can change between batches)


class Categorizer(Protocol):
    model_version: str
    taxonomy_version: str
    image_size: tuple[int, int]  # (height, width) that `prepare_images` produces

    def prepare_images(self, images: Sequence) -> list[np.ndarray | Exception]:
        """PIL images → uint8 arrays [H, W, 3] at the model's input size, one per image, or the
        exception that image raised (it then falls back to text); runs in fetch threads."""

    def categorize(self, texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[Decision]:
        """One decision per product; images[i] is None when no usable image exists."""
