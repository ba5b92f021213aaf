"""A trained artifact folder: save it after training, load it once at service start.

Layout of ``models/artifacts/<version>/``::

    manifest.json      version, label space, input spec, ensemble settings, data hash, metrics
    image_model.npz    the image classifier's weights (float16; the graph is rebuilt by code)
    text/              the text model (vocabulary + float16 weights)
    projections.npz    q[T, S]: each target category projected onto the source labels
    taxonomy.yaml      the taxonomy the projections were computed from

Nothing here needs the training data.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import structlog
import tensorflow as tf

from models import kl
from models.categorizer import Decision
from models.image import DEFAULT_BACKBONE, build_image_classifier, export_weights_float16, load_weights_float16, prepare_image
from models.text import tokenize
from models.text_model import TextModel, load_text_model, save_text_model

log = structlog.get_logger(__name__)


@dataclass
class Artifact:
    """Everything a categorizer needs, in memory (what training produces and the service loads)."""

    manifest: dict
    image_model: object  # keras.Model: uint8 [B, H, W, 3] → [B, S]
    text_model: TextModel
    projections: np.ndarray  # [T, S], smoothed
    targets: tuple[str, ...]

    def save(self, directory: str | Path, taxonomy_file: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        export_weights_float16(self.image_model, d / "image_model.npz")
        save_text_model(self.text_model, d / "text")
        np.savez(d / "projections.npz", q=self.projections.astype(np.float32), targets=np.array(self.targets))
        shutil.copyfile(taxonomy_file, d / "taxonomy.yaml")
        (d / "manifest.json").write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        return d


def load_artifact(directory: str | Path) -> Artifact:
    d = Path(directory)
    manifest = json.loads((d / "manifest.json").read_text())
    labels = manifest["label_space"]["labels"]
    image_size = tuple(manifest["image"]["size"])
    backbone = manifest["image"].get("backbone_id", DEFAULT_BACKBONE)
    image_model = build_image_classifier(len(labels), image_size, imagenet=False, backbone=backbone)
    load_weights_float16(image_model, d / "image_model.npz")
    text_model = load_text_model(d / "text")
    if list(text_model.labels) != list(labels):
        raise ValueError(f"{d}: text model labels differ from the manifest's label space")
    with np.load(d / "projections.npz") as z:
        q, targets = z["q"].astype(np.float64), tuple(str(t) for t in z["targets"])
    return Artifact(manifest, image_model, text_model, q, targets)


class ArtifactCategorizer:
    """The `models.categorizer.Categorizer` the service runs: both models, ensemble, KL choice."""

    def __init__(
        self,
        artifact: Artifact,
        image_weight: float | None = None,
        abstain_threshold: float | None = None,
        fallback: str | None = None,
    ):
        ens = artifact.manifest.get("ensemble", {})
        self.artifact = artifact
        self.model_version = artifact.manifest["version"]
        self.taxonomy_version = artifact.manifest["taxonomy"]["version"]
        self.image_size: tuple[int, int] = tuple(artifact.manifest["image"]["size"])
        self.labels = tuple(artifact.manifest["label_space"]["labels"])
        self.image_weight = ens.get("image_weight", 0.5) if image_weight is None else image_weight
        self.abstain_threshold = ens.get("abstain_threshold") if abstain_threshold is None else abstain_threshold
        self.fallback = fallback or ens.get("fallback", "OTHERS")
        model = artifact.image_model
        # One traced graph for every batch size: no retracing per batch, runs on the GPU when present.
        self._image_fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, *self.image_size, 3], tf.uint8)],
        )
        # Trace the graphs now, at start-up, so the first real batch does not pay for it.
        self.categorize(["warm-up"], [np.zeros((*self.image_size, 3), np.uint8)])

    def prepare_image(self, image) -> np.ndarray:
        return prepare_image(image, self.image_size)

    def source_distributions(
        self, texts: Sequence[str], images: Sequence[np.ndarray | None]
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(image probs or None, text probs, image_used mask), each over the source labels."""
        text_p = self.artifact.text_model.predict_proba(list(texts))
        used = np.array([im is not None for im in images], dtype=bool)
        if not used.any():
            return None, text_p, used
        image_p = np.zeros_like(text_p)
        batch = np.stack([im for im in images if im is not None])
        image_p[used] = self._image_fn(tf.constant(batch)).numpy()
        return image_p, text_p, used

    def decide(self, p: np.ndarray, used: np.ndarray) -> list[Decision]:
        choices = kl.choose(
            kl.kl_matrix(p, self.artifact.projections),
            self.artifact.targets,
            abstain_threshold=self.abstain_threshold,
            fallback=self.fallback,
        )
        return [Decision(c.category, c.kl, c.alternatives, c.abstained, bool(u)) for c, u in zip(choices, used)]

    def categorize(self, texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[Decision]:
        image_p, text_p, used = self.source_distributions(texts, images)
        # Text with no tokens is no evidence: such rows are scored from the image alone.
        has_text = np.array([bool(tokenize(t)) for t in texts], dtype=bool)
        return self.decide(kl.ensemble(image_p, text_p, used, self.image_weight, text_used=has_text), used)


def load_categorizer(directory: str | Path, **overrides) -> ArtifactCategorizer:
    """Load an artifact folder once (at service start) and log where TensorFlow will run it."""
    gpus = tf.config.list_physical_devices("GPU")
    artifact = load_artifact(directory)
    log.info(
        "models_loaded",
        artifact=str(directory),
        version=artifact.manifest["version"],
        device="GPU" if gpus else "CPU",
        gpus=[g.name for g in gpus],
        labels=len(artifact.manifest["label_space"]["labels"]),
        targets=len(artifact.targets),
    )
    return ArtifactCategorizer(artifact, **overrides)
