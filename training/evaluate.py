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
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from models import kl
from models.artifact import load_categorizer
from models.paths import REPORTS_DIR, newest_artifact
from training import baseline, data
from training.image_features import extract_features, image_probabilities
from training.marketplace_eval import UNLABELABLE, dev_split, load_dev
from training.metrics import source_metrics, target_metrics
from training.train_image import train_head
from training.train_text import train_text_model


def run_original_method(df, y_sub, subs, train_idx, rows, image_size, targets, market_texts, seed=13) -> dict:
    """The prototype retrained on the same rows: subCategory heads, top-3 sums, bare-name projections."""
    titles = df["productDisplayName"].tolist()
    pretrain = market_texts + titles
    text_model, _ = train_text_model([titles[i] for i in train_idx], y_sub[train_idx], [], np.zeros(0, int), subs,
                                     pretrain, init="cbow", frozen=False, seed=seed, verbose=0)
    features = extract_features(df["image_path"].tolist(), image_size)
    head, _ = train_head(features[train_idx], y_sub[train_idx], features[rows], y_sub[rows], len(subs),
                         epochs=20, seed=seed, label_smoothing=0.0, verbose=0)
    logits = features[rows].astype(np.float32) @ head[0] + head[1]
    image_p = tf.nn.softmax(logits).numpy()
    text_p = text_model.predict_proba([titles[i] for i in rows])
    q = baseline.baseline_projections(text_model.predict_proba(baseline.category_queries(targets)))
    return {
        "catalogue": baseline.baseline_choose(baseline.baseline_prediction(image_p, text_p), q, targets),
        "marketplace": baseline.baseline_choose(
            baseline.baseline_prediction(None, text_model.predict_proba(market_texts)), q, targets) if market_texts else [],
        "source": {"image-only": source_metrics(image_p, y_sub[rows]), "text-only": source_metrics(text_p, y_sub[rows])},
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="shelver evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="labelled catalogue folder in the Kaggle layout")
    ap.add_argument("--artifact", type=Path, help="artifact folder (default: newest under models/artifacts)")
    ap.add_argument("--split", choices=("heldout", "all"), default="heldout")
    ap.add_argument("--per-class", type=int, default=0, help="cap rows per class, as in a smoke training")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-marketplace", action="store_true")
    ap.add_argument("--report-dir", type=Path, default=REPORTS_DIR)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from training.report import write_report

    args = parse_args(argv)
    started = time.time()
    artifact_dir = args.artifact or newest_artifact()
    cat = load_categorizer(artifact_dir)
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
    used = np.ones(len(rows), bool)
    variants = {
        "image-only": image_p,
        "text-only": text_p,
        "ensemble": kl.ensemble(image_p, text_p, used, cat.image_weight),
    }
    results: dict = {"artifact": str(artifact_dir), "version": manifest["version"], "rows": int(len(rows)),
                     "split": args.split, "catalogue": {}, "image_weight": cat.image_weight}
    predictions = {}
    for name, p in variants.items():
        pred = [d.category for d in cat.decide(p, used)]
        predictions[name] = pred
        results["catalogue"][name] = {"source": source_metrics(p, y[rows]), "target": target_metrics(pred, true_t, targets)}

    market = None
    if not args.no_marketplace:
        dev = load_dev()
        _, eval_idx = dev_split(dev)
        ev = dev.iloc[eval_idx]
        ev = ev[ev["label"] != UNLABELABLE]
        m_text = cat.artifact.text_model.predict_proba(ev["text"].tolist())
        m_pred = [d.category for d in cat.decide(m_text, np.zeros(len(ev), bool))]
        market = {"texts": ev["text"].tolist(), "true": ev["label"].tolist(), "pred": m_pred}
        results["marketplace"] = {"text-only": target_metrics(m_pred, ev["label"].tolist(), targets)}

    if not args.no_baseline and args.split == "heldout":
        subs = sorted(df["subCategory"].unique())
        y_sub = df["subCategory"].map({s: i for i, s in enumerate(subs)}).to_numpy()
        base = run_original_method(df, y_sub, subs, train_idx, rows, cat.image_size, targets,
                                   market["texts"] if market else [])
        results["original_method"] = {
            "catalogue": {"target": target_metrics(base["catalogue"], true_t, targets), "source": base["source"]},
        }
        if market:
            results["original_method"]["marketplace"] = target_metrics(base["marketplace"], market["true"], targets)

    results["seconds"] = round(time.time() - started, 1)
    results["summary"] = summarize(results)
    errors = [(titles[r], df["articleType"].iloc[r], t, p) for r, t, p in zip(rows, true_t, predictions["ensemble"]) if t != p]
    write_report(results, manifest, errors, market, args.report_dir)
    print(json.dumps(results["summary"], indent=1))
    return results


def summarize(results: dict) -> dict:
    """The headline numbers (what goes into the manifest and the README)."""
    cat = results["catalogue"]
    out = {f"catalogue_{k}_target_acc": round(v["target"]["accuracy"], 4) for k, v in cat.items()}
    out.update({f"catalogue_{k}_source_top1": round(v["source"]["top1"], 4) for k, v in cat.items()})
    if "marketplace" in results:
        out["marketplace_text_target_acc"] = round(results["marketplace"]["text-only"]["accuracy"], 4)
        out["marketplace_eval_n"] = results["marketplace"]["text-only"]["n"]
    if "original_method" in results:
        om = results["original_method"]
        out["original_catalogue_target_acc"] = round(om["catalogue"]["target"]["accuracy"], 4)
        if "marketplace" in om:
            out["original_marketplace_target_acc"] = round(om["marketplace"]["accuracy"], 4)
    return out



if __name__ == "__main__":
    main()
