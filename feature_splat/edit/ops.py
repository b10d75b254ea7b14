"""Edit operations on a selection of Gaussians; each returns a new field and leaves the input alone."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from feature_splat.errors import ConfigError, InputShapeError
from feature_splat.field import FeatureField
from feature_splat.gaussians import rgb_to_sh0


def _check(field: FeatureField, selection: Tensor) -> None:
    if selection.dtype != torch.bool or selection.shape != (len(field.gaussians),):
        raise InputShapeError(
            f"selection: expected a bool mask [{len(field.gaussians)}], got {selection.dtype} "
            f"{list(selection.shape)}"
        )


def delete(field: FeatureField, selection: Tensor) -> FeatureField:
    """The field without the selected Gaussians."""
    _check(field, selection)
    return field.subset(~selection)


def extract(field: FeatureField, selection: Tensor) -> FeatureField:
    """Only the selected Gaussians."""
    _check(field, selection)
    return field.subset(selection)


def recolour(
    field: FeatureField, selection: Tensor, rgb: tuple[float, float, float], strength: float = 1.0
) -> FeatureField:
    """Blend the selected Gaussians' colour toward ``rgb`` by ``strength`` in [0, 1]: the SH DC
    term moves toward the colour and the view-dependent bands fade by the same amount."""
    _check(field, selection)
    if not 0.0 <= strength <= 1.0:
        raise InputShapeError(f"strength: expected a value in [0, 1], got {strength}")
    g = field.gaussians.detach()
    target = rgb_to_sh0(torch.tensor(rgb, dtype=g.sh0.dtype))
    weight = selection.to(g.sh0.dtype)[:, None, None] * strength
    sh0 = g.sh0 * (1 - weight) + target * weight
    shN = g.shN * (1 - weight)
    return replace(field, gaussians=replace(g, sh0=sh0, shN=shN))


EDIT_OPS = ("delete", "extract", "recolour")


def apply_edit(
    field: FeatureField,
    op: str,
    selection: Tensor,
    rgb: tuple[float, float, float] = (0.1, 0.8, 0.1),
) -> FeatureField:
    """``op`` (one of :data:`EDIT_OPS`) applied to the selected Gaussians; ``rgb`` is the
    recolour target."""
    if op == "delete":
        return delete(field, selection)
    if op == "extract":
        return extract(field, selection)
    if op == "recolour":
        return recolour(field, selection, rgb)
    raise ConfigError(f"edit: unknown operation {op!r} (one of {', '.join(EDIT_OPS)})")
