"""Target taxonomies and their projections onto the source label space.

A projection q_t is a distribution over the source labels that stands for target category
t; a product goes to the target whose projection is KL-nearest to its predicted source
distribution (`models.kl`). Projections mix three pieces of evidence, see
`build_projections`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import yaml

from models import kl


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    keywords: tuple[str, ...]
    source_classes: tuple[str, ...]  # catalogue articleTypes that belong to this category
    examples: tuple[str, ...] = ()  # labelled product texts (taxonomy files of `shelver taxonomy apply`)
    carries: tuple[str, ...] = ()  # old categories this one replaces (``from:`` in a taxonomy file)


@dataclass(frozen=True)
class Taxonomy:
    version: str
    fallback: str
    categories: tuple[Category, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)


def load_taxonomy(path: str | Path) -> Taxonomy:
    d = yaml.safe_load(Path(path).read_text())
    cats = tuple(
        Category(
            name=str(c["name"]),
            description=str(c.get("description", "")),
            keywords=tuple(str(k) for k in c.get("keywords", ())),
            source_classes=tuple(str(s) for s in c.get("source_classes", ())),
            examples=tuple(str(e) for e in c.get("examples", ()) or ()),
            carries=tuple(str(e) for e in c.get("from", ()) or ()),
        )
        for c in d["categories"]
    )
    return Taxonomy(version=str(d.get("version", Path(path).stem)), fallback=str(d.get("fallback", "OTHERS")),
                    categories=cats)


class _Predicts(Protocol):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def mapped_classes(category: Category, labels: Sequence[str]) -> list[int]:
    """Label indices of the category's source classes; pooled rare types (``other:<NAME>``) included."""
    wanted = set(category.source_classes) | {f"other:{category.name}"}
    return [i for i, lab in enumerate(labels) if lab in wanted]


def build_projections(
    taxonomy: Taxonomy,
    labels: Sequence[str],
    text_model: _Predicts | None,
    examples: Sequence[tuple[str, str]] | None = None,
    alpha: float = 1e-2,
    w_text: float = 0.0,
    w_map: float = 0.5,
    w_examples: float = 0.5,
) -> np.ndarray:
    """[T, S] projections: a weighted mix, per target, of

    (a) the text model's distribution for "name. description" (the original method's idea,
        with the description added so the name is not the only cue),
    (b) uniform mass on the explicitly mapped source classes,
    (c) the mean predicted distribution of labelled example texts of the target (LEEP-style:
        how the model actually responds to that target's products).
    A missing piece (no model, no mapped class, no example) drops out and the remaining
    weights are renormalized; rows are smoothed with `models.kl.smooth` so every entry > 0.

    Defaults come from 2-fold cross-validation inside the marketplace taxonomy examples
    (training/marketplace_eval.py): (a) hurts there even at weight 0.05 (the category prose
    spreads mass over unrelated titles' classes, which then attracts vague descriptions),
    so it is off by default; (b) and (c) tie.
    """
    targets = taxonomy.targets
    n = len(labels)
    text = np.zeros((len(targets), n))
    if text_model is not None and w_text > 0:
        prompts = [f"{c.name.lower()}. {c.description}" for c in taxonomy.categories]
        text = kl.normalize_rows(text_model.predict_proba(prompts))
    mapped = np.zeros((len(targets), n))
    for t, c in enumerate(taxonomy.categories):
        mapped[t, mapped_classes(c, labels)] = 1.0
    mapped = kl.normalize_rows(mapped)
    ex = np.zeros((len(targets), n))
    if examples and text_model is not None and w_examples > 0:
        texts, names = zip(*examples)
        probs = kl.normalize_rows(text_model.predict_proba(list(texts)))
        names = np.array(names)
        for t, name in enumerate(targets):
            if (names == name).any():
                ex[t] = probs[names == name].mean(axis=0)
    q = np.zeros((len(targets), n))
    for w, part in ((w_text, text), (w_map, mapped), (w_examples, ex)):
        present = part.sum(axis=1, keepdims=True) > 0
        q += w * np.where(present, part, 0.0)
    q[q.sum(axis=1) == 0] = 1.0  # a target without any evidence: uniform, not undefined
    return kl.smooth(q, alpha)


def choose_categories(
    p: np.ndarray,
    q: np.ndarray,
    targets: Sequence[str],
    threshold: float | None = None,
    fallback: str = "OTHERS",
) -> list[kl.Choice]:
    """KL-nearest target per prediction row (abstaining to ``fallback`` above ``threshold``)."""
    return kl.choose(kl.kl_matrix(p, q), targets, abstain_threshold=threshold, fallback=fallback)


# ---- human in the loop: corrections blended into the projections (pure, no I/O) -------------------


@dataclass(frozen=True)
class Correction:
    """One person's decision: product ``product_id`` belongs to ``category``; ``p`` is its predicted
    distribution over the source labels (what the model saw when it chose)."""

    product_id: str
    category: str
    p: np.ndarray  # [S], sums to one
    reviewer: str | None = None
    stamp: str = ""  # e.g. the correction time; only feeds `projection_version`


def reviewer_weights(reviewers: Sequence[str | None], cap: float) -> np.ndarray:
    """Weight per correction: 1, except that all corrections of one reviewer share at most ``cap``.

    A reviewer with n > cap corrections gives each min(1, cap / n): the reviewer's own mean is kept,
    its pull is bounded, and the result does not depend on the order corrections arrived in (so every
    instance reading the same compacted topic agrees). Corrections without a reviewer count as one
    reviewer, ``None``.
    """
    counts: dict[str | None, int] = {}
    for r in reviewers:
        counts[r] = counts.get(r, 0) + 1
    return np.array([min(1.0, cap / counts[r]) for r in reviewers], dtype=np.float64)


def tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of ``p`` raised to the power ``temperature`` and renormalized: < 1 flattens (a corrected
    product's runner-up source classes count more), 1 leaves them as they are. Still distributions."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    if temperature == 1.0:
        return kl.normalize_rows(p)
    return kl.normalize_rows(np.where(p > 0, p, 0.0) ** temperature)


def corrected_projections(
    prior: np.ndarray,
    targets: Sequence[str],
    corrections: Sequence[Correction],
    prior_strength: float = 10.0,
    reviewer_cap: float = 20.0,
    carried_from: dict[str, Sequence[str]] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Projections after corrections, and the corrections' total weight per target ([T, S], [T]).

    LEEP-style running estimate of P(source | target) from corrected products, blended with the
    taxonomy's prior q_t (which stands for ``prior_strength`` corrections):

        q_t = (k * prior_t + sum_i w_i p~_i) / (k + sum_i w_i)      over corrections i of target t

    with w_i from `reviewer_weights` and p~_i = `tempered` (p_i, ``temperature``): each corrected
    product's distribution raised to the power tau and renormalized before it is averaged (tau < 1
    flattens the model's over-sharp answers on products it never saw; tau = 1 is the plain mean).
    Rows stay strictly positive because the prior is. Bound on abuse: every p~_i is a distribution
    and one reviewer's corrections weigh at most ``reviewer_cap`` in total, so they move any q_t at
    most cap / (k + cap) of the way (total variation) towards that reviewer's own (tempered) mean,
    less as other reviewers' corrections accumulate, whatever the temperature. A correction counts for target t when it names t or a
    name in ``carried_from[t]`` (renames and merges); any other name is ignored here (the reader sends
    those to the DLQ).
    """
    prior = np.asarray(prior, dtype=np.float64)
    owner: dict[str, int] = {}
    for t, name in enumerate(targets):
        for alias in (carried_from or {}).get(name, ()):
            owner.setdefault(alias, t)
        owner[name] = t  # a current name always wins over an alias
    num = np.zeros_like(prior)
    mass = np.zeros(len(targets))
    # Summed in one fixed order (product, then the rest of the key): float sums then do not depend on the order the
    # corrections were read in, so every instance computes bit-identical projections from the same corrections.
    kept = sorted((c for c in corrections if c.category in owner),
                  key=lambda c: (c.product_id, c.category, c.reviewer or "", c.stamp))
    if kept:
        w = reviewer_weights([c.reviewer for c in kept], reviewer_cap)
        for c, wi in zip(kept, w):
            t = owner[c.category]
            num[t] += wi * tempered(np.asarray(c.p, dtype=np.float64)[None, :], temperature)[0]
            mass[t] += wi
    q = (prior_strength * prior + num) / (prior_strength + mass)[:, None]
    return kl.normalize_rows(q), mass


def projection_version(base_version: str, corrections: Sequence[Correction], targets: Sequence[str],
                       carried_from: dict[str, Sequence[str]] | None = None) -> str:
    """``<base>`` without applicable corrections, else ``<base>+c<count>.<digest>``.

    The digest covers the sorted (product, category, reviewer, stamp) of the corrections that count,
    so every instance that has read the same corrections stamps the same version, whatever the order.
    """
    names = set(targets) | {a for v in (carried_from or {}).values() for a in v}
    kept = sorted((c.product_id, c.category, c.reviewer or "", c.stamp) for c in corrections if c.category in names)
    if not kept:
        return base_version
    digest = hashlib.sha256(repr(kept).encode()).hexdigest()[:8]
    return f"{base_version}+c{len(kept)}.{digest}"


# ---- taxonomy changes without retraining (`shelver taxonomy apply`; pure) -----------------------------

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class TaxonomyError(ValueError):
    """A taxonomy file that must not be applied; ``problems`` lists every reason found."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_taxonomy(doc: dict) -> Taxonomy:
    """A taxonomy file's content → Taxonomy, with structural checks (all problems at once)."""
    problems: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), list) or not doc["categories"]:
        raise TaxonomyError(["the file needs a non-empty 'categories' list"])
    version = str(doc.get("version") or "").strip()
    if not version:
        problems.append("'version' is required")
    cats: list[Category] = []
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict):
            problems.append(f"category #{i + 1} is not a mapping")
            continue
        name = str(c.get("name", ""))
        where = f"category {name or '#' + str(i + 1)}"
        if not _NAME.match(name):
            problems.append(f"{where}: name must be UPPER_CASE letters, digits, _ (≤ 64)")
        unknown = set(c) - {"name", "description", "keywords", "source_classes", "examples", "from"}
        if unknown:
            problems.append(f"{where}: unknown field(s) {sorted(unknown)}")
        if not str(c.get("description") or "").strip():
            problems.append(f"{where}: description is required")
        for key in ("keywords", "source_classes", "examples", "from"):
            v = c.get(key, [])
            if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)):
                problems.append(f"{where}: {key} must be a list of non-empty strings")
        if not c.get("keywords"):
            problems.append(f"{where}: at least one keyword is required")
        cats.append(Category(name, str(c.get("description") or ""), tuple(c.get("keywords") or ()),
                             tuple(c.get("source_classes") or ()), tuple(c.get("examples") or ()),
                             tuple(c.get("from") or ())))
    names = [c.name for c in cats]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate category names {dupes}")
    fallback = str(doc.get("fallback", "OTHERS"))
    if fallback not in names:
        problems.append(f"fallback {fallback!r} is not one of the categories")
    if problems:
        raise TaxonomyError(problems)
    return Taxonomy(version=version, fallback=fallback, categories=tuple(cats))


def plan_change(new: Taxonomy, current: Taxonomy, labels: Sequence[str], article_to_label: dict[str, str]
                ) -> tuple[dict[str, list[str]], list[str]]:
    """Check ``new`` against the running ``current`` taxonomy and the model's labels.

    Returns (carried_from, rebuilt): corrections of an old category that is gone and claimed (``from``)
    by exactly one new category carry over to it (rename, merge; a split carries nothing, the parts
    start from their examples); ``rebuilt`` are the categories whose projection is computed anew
    (new ones, and ones with examples or changed source classes); all others keep their current row.
    """
    problems: list[str] = []
    if new.version == current.version:
        problems.append(f"version {new.version!r} is already applied; give the new taxonomy a new version")
    old = {c.name: c for c in current.categories}
    # Names the model knows, plus any the running taxonomy already lists (rare articleTypes dropped from
    # the label space stay valid there, they simply map to nothing).
    known_sources = set(labels) | set(article_to_label) | {x for c in current.categories for x in c.source_classes}
    claims: dict[str, list[str]] = {}
    rebuilt: list[str] = []
    for c in new.categories:
        bad = sorted(set(c.source_classes) - known_sources)
        if bad:
            problems.append(f"category {c.name}: unknown source classes {bad}")
        for o in c.carries:
            if o not in old:
                problems.append(f"category {c.name}: 'from' names {o!r}, which is not in taxonomy {current.version}")
            claims.setdefault(o, []).append(c.name)
        prev = old.get(c.name)
        if prev is None or c.examples or set(c.source_classes) != set(prev.source_classes):
            rebuilt.append(c.name)
            if not c.examples and not resolve_sources(c, labels, article_to_label):
                problems.append(f"category {c.name}: needs examples or source classes (no evidence to project)")
    if problems:
        raise TaxonomyError(problems)
    names = set(new.targets)
    carried: dict[str, list[str]] = {}
    for o, claimers in claims.items():
        if o not in names and len(claimers) == 1:
            carried.setdefault(claimers[0], []).append(o)
    return carried, rebuilt


def resolve_sources(category: Category, labels: Sequence[str], article_to_label: dict[str, str]) -> list[int]:
    """Label indices of a category's source classes, given as labels or as catalogue articleTypes."""
    wanted = {article_to_label.get(s, s) for s in category.source_classes}
    return sorted(set(mapped_classes(category, labels)) | {i for i, lab in enumerate(labels) if lab in wanted})


def changed_projections(
    new: Taxonomy,
    current_targets: Sequence[str],
    current_q: np.ndarray,
    rebuilt: Sequence[str],
    labels: Sequence[str],
    article_to_label: dict[str, str],
    predict,
    alpha: float = 1e-2,
) -> np.ndarray:
    """[T_new, S]: kept rows copied from ``current_q``; rebuilt rows = ½ uniform over the resolved
    source classes + ½ mean predicted distribution of the category's examples (the same LEEP-style
    recipe as `build_projections`, a missing half dropping out), smoothed."""
    rows = []
    cur = {t: i for i, t in enumerate(current_targets)}
    for c in new.categories:
        if c.name not in rebuilt:
            rows.append(np.asarray(current_q[cur[c.name]], dtype=np.float64))
            continue
        parts = []
        idx = resolve_sources(c, labels, article_to_label)
        if idx:
            m = np.zeros(len(labels))
            m[idx] = 1.0 / len(idx)
            parts.append(m)
        if c.examples:
            parts.append(kl.normalize_rows(np.asarray(predict(list(c.examples)), dtype=np.float64)).mean(axis=0))
        rows.append(kl.smooth(np.mean(parts, axis=0)[None, :], alpha)[0])
    return np.stack(rows)
