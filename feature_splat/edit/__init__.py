"""Edits of a feature field's selection: delete, extract, recolour. Results are new fields."""

from feature_splat.edit.ops import EDIT_OPS, apply_edit, delete, extract, recolour

__all__ = ["EDIT_OPS", "apply_edit", "delete", "extract", "recolour"]
