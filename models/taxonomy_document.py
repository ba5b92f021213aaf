"""The taxonomy document: target categories as a file describes them, checked, and changes to it planned.

A taxonomy (``models/taxonomies/marketplace.yaml``, or a file given to ``shelver taxonomy apply``)
lists the target categories with descriptions, keywords, source classes and examples. This module
reads and validates it (`load_taxonomy`, `parse_taxonomy`), resolves a category's source classes to
label indices, and checks a new version against the running one (`plan_change`). Pure, no I/O but
`load_taxonomy`'s read. The projections are `models.projections`; the correction rule is
`models.correction_rule`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml


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


def mapped_classes(category: Category, labels: Sequence[str]) -> list[int]:
    """Label indices of the category's source classes; pooled rare types (``other:<NAME>``) included."""
    wanted = set(category.source_classes) | {f"other:{category.name}"}
    return [i for i, lab in enumerate(labels) if lab in wanted]


def resolve_sources(category: Category, labels: Sequence[str], article_to_label: dict[str, str]) -> list[int]:
    """Label indices of a category's source classes, given as labels or as catalogue articleTypes."""
    wanted = {article_to_label.get(s, s) for s in category.source_classes}
    return sorted(set(mapped_classes(category, labels)) | {i for i, lab in enumerate(labels) if lab in wanted})



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


def plan_change(new: Taxonomy, current: Taxonomy, labels: Sequence[str], article_to_label: dict[str, str],
                current_carried: dict[str, Sequence[str]] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Check ``new`` against the running ``current`` taxonomy and the model's labels.

    Returns (carried_from, rebuilt): corrections of an old category that is gone and claimed (``from``)
    by exactly one new category carry over to it (rename, merge; a split carries nothing, the parts
    start from their examples); ``rebuilt`` are the categories whose projection is computed anew
    (new ones, and ones with examples or changed source classes); all others keep their current row.
    ``current_carried`` is the running taxonomy's own ``carried_from``: the names an old category already
    carried go with it (A renamed B, then B renamed C: C carries B and A), and a category that stays keeps
    them, so corrections survive any chain of renames.
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
    aliases = {k: list(v) for k, v in (current_carried or {}).items()}
    carried: dict[str, list[str]] = {}
    for name in new.targets:  # a category that stays keeps the names it carried
        if name in old and aliases.get(name):
            carried[name] = [a for a in aliases[name] if a not in names]
    for o, claimers in claims.items():
        if o not in names and len(claimers) == 1:
            carried.setdefault(claimers[0], []).extend([o, *(a for a in aliases.get(o, ()) if a not in names)])
    return {k: sorted(set(v)) for k, v in carried.items() if v}, rebuilt
