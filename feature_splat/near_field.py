"""The cameras' near field: where Gaussians turn into veils.

With no point cloud, optimisation may park opaque Gaussians a few centimetres in front of a
camera: they explain that view's sky cheaply and cover much of every view from other sides.
Distances here are fractions of the scene scale (gsplat's: 1.1 x the largest distance of a camera
from their centroid), so one setting fits a room and a street:

- the *near plane* (``TrainConfig.near_plane``): Gaussians closer to a camera are not rendered,
  in training and afterwards (the field stores the distance);
- the *near field* (:data:`NEAR_FIELD`): a Gaussian inside it whose screen footprint covers more
  than :data:`VEIL_SHARE` of a training view is a veil; training prunes veils, and
  :func:`count_veils` measures them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import DatasetError
from feature_splat.gaussians import GaussianField
from feature_splat.rasterizer.projection import project

NEAR_FIELD = 0.1
"""Depth below which a Gaussian counts as near a camera, as a fraction of the scene scale."""
VEIL_SHARE = 0.05
"""Share of a view's pixels above which a near Gaussian's footprint is a veil."""


def scene_scale(cameras: Cameras) -> float:
    """gsplat's scene scale: 1.1 x the largest distance of a camera centre from their mean."""
    centers = cameras.centers
    scale = 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-3))
    if not math.isfinite(scale):
        raise DatasetError("cameras: their centres are not finite (poses beyond float32 range)")
    return scale


@torch.no_grad()
def find_veils(
    gaussians: GaussianField,
    cameras: Cameras,
    near_field: float,
    share: float = VEIL_SHARE,
    chunk: int = 16,
) -> Tensor:
    """[N] bool: Gaussians whose centre lies within ``near_field`` (camera-space depth, in scene
    units) in front of some camera and whose screen footprint (the rasterizer's opacity-aware
    bounding box, clipped to the image) covers more than ``share`` of that camera's image."""
    found = torch.zeros(len(gaussians), dtype=torch.bool, device=gaussians.means.device)
    if not len(gaussians):
        return found
    g = gaussians
    area = cameras.width * cameras.height
    for start in range(0, len(cameras), chunk):
        part = cameras[start : start + chunk]
        projected = project(
            g.means, g.quats, g.scales, g.opacities, part.viewmats.to(g.means), part.Ks.to(g.means),
            part.width, part.height, near_plane=1e-6, far_plane=near_field, eps2d=0.3,
        )  # fmt: skip
        centre = projected.means2d
        radius = projected.radii.to(centre.dtype)
        x0 = (centre[..., 0] - radius[..., 0]).clamp(0, part.width)
        x1 = (centre[..., 0] + radius[..., 0]).clamp(0, part.width)
        y0 = (centre[..., 1] - radius[..., 1]).clamp(0, part.height)
        y1 = (centre[..., 1] + radius[..., 1]).clamp(0, part.height)
        covered = (x1 - x0) * (y1 - y0) / area
        found |= (projected.visible & (covered > share)).any(dim=0)
    return found


def count_veils(gaussians: GaussianField, cameras: Cameras) -> int:
    """How many Gaussians are veils (module docstring) for these cameras."""
    return int(find_veils(gaussians, cameras, NEAR_FIELD * scene_scale(cameras)).sum())
