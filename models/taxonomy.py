"""Target taxonomies, their projections onto the source label space, and the correction rule.

Three modules, re-exported here under their old names (training and older callers import them
from ``models.taxonomy``):

- `models.taxonomy_document`: the taxonomy document (categories, loading, validation, change plans);
- `models.projections`: projections q_t and the KL choice;
- `models.correction_rule`: corrections blended into the projections, online.
"""
from __future__ import annotations

from models.correction_rule import Correction, corrected_projections, projection_version, reviewer_weights, tempered
from models.projections import build_projections, changed_projections, choose_categories
from models.taxonomy_document import (
    Category,
    Taxonomy,
    TaxonomyError,
    load_taxonomy,
    mapped_classes,
    parse_taxonomy,
    plan_change,
    resolve_sources,
)

__all__ = [
    "Category", "Correction", "Taxonomy", "TaxonomyError", "build_projections", "changed_projections",
    "choose_categories", "corrected_projections", "load_taxonomy", "mapped_classes", "parse_taxonomy",
    "plan_change", "projection_version", "resolve_sources", "reviewer_weights", "tempered",
]
