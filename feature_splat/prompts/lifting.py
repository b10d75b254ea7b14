"""Lift 2D masks to a 3D selection of Gaussians by their rendering weight inside and outside.

Gaussian i's weight at pixel p is ``w_ip = alpha_ip T_ip`` (its share of the pixel), summed over
the pixels of a mask and over the views given by the rasterizer's
:func:`~feature_splat.rasterizer.accumulate`. Rule: a Gaussian is selected when at least
``min_inside_ratio`` of its total weight falls inside the masks and that weight is at least
``min_weight`` (about that many pixels' worth), so Gaussians that are mostly elsewhere, or barely
visible, are left out; so are those the field flags ``unseen``.
"""

from __future__ import annotations

from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField
from feature_splat.rasterizer import accumulate


def mask_weights(field: FeatureField, cameras: Cameras, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-Gaussian rendering weight [N] summed inside ``masks`` [C, H, W] (bool) and outside."""
    if masks.shape != (len(cameras), cameras.height, cameras.width):
        raise InputShapeError(
            f"masks: expected [{len(cameras)}, {cameras.height}, {cameras.width}], got {list(masks.shape)}"
        )
    g = field.gaussians.detach()
    out = accumulate(
        g.means, g.quats, g.scales, g.opacities, cameras.viewmats.to(g.means),
        cameras.Ks.to(g.means), cameras.width, cameras.height, masks[..., None].to(g.means),
        stride=1, near_plane=field.near_plane,
    )  # fmt: skip
    inside = out.sums[:, 0].double()
    return inside.float(), (out.weights - inside).clamp_min(0.0).float()


def select_by_masks(
    field: FeatureField,
    cameras: Cameras,
    masks: Tensor,
    min_inside_ratio: float = 0.5,
    min_weight: float = 0.5,
) -> Tensor:
    """Boolean selection [N] of the Gaussians that render mostly inside ``masks`` (module docstring)."""
    inside, outside = mask_weights(field, cameras, masks)
    ratio = inside / (inside + outside).clamp_min(1e-12)
    return (ratio >= min_inside_ratio) & (inside >= min_weight) & field.selectable()
