"""The evaluation report: markdown tables, confusion-matrix and training-curve PNGs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.text import normalize  # noqa: E402

_COMBINE_WORDS = {"mean": "weighted average of the image and text distributions",
                  "geometric": "weighted geometric mean of the image and text distributions (renormalized)"}


def _confusion_png(matrix, labels, title, path: Path) -> None:
    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves_png(manifest: dict, path: Path) -> bool:
    hist = manifest.get("training", {})
    panels = [
        (n, hist.get(k) or {}) for n, k in (("image head", "image_history"), ("text model", "text_history"))
    ]
    panels = [(n, h) for n, h in panels if any(isinstance(v, list) for v in h.values())]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, h) in zip(axes[0], panels):
        for key, values in h.items():
            if isinstance(values, list) and values and ("loss" in key or "acc" in key):
                ax.plot(range(1, len(values) + 1), values, label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# The targets of issue #14 (text only, marketplace evaluation part).
MARKETPLACE_TARGETS = {"accuracy": 0.88, "sure": 0.95, "accuracy_at_70pct_coverage": 0.97}


def _marketplace_section(results: dict, om: dict | None) -> list[str]:
    m = results["marketplace"]["text-only"]
    b = results["marketplace"].get("tfidf_baseline")
    cell = lambda r, k: _pct(r[k]) if r and k in r else "–"  # noqa: E731
    lines = [
        "",
        "## Marketplace (hand-labelled evaluation part, text only: its images are unreachable)",
        "",
        f"{m['n']} labelled descriptions never used for training, tuning or calibration "
        f"(`training/labels/marketplace_dev.csv`, split by `training.marketplace_eval.dev_split`); "
        f"{m['sure']['n']} of them the labeller marked *sure*. The TF-IDF baseline (word 1–2-grams + "
        "character 3–5-grams, logistic regression; `training/tfidf_baseline.py`) is retrained in this run "
        "on the text model's own training texts.",
        "",
        "| model | accuracy | on *sure* items | on the 70% most confident | coverage at ≥ 95% | macro-F1 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ours (text model + KL choice) | {_pct(m['accuracy'])} | {_pct(m['sure']['accuracy'])} | "
        f"{cell(m, 'accuracy_at_70pct_coverage')} | {cell(m, 'coverage_at_95pct_accuracy')} | {m['macro_f1']:.3f} |",
    ]
    if b:
        lines.append(
            f"| TF-IDF + logistic regression | {_pct(b['accuracy'])} | {_pct(b['sure']['accuracy'])} | – | – | "
            f"{b['macro_f1']:.3f} |"
        )
    if om and "marketplace" in om:
        lines.append(
            f"| original method | {_pct(om['marketplace']['accuracy'])} | | | | {om['marketplace']['macro_f1']:.3f} |"
        )
    t = MARKETPLACE_TARGETS
    lines.append(
        f"| *target* | ≥ {_pct(t['accuracy'])} | ≥ {_pct(t['sure'])} | ≥ {_pct(t['accuracy_at_70pct_coverage'])} | | |"
    )
    counts = np.asarray(m["confusion"]).sum(axis=1)
    targets = results.get("targets") or list(m["per_class_recall"])
    lines += [
        "",
        "Per category (recall on the evaluation part):",
        "",
        "| category | items | ours | TF-IDF baseline |",
        "|---|---:|---:|---:|",
    ]
    for k, v in m["per_class_recall"].items():
        n = int(counts[targets.index(k)]) if k in targets else ""
        lines.append(f"| {k} | {n} | {_pct(v)} | {cell(b['per_class_recall'], k) if b else '–'} |")
    return lines


def write_report(
    results: dict, manifest: dict, errors, market, out_dir: Path, card: Path | None = None
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = manifest["taxonomy"]["targets"]
    cat = results["catalogue"]
    om = results.get("original_method")
    lines = [
        f"# Evaluation of `{results['version']}`",
        "",
        f"Produced by `shelver evaluate` ({results['seconds']} s). Catalogue rows: {results['rows']} "
        f"({results['split']} split, seeded and stratified by articleType). Targets: the hand-written "
        "articleType → category mapping (`training/labels/article_type_to_target.yaml`). "
        f"Ensemble: {_COMBINE_WORDS[results.get('combine', 'mean')]}, image weight {results['image_weight']:.2f}"
        + (f"; inference engine `{results['engine']}`." if results.get("engine") else "."),
        "",
        "## Catalogue (held-out)",
        "",
        "| model | source top-1 | source top-5 | source macro-F1 | target accuracy | target macro-F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in cat.items():
        s, t = r["source"], r["target"]
        lines.append(
            f"| {name} | {_pct(s['top1'])} | {_pct(s['top5'])} | {s['macro_f1']:.3f} | "
            f"{_pct(t['accuracy'])} | {t['macro_f1']:.3f} |"
        )
    if om:
        t = om["catalogue"]["target"]
        src = om["catalogue"]["source"]
        lines.append(
            f"| original method (subCategory) | img {_pct(src['image-only']['top1'])} / txt "
            f"{_pct(src['text-only']['top1'])} | | | {_pct(t['accuracy'])} | {t['macro_f1']:.3f} |"
        )
    if "marketplace" in results:
        lines += _marketplace_section(results, om)
    _confusion_png(
        cat["ensemble"]["target"]["confusion"],
        targets,
        "catalogue held-out, ensemble",
        out_dir / "confusion_catalogue.png",
    )
    lines += ["", "## Confusion matrices", "", "![catalogue](confusion_catalogue.png)"]
    if "marketplace" in results:
        _confusion_png(
            results["marketplace"]["text-only"]["confusion"],
            targets,
            "marketplace, text only",
            out_dir / "confusion_marketplace.png",
        )
        lines.append("![marketplace](confusion_marketplace.png)")
    if _curves_png(manifest, out_dir / "training_curves.png"):
        lines += ["", "## Training curves", "", "![curves](training_curves.png)"]
    lines += [
        "",
        "## Sample of errors",
        "",
        "Catalogue (ensemble):",
        "",
        "| title | articleType | true | predicted |",
        "|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(errors))[:15]:
        title, article, true, pred = errors[i]
        lines.append(f"| {title} | {article} | {true} | {pred} |")
    if market:
        wrong = [(t, a, p) for t, a, p in zip(market["texts"], market["true"], market["pred"]) if a != p]
        lines += ["", "Marketplace (text only):", "", "| description | true | predicted |", "|---|---|---|"]
        for i in rng.permutation(len(wrong))[:15]:
            text, true, pred = wrong[i]
            lines.append(f"| {normalize(text)[:120].replace('|', '/')} | {true} | {pred} |")
    if (
        card is not None and card.is_file()
    ):  # the artifact's own card, shown whole: sources, licences, ablation, limits
        body = card.read_text().split("\n", 1)[-1]
        lines += [
            "",
            f"## Model card (`{card.name}` in the artifact folder)",
            "",
            body.replace("\n## ", "\n### "),
        ]
    (out_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return out_dir / "evaluation.md"
