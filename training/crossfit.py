"""Text models that never saw some labelled marketplace items, for honest calibration and learning curves.

* ``noex``: the production text recipe without the labelled examples part (what a marketplace has
  before any person has corrected anything); the learning curve (`training.learning_curve`) streams
  the examples into its projections as corrections.
* ``fold<k>``: the production recipe trained with all examples except fold k; its KL rows on fold k
  are out-of-fold, i.e. distributed like the deployed model's KL rows on new marketplace products.
  The calibrator (`training.calibrate`) is fitted on them.

Models are cached under ``.cache/hitl/`` (7–15 minutes each on 2 shared CPU cores).

    python -m training.crossfit            # trains what is missing
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from models import kl
from models.taxonomy import build_projections, load_taxonomy
from models.text import normalize
from models.paths import CACHE_DIR
from models.text_model import load_text_model, save_text_model
from training import data
from training.marketplace_eval import TAXONOMY, UNLABELABLE, dev_split, load_dev, train_marketplace_text_model
from training.metrics import accuracy_at_coverage

CACHE = CACHE_DIR / "hitl"
# The text recipe the cached models were trained with (v3: descriptions, H&M, v2 normalizer; v3b: the
# same with length-bucketed batches, `training.train_text._dataset`; v4: v3b plus the Myntra attribute
# lists labelled from their names, `training.text_corpus.myntra_labelled`). v3-20261203 was trained as
# v3, v4-20261204 as v4; v5-20261204 carries v4-20261204's text model (it changed the ensemble only).
# `shelver train` has since kept the catalogue's validation rows out of its text model; these fold models,
# which only score marketplace descriptions, were not retrained for that.
RECIPE = "v4"
SEED = 13  # the committed artifact's seed


def fold_of_examples(dev, examples_idx: np.ndarray, folds: int = 2, seed: int = SEED) -> np.ndarray:
    """Fold number per examples row; identical normalized texts share a fold."""
    rng = np.random.default_rng(seed + 5)
    keys = sorted({normalize(dev["text"].iloc[i]) for i in examples_idx})
    rng.shuffle(keys)
    fold = {k: j % folds for j, k in enumerate(keys)}
    return np.array([fold[normalize(dev["text"].iloc[i])] for i in examples_idx])


def _model(name: str, train, recipe: str = RECIPE):
    """The cached model, or ``train()``'s (model, history), saved with the history's catalogue figure."""
    d = CACHE / f"{recipe}-{name}"
    if (d / "text_vocab.json").exists():
        return load_text_model(d)
    tm, hist = train()
    save_text_model(tm, d)
    (d / "hist.json").write_text(json.dumps({k: hist[k] for k in ("catalogue_top1", "seconds") if k in hist}))
    return tm


def catalogue_top1(recipe: str, folds: int = 2) -> list[float]:
    """Held-out catalogue title top-1 of each cached fold model (from its training history)."""
    out = []
    for k in range(folds):
        f = CACHE / f"{recipe}-fold{k}of{folds}" / "hist.json"
        out += [json.loads(f.read_text())["catalogue_top1"]] if f.exists() else []
    return out


def noex_model():
    """The production recipe without the labelled examples."""
    df = data.load_catalogue()
    space = data.label_space(df, data.article_type_targets())
    taxonomy, dev = load_taxonomy(TAXONOMY), load_dev()
    ex_idx, _ = dev_split(dev)
    return _model("noex", lambda: train_marketplace_text_model(df, space, taxonomy, dev, ex_idx, seed=SEED,
                                                               example_weight=0.0, verbose=0))


# Recipe variants tried against the production recipe with the same folds (`--variant`): keyword
# arguments of `train_marketplace_text_model`. Their models and rows are cached apart, per seed.
VARIANTS = {"conv64": {"conv": 64}, "minilm": {"init": "cbow+minilm"}, "titles05": {"title_weight": 0.5},
            # the examples labelled inside their target by the model trained without any example (`noex_model`)
            "selflabel": {"example_teacher": "noex"},
            "myntra2": {"myntra_weight": 2.0}, "myntra4": {"myntra_weight": 4.0},
            # soft rows read as the set of classes they allow (`train_text.marginal_nll`)
            "marginal": {"loss": "marginal"}, "examples1": {"example_weight": 1.0}}


def recipe_name(variant: str, seed: int) -> str:
    """Cache name of a recipe variant's models (the production recipe with the artifact's seed: `RECIPE`)."""
    return RECIPE if not variant and seed == SEED else f"{RECIPE}{variant}s{seed}"


def out_of_fold(folds: int = 2, variant: str = "", seed: int = SEED) -> dict[str, np.ndarray]:
    """Out-of-fold rows of the labelled examples part: KL rows ``kl`` [N, T], source distributions ``p``
    [N, S] (what the service's confidence features see), texts, true targets and the examples' fold.
    The folds depend on `SEED` only, so a ``variant`` or another ``seed`` is scored on the same folds."""
    recipe = recipe_name(variant, seed)
    train_kw = dict(VARIANTS[variant]) if variant else {}
    out = CACHE / f"crossfit{folds}-{recipe}.npz"
    if out.exists():
        with np.load(out) as z:
            return dict(z)
    df = data.load_catalogue()
    space = data.label_space(df, data.article_type_targets())
    taxonomy, dev = load_taxonomy(TAXONOMY), load_dev()
    ex_idx, _ = dev_split(dev)
    ex_idx = ex_idx[dev["label"].iloc[ex_idx].to_numpy() != UNLABELABLE]
    if train_kw.get("example_teacher") == "noex":
        teacher = noex_model()
        if list(teacher.labels) != list(space.labels):
            raise ValueError("the teacher's source classes differ from the label space")
        train_kw["example_teacher"] = teacher.predict_proba
    f = fold_of_examples(dev, ex_idx, folds)
    rows, dists, texts, truth, fold = [], [], [], [], []
    for k in range(folds):
        fit, held = ex_idx[f != k], ex_idx[f == k]
        tm = _model(f"fold{k}of{folds}", lambda: train_marketplace_text_model(
            df, space, taxonomy, dev, fit, seed=seed, verbose=0, **train_kw), recipe)
        exs = dev.iloc[fit]
        q = build_projections(taxonomy, tm.labels, tm, list(zip(exs["text"], exs["label"])))
        p = kl.normalize_rows(tm.predict_proba(dev["text"].iloc[held].tolist()))
        rows.append(kl.kl_matrix(p, q))
        dists.append(p)
        texts += dev["text"].iloc[held].tolist()
        truth += dev["label"].iloc[held].tolist()
        fold += [k] * len(held)
    res = {"kl": np.concatenate(rows), "p": np.concatenate(dists), "text": np.array(texts, dtype=object).astype(str),
           "truth": np.array(truth), "fold": np.array(fold), "targets": np.array(taxonomy.targets)}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **res)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="score a recipe variant instead (an experiment)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    res = out_of_fold(args.folds, args.variant or "", args.seed)
    right = res["targets"][res["kl"].argmin(1)] == res["truth"]
    per_fold = " / ".join(f"{right[res['fold'] == k].mean():.1%}" for k in range(args.folds))
    srt = np.sort(res["kl"], axis=1)
    top70 = accuracy_at_coverage(srt[:, 1] - srt[:, 0], right, 0.7)
    print(f"out-of-fold accuracy on the examples part: {right.mean():.4f} (folds {per_fold}; n={len(right)}); "
          f"on the 70% with the largest KL margin: {top70:.4f}")
    print(f"catalogue held-out title top-1 per fold model: {catalogue_top1(recipe_name(args.variant or '', args.seed), args.folds)}")
    if args.variant or args.seed != SEED:
        return
    noex_model()
    print(f"cached under {CACHE}")


if __name__ == "__main__":
    main()
