"""Edits of a feature field's selection: delete, extract, recolour. Results are new fields."""

from feature_splat.edit.ops import delete, extract, recolour

__all__ = ["delete", "extract", "recolour"]
