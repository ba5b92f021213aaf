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
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import structlog
import tensorflow as tf

from models import engine as engine_mod
from models import kl
from models.calibration import Calibration, load_calibration
from models.categorizer import Decision
from models.correction_rule import Adapter
from models.image import DEFAULT_BACKBONE, build_image_classifier, export_weights_float16, load_weights_float16, prepare_image
from models.pixels import prepare_images
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
    source: Path | None = None  # the folder it was loaded from (keys the LiteRT conversion cache)
    calibration: Calibration | None = None  # calibration.json beside the artifact (training/calibrate.py)
    quantization: dict | None = None  # quantization.json: the 8-bit image model's measurements (training/quantize.py)

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
    report = d / engine_mod.INT8_REPORT
    quantization = json.loads(report.read_text()) if report.exists() else None
    return Artifact(manifest, image_model, text_model, q, targets, source=d, calibration=load_calibration(d),
                    quantization=quantization)


class ArtifactCategorizer:
    """The `models.categorizer.Categorizer` the service runs: both models, ensemble, KL choice."""

    def __init__(
        self,
        artifact: Artifact,
        image_weight: float | None = None,
        abstain_threshold: float | None = None,
        fallback: str | None = None,
        engine: str | None = None,
    ):
        ens = artifact.manifest.get("ensemble", {})
        self.artifact = artifact
        self.model_version = artifact.manifest["version"]
        self.taxonomy_version = artifact.manifest["taxonomy"]["version"]
        self.image_size: tuple[int, int] = tuple(artifact.manifest["image"]["size"])
        self.labels = tuple(artifact.manifest["label_space"]["labels"])
        self.image_weight = ens.get("image_weight", 0.5) if image_weight is None else image_weight
        self.combine = ens.get("combine", "mean")  # kl.COMBINE_RULES; artifacts before v5 averaged
        if self.combine not in kl.COMBINE_RULES:
            raise ValueError(f"manifest ensemble.combine must be one of {', '.join(kl.COMBINE_RULES)}, "
                             f"not {self.combine!r}")
        self.abstain_threshold = ens.get("abstain_threshold") if abstain_threshold is None else abstain_threshold
        self.fallback = fallback or ens.get("fallback", "OTHERS")
        # (q, targets, taxonomy version, corrections' adapter) as one tuple: `set_projections` swaps it with
        # one reference assignment, and `decide` reads it once per batch, so a batch never mixes two taxonomies.
        self._projections = (artifact.projections, tuple(artifact.targets), self.taxonomy_version, None)
        self.default_review_threshold = artifact.calibration.review_threshold if artifact.calibration else None
        # Inference engine (models.engine): LiteRT + XNNPACK on CPU (the 8-bit image model where the artifact's
        # quantization report accepted it for a CPU like this one), the TensorFlow graph on a GPU.
        int8_file = artifact.source / engine_mod.INT8_FILE if artifact.source is not None else None
        self.engine = engine_mod.resolve_engine(
            engine or os.environ.get(engine_mod.ENGINE_ENV), bool(tf.config.list_physical_devices("GPU")),
            int8_ok=bool(int8_file and int8_file.exists()) and engine_mod.int8_accepted(
                artifact.quantization, engine_mod.cpu_flags()))
        if self.engine == "litert-int8":
            if int8_file is None or not int8_file.exists():
                raise ValueError(f"inference engine litert-int8 needs {engine_mod.INT8_FILE} in the artifact folder "
                                 "(python -m training.quantize)")
            int8_runner = engine_mod.LiteRTRunner(int8_file.read_bytes(), wide=True)
            # Its softmax is 8-bit too: its zeros floored at half a step, rows renormalized (engine_mod.INT8_FLOOR).
            self._image_fn = lambda x: engine_mod.int8_distributions(int8_runner(x))
        else:
            self._image_fn = self._runner(artifact.image_model, tf.TensorSpec([None, *self.image_size, 3], tf.uint8),
                                          "image", ["image_model.npz"])
        self._text_fn = self._runner(artifact.text_model.model, tf.TensorSpec([None, None], tf.int32), "text", ["text"])
        # Trace the graphs now, at start-up, so the first real batch does not pay for it.
        self.categorize(["warm-up"], [np.zeros((*self.image_size, 3), np.uint8)])

    def _runner(self, model, spec, name: str, files: list[str]):
        src = self.artifact.source
        key = name
        if src is not None:
            key = f"{name}-" + engine_mod.content_key([src / f for f in files], tf.__version__, ai_edge_litert_version())
        return engine_mod.make_runner(self.engine, model, spec, key, engine_mod.DEFAULT_CACHE if src else None)

    def prepare_image(self, image) -> np.ndarray:
        return prepare_image(image, self.image_size)

    def prepare_images(self, images: Sequence) -> list[np.ndarray | Exception]:
        return prepare_images(images, self.image_size)

    def source_distributions(
        self, texts: Sequence[str], images: Sequence[np.ndarray | None]
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(image probs or None, text probs, image_used mask), each over the source labels."""
        # Padding columns are masked out of the text model's mean; LiteRT then sees few distinct shapes.
        text_p = self._text_fn(engine_mod.pad_columns(self.artifact.text_model.encoder.encode(list(texts)), 32))
        used = np.array([im is not None for im in images], dtype=bool)
        if not used.any():
            return None, text_p, used
        image_p = np.zeros_like(text_p)
        batch = np.stack([im for im in images if im is not None])
        image_p[used] = self._image_fn(batch)
        return image_p, text_p, used

    @property
    def projections(self) -> tuple[np.ndarray, tuple[str, ...], str]:
        return self._projections[:3]

    @property
    def adapter(self) -> Adapter | None:
        """What the corrections taught (`models.correction_rule.fit_adapter`); None without any."""
        return self._projections[3]

    def set_projections(self, q: np.ndarray, targets: Sequence[str], taxonomy_version: str,
                        adapter: Adapter | None = None) -> None:
        """Swap the target projections and the corrections' adapter (corrections, a new taxonomy) without
        touching the networks."""
        if q.shape != (len(targets), len(self.labels)):
            raise ValueError(f"projections {q.shape} do not match {len(targets)} targets x {len(self.labels)} labels")
        if adapter is not None and adapter.theta.shape != (len(self.labels) + 1, len(targets)):
            raise ValueError(f"adapter {adapter.theta.shape} does not match {len(targets)} targets x "
                             f"{len(self.labels)} labels")
        self._projections = (np.asarray(q, dtype=np.float64), tuple(targets), str(taxonomy_version), adapter)
        self.taxonomy_version = str(taxonomy_version)

    def decide(self, p: np.ndarray, used: np.ndarray, texts: Sequence[str | None] | None = None) -> list[Decision]:
        """Choices for source distributions ``p``; ``texts`` (the products' texts) feed the confidence's
        keyword feature (`models.calibration`), without them it counts no keywords."""
        q, targets, version, adapter = self._projections  # one read: the whole batch uses one taxonomy
        k = kl.kl_matrix(p, q)
        if adapter is not None:  # what the corrections taught (models.correction_rule.fit_adapter)
            k = adapter.adjusted(k, p)
        choices = kl.choose(k, targets, abstain_threshold=self.abstain_threshold, fallback=self.fallback)
        cal = self.artifact.calibration
        conf = (cal.confidence(k, used, texts, targets) if cal is not None and len(targets) > 1
                else [None] * len(choices))
        return [Decision(c.category, c.kl, c.alternatives, c.abstained, bool(u),
                         None if f is None else float(f), version)
                for c, u, f in zip(choices, used, conf)]

    def ensemble(self, image_p, text_p, used, text_used=None) -> np.ndarray:
        """`kl.ensemble` with this artifact's weight and rule (what serving, evaluation and calibration share)."""
        return kl.ensemble(image_p, text_p, used, self.image_weight, text_used=text_used, combine=self.combine)

    def categorize(self, texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[Decision]:
        image_p, text_p, used = self.source_distributions(texts, images)
        # Text with no tokens is no evidence: such rows are scored from the image alone.
        has_text = np.array([bool(self.artifact.text_model.encoder.tokens(t)) for t in texts], dtype=bool)
        decisions = self.decide(self.ensemble(image_p, text_p, used, text_used=has_text), used, texts)
        # Neither an image nor a word the model reads ("NA", "<p>&nbsp;</p>", a wash-care list): the choice
        # would be the text model's prior for nothing. Abstain to the fallback with confidence 0, so the
        # result says so and goes to review.
        return [d if u or t else replace(d, category=self.fallback, abstained=True, confidence=0.0)
                for d, u, t in zip(decisions, used, has_text)]


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
    cat = ArtifactCategorizer(artifact, **overrides)
    log.info("inference_engine", engine=cat.engine)
    return cat


def ai_edge_litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "none"
