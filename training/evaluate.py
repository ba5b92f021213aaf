"""`shelver evaluate`: score a trained artifact on a labelled catalogue folder and the
hand-labelled marketplace sample, with the original method reproduced side by side.

The artifact runs as the service runs it (pixels → image model, titles → text model,
ensemble, KL choice). On the catalogue, rows are the seeded held-out split of the given
folder (`--split all` scores every row); targets come from the hand-written articleType →
category mapping. The original method is retrained in the same run on the same training
rows (subCategory labels; cached image features make this quick).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from models.artifact import load_categorizer
from models.engine import ENGINE_ENV
from models.paths import REPO_ROOT, REPORTS_DIR, newest_artifact
from models.taxonomy import load_taxonomy
from training import baseline, data, model_card, text_corpus, tfidf_baseline
from training.metrics import accuracy_at_coverage, coverage_at_accuracy, source_metrics, target_metrics
from training.image_features import extract_features, image_probabilities
from training.marketplace_eval import TAXONOMY, UNLABELABLE, dev_split, load_dev, training_corpus
from training.train_image import train_head
from training.train_text import train_text_model


def run_original_method(df, y_sub, subs, train_idx, rows, image_size, targets, market_texts, seed=13) -> dict:
    """The prototype retrained on the same rows: subCategory heads, top-3 sums, bare-name projections."""
    titles = df["productDisplayName"].tolist()
    pretrain = market_texts + titles
    text_model, _ = train_text_model(
        [titles[i] for i in train_idx],
        y_sub[train_idx],
        [],
        np.zeros(0, int),
        subs,
        pretrain,
        init="cbow",
        frozen=False,
        seed=seed,
        verbose=0,
    )
    features = extract_features(df["image_path"].tolist(), image_size)
    head, _ = train_head(
        features[train_idx],
        y_sub[train_idx],
        features[rows],
        y_sub[rows],
        len(subs),
        epochs=20,
        seed=seed,
        label_smoothing=0.0,
        verbose=0,
    )
    logits = features[rows].astype(np.float32) @ head[0] + head[1]
    image_p = tf.nn.softmax(logits).numpy()
    text_p = text_model.predict_proba([titles[i] for i in rows])
    q = baseline.baseline_projections(text_model.predict_proba(baseline.category_queries(targets)))
    return {
        "catalogue": baseline.baseline_choose(baseline.baseline_prediction(image_p, text_p), q, targets),
        "marketplace": baseline.baseline_choose(
            baseline.baseline_prediction(None, text_model.predict_proba(market_texts)), q, targets
        )
        if market_texts
        else [],
        "source": {
            "image-only": source_metrics(image_p, y_sub[rows]),
            "text-only": source_metrics(text_p, y_sub[rows]),
        },
    }


def shown_path(path: Path) -> str:
    """A path for reports: relative to the checkout when inside it (no machine's absolute path)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return Path(path).name


def marketplace_metrics(pred, market: dict, targets, confidence=None) -> dict:
    """Target metrics overall, on the items the labeller was sure of, and (with a calibrated
    confidence) on the 70% most confident and the largest coverage at ≥ 95% accuracy."""
    out = target_metrics(pred, market["true"], targets)
    sure = market["sure"]
    out["sure"] = {
        "n": int(sure.sum()),
        "accuracy": float((np.asarray(pred)[sure] == np.asarray(market["true"])[sure]).mean()),
    }
    if confidence is not None and all(c is not None for c in confidence):
        correct = np.asarray(pred) == np.asarray(market["true"])
        conf = np.asarray(confidence, float)
        out["accuracy_at_70pct_coverage"] = accuracy_at_coverage(conf, correct, 0.7)
        out["coverage_at_95pct_accuracy"] = coverage_at_accuracy(conf, correct, 0.95)
    return out


def run_tfidf_baseline(df, train_idx, dev, market: dict, targets, hm_per_target: int = 0) -> dict:
    """TF-IDF + logistic regression retrained on the text model's own training texts
    (`training_corpus`: the same catalogue rows, H&M and examples), scored on the same items."""
    t = time.time()
    space = data.label_space(df, data.article_type_targets())
    train_idx = train_idx[space.encode(df["articleType"])[train_idx] >= 0]  # a capped df pools rare types away
    examples_idx, _ = dev_split(dev)
    corpus = training_corpus(df, space, load_taxonomy(TAXONOMY), dev, examples_idx, train_idx,
                             hm_per_target=hm_per_target)
    model = tfidf_baseline.train(corpus.texts, corpus.targets)
    out = marketplace_metrics(list(model.predict(market["texts"])), market, targets)
    out["seconds"] = round(time.time() - t, 1)
    out["training_texts"] = corpus.counts()
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="shelver evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="labelled catalogue folder in the Kaggle layout")
    ap.add_argument("--artifact", type=Path, help="artifact folder (default: newest under models/artifacts)")
    ap.add_argument("--split", choices=("heldout", "all"), default="heldout")
    ap.add_argument("--per-class", type=int, default=0, help="cap rows per class, as in a smoke training")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-marketplace", action="store_true")
    ap.add_argument("--report-dir", type=Path, default=REPORTS_DIR)
    ap.add_argument("--model-card", action="store_true",
                    help="(re)write MODEL_CARD.md and the manifest's headline metrics in the artifact folder "
                         "from this evaluation")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from training.report import write_report

    args = parse_args(argv)
    started = time.time()
    artifact_dir = args.artifact or newest_artifact()
    # The model as trained, in fp32, whatever this CPU's `auto` would serve: the 8-bit image engine's own
    # accuracy is in the artifact's quantization.json. SHELVER_INFERENCE_ENGINE still chooses another.
    cat = load_categorizer(artifact_dir, engine=os.environ.get(ENGINE_ENV) or "litert")
    manifest = cat.artifact.manifest
    targets = list(cat.artifact.targets)
    mapping = data.article_type_targets()
    a2l = manifest["label_space"]["article_to_label"]
    index = {lab: i for i, lab in enumerate(cat.labels)}

    df = data.load_catalogue(args.data)
    y = np.array([index.get(a2l.get(a, ""), -1) for a in df["articleType"]])
    keep = (y >= 0) & (data.subsample(y, args.per_class, 13) if args.per_class else True)
    df, y = df[keep].reset_index(drop=True), y[keep]
    train_idx, heldout_idx = data.split(df, y)
    rows = heldout_idx if args.split == "heldout" else np.arange(len(df))
    titles = df["productDisplayName"].to_numpy()
    true_t = np.array([mapping.get(a, "OTHERS") for a in df["articleType"].iloc[rows]])

    image_p = image_probabilities(cat._image_fn, cat.image_size, df["image_path"].iloc[rows].tolist())
    text_p = cat.artifact.text_model.predict_proba(titles[rows].tolist())
    desc = text_corpus.catalogue_descriptions()
    ids = df["id"].to_numpy()
    # title and description one per line, as the service joins them (consumer.scoring.text_of)
    long_texts = ["\n".join(t for t in (titles[r], desc.get(int(ids[r]), "")) if t) for r in rows]
    used = np.ones(len(rows), bool)
    variants = {
        "image-only": image_p,
        "text-only": text_p,
        "text-only (title + description)": cat.artifact.text_model.predict_proba(long_texts),
        "ensemble": cat.ensemble(image_p, text_p, used),
    }
    results: dict = {
        "artifact": shown_path(artifact_dir),
        "version": manifest["version"],
        "rows": int(len(rows)),
        "targets": targets,
        "split": args.split,
        "catalogue": {},
        "image_weight": cat.image_weight,
        "combine": cat.combine,
        "engine": cat.engine,
    }
    predictions = {}
    for name, p in variants.items():
        pred = [d.category for d in cat.decide(p, used)]
        predictions[name] = pred
        results["catalogue"][name] = {
            "source": source_metrics(p, y[rows]),
            "target": target_metrics(pred, true_t, targets),
        }

    market = None
    if not args.no_marketplace:
        dev = load_dev()
        _, eval_idx = dev_split(dev)
        ev = dev.iloc[eval_idx]
        ev = ev[ev["label"] != UNLABELABLE]
        m_text = cat.artifact.text_model.predict_proba(ev["text"].tolist())
        decisions = cat.decide(m_text, np.zeros(len(ev), bool), ev["text"].tolist())
        m_pred = [d.category for d in decisions]
        market = {
            "texts": ev["text"].tolist(),
            "true": ev["label"].tolist(),
            "pred": m_pred,
            "sure": (ev["confidence"] == "sure").to_numpy(),
        }
        results["marketplace"] = {
            "text-only": marketplace_metrics(m_pred, market, targets, [d.confidence for d in decisions])
        }
        if not args.no_baseline:
            results["marketplace"]["tfidf_baseline"] = run_tfidf_baseline(df, train_idx, dev, market, targets,
                                                                          args.per_class)

    if not args.no_baseline and args.split == "heldout":
        subs = sorted(df["subCategory"].unique())
        y_sub = df["subCategory"].map({s: i for i, s in enumerate(subs)}).to_numpy()
        base = run_original_method(
            df, y_sub, subs, train_idx, rows, cat.image_size, targets, market["texts"] if market else []
        )
        results["original_method"] = {
            "catalogue": {
                "target": target_metrics(base["catalogue"], true_t, targets),
                "source": base["source"],
            },
        }
        if market:
            results["original_method"]["marketplace"] = target_metrics(
                base["marketplace"], market["true"], targets
            )

    results["seconds"] = round(time.time() - started, 1)
    results["summary"] = summarize(results)
    errors = [
        (titles[r], df["articleType"].iloc[r], t, p)
        for r, t, p in zip(rows, true_t, predictions["ensemble"])
        if t != p
    ]
    card = Path(artifact_dir) / "MODEL_CARD.md"
    if args.model_card:
        card.write_text(model_card.render(manifest, results))
        stored = json.loads((Path(artifact_dir) / "manifest.json").read_text())
        stored["metrics"] = results["summary"]
        (Path(artifact_dir) / "manifest.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    write_report(
        results, manifest, errors, market, args.report_dir, card=card
    )
    print(json.dumps(results["summary"], indent=1))
    return results


def summarize(results: dict) -> dict:
    """The headline numbers (what goes into the manifest and the README)."""
    cat = results["catalogue"]
    out = {f"catalogue_{k}_target_acc": round(v["target"]["accuracy"], 4) for k, v in cat.items()}
    out.update({f"catalogue_{k}_source_top1": round(v["source"]["top1"], 4) for k, v in cat.items()})
    if "marketplace" in results:
        m = results["marketplace"]["text-only"]
        out["marketplace_text_target_acc"] = round(m["accuracy"], 4)
        out["marketplace_eval_n"] = m["n"]
        out["marketplace_text_sure_acc"] = round(m["sure"]["accuracy"], 4)
        for k in ("accuracy_at_70pct_coverage", "coverage_at_95pct_accuracy"):
            if k in m:
                out[f"marketplace_text_{k}"] = round(m[k], 4)
        if "tfidf_baseline" in results["marketplace"]:
            b = results["marketplace"]["tfidf_baseline"]
            out["tfidf_baseline_marketplace_acc"] = round(b["accuracy"], 4)
            out["tfidf_baseline_marketplace_sure_acc"] = round(b["sure"]["accuracy"], 4)
    if "original_method" in results:
        om = results["original_method"]
        out["original_catalogue_target_acc"] = round(om["catalogue"]["target"]["accuracy"], 4)
        if "marketplace" in om:
            out["original_marketplace_target_acc"] = round(om["marketplace"]["accuracy"], 4)
    return out


if __name__ == "__main__":
    main()
