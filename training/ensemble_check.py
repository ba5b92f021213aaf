"""The evidence behind an artifact's ensemble rule and weight: the training split's validation rows scored
by the artifact's image head and by a text model of the same recipe that never saw them.

`shelver train` now trains its text model without the validation rows, so its own tuning
(`training.train.tune_ensemble`) is honest; artifacts trained before (`v4-20261204`, whose models
`v5-20261204` carries) read those titles in training. This trains the unseen-rows text model once
(7–10 minutes on 2 CPU cores, cached under ``.cache/hitl/``) and prints both rules at every weight, for
the artifact's text model and for the unseen-rows one. The catalogue's held-out part is not read.

    python -m training.ensemble_check [--artifact models/artifacts/v5-20261204]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models import kl
from models.artifact import load_artifact
from models.paths import newest_artifact
from models.taxonomy import load_taxonomy
from models.text_model import load_text_model, save_text_model
from training import data
from training.crossfit import CACHE, RECIPE, SEED
from training.image_features import extract_features
from training.marketplace_eval import TAXONOMY, dev_split, load_dev, train_marketplace_text_model
from training.train import tune_ensemble

GRID = np.linspace(0.1, 0.9, 9)


def validation_rows(seed: int = SEED):
    """(catalogue, label space, fit rows, validation rows) exactly as `shelver train` splits them."""
    df = data.load_catalogue()
    space = data.label_space(df, data.article_type_targets())
    y = space.encode(df["articleType"])
    df, y = df[y >= 0].reset_index(drop=True), y[y >= 0]
    fit_idx, val_idx, _ = data.fit_validation_split(df, y, seed=seed)
    return df, space, fit_idx, val_idx


def unseen_rows_text_model(df, space, fit_idx):
    """The production text recipe (`RECIPE`, seed `SEED`) trained on the fit rows only, cached."""
    directory = CACHE / f"{RECIPE}-noval"
    if (directory / "text_vocab.json").exists():
        return load_text_model(directory)
    dev = load_dev()
    examples_idx, _ = dev_split(dev)
    tm = train_marketplace_text_model(df, space, load_taxonomy(TAXONOMY), dev, examples_idx, seed=SEED, verbose=0,
                                      catalogue_rows=fit_idx)[0]
    tm.quantize()  # float16 weights, as an artifact stores them
    save_text_model(tm, directory)
    return tm


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, default=None)
    args = ap.parse_args(argv)
    artifact = load_artifact(args.artifact or newest_artifact())
    df, space, fit_idx, val_idx = validation_rows()
    features = extract_features(df["image_path"].tolist(), tuple(artifact.manifest["image"]["size"]))[val_idx]
    weights, bias = artifact.image_model.get_layer("head").get_weights()
    logits = features @ weights + bias
    image_p = kl.normalize_rows(np.exp(logits - logits.max(axis=1, keepdims=True)))
    titles = df["productDisplayName"].iloc[val_idx].tolist()
    mapping = data.article_type_targets()
    truth = np.array([mapping[a] for a in df["articleType"].iloc[val_idx]])
    targets = np.array(artifact.targets)

    def wrong(p) -> int:
        return int(np.sum(targets[kl.kl_matrix(kl.normalize_rows(p), artifact.projections).argmin(axis=1)] != truth))

    text_models = {f"{artifact.manifest['version']}'s text model": artifact.text_model,
                   "the same recipe without the validation rows": unseen_rows_text_model(df, space, fit_idx)}
    for name, tm in text_models.items():
        text_p = tm.predict_proba(titles)
        print(f"{name}: {len(val_idx)} validation rows, wrong: image only {wrong(image_p)}, text only {wrong(text_p)}")
        for w in GRID:
            print(f"  image weight {w:.1f}: " + ", ".join(
                f"{rule} {wrong(kl.ensemble(image_p, text_p, None, float(w), combine=rule))}" for rule in kl.COMBINE_RULES))
        rule, weight = tune_ensemble(image_p, text_p, artifact.projections, artifact.targets, truth, GRID)
        print(f"  chosen by training.train.tune_ensemble: {rule}, image weight {weight:.1f}")


if __name__ == "__main__":
    main()
