"""Accuracy of the service's categorizer on held-out catalogue products sent with an image and an empty title.

Reproduces issue #6 item 7: a product without text must be categorized from its image alone,
so its decisions should equal the image-only decisions and its accuracy the image model's.
``accuracy_old_rule`` is the rule before the fix (the text distribution mixed in whatever the text),
computed on the same model outputs.
Runs `ArtifactCategorizer.categorize` (the service's call) on the seeded held-out split of
`training.data` (as `shelver evaluate` uses it), images decoded by the service's
`prepare_image`, titles replaced by ``--title`` (default empty).

    python benchmarks/missing_text.py [--limit N --seed S] [--title ""]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from consumer.config import Settings
from models import kl
from models.artifact import load_categorizer
from training import data


def heldout_rows(cat, limit: int, seed: int):
    """(image paths, true targets) of the held-out split, optionally a seeded subsample of ``limit``."""
    df, rows, truth = data.heldout_sample(cat.labels, cat.artifact.manifest["label_space"]["article_to_label"],
                                          limit, seed)
    return df["image_path"].iloc[rows].tolist(), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="seeded subsample of the held-out split (0: all of it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--title", default="", help="the title every product is sent with")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    started = time.time()
    cat = load_categorizer(Settings().resolved_artifact_dir())
    paths, truth = heldout_rows(cat, args.limit, args.seed)

    def load(path):
        with Image.open(path) as im:
            return cat.prepare_image(im)

    with_title, image_only, old_rule = [], [], []
    with ThreadPoolExecutor(2) as pool:
        for i in range(0, len(paths), args.batch_size):
            images = list(pool.map(load, paths[i : i + args.batch_size]))
            with_title += [d.category for d in cat.categorize([args.title] * len(images), images)]
            image_p, text_p, used = cat.source_distributions([args.title] * len(images), images)
            image_only += [d.category for d in cat.decide(image_p, used)]
            # Before issue #6: every text counted as evidence, also one with no tokens.
            old = kl.ensemble(image_p, text_p, used, cat.image_weight)
            old_rule += [d.category for d in cat.decide(old, used)]

    def acc(pred, cls=None):
        rows = [i for i, t in enumerate(truth) if cls is None or t == cls]
        return round(100.0 * sum(pred[i] == truth[i] for i in rows) / max(1, len(rows)), 1)

    classes = sorted(Counter(truth))
    print(json.dumps({
        "artifact": cat.model_version, "rows": len(truth), "title": args.title,
        "subsample": {"limit": args.limit, "seed": args.seed} if args.limit else None,
        "accuracy_with_title": acc(with_title), "accuracy_image_only": acc(image_only),
        "accuracy_old_rule": acc(old_rule),
        "decisions_equal_image_only": sum(a == b for a, b in zip(with_title, image_only)),
        "per_class_with_title": {c: acc(with_title, c) for c in classes},
        "per_class_image_only": {c: acc(image_only, c) for c in classes},
        "per_class_old_rule": {c: acc(old_rule, c) for c in classes},
        "seconds": round(time.time() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
