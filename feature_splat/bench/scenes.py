"""Seeded benchmark scenes: Gaussians in front of one camera with a controlled screen-space size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from feature_splat.cameras import intrinsics


@dataclass
class BenchScene:
    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    features: Tensor
    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def args(self) -> tuple:
        return (
            self.means,
            self.quats,
            self.scales,
            self.opacities,
            self.features,
            self.viewmats,
            self.Ks,
            self.width,
            self.height,
        )


def raster_scene(n: int, dim: int, size: int, seed: int = 0) -> BenchScene:
    """The rasterizer benchmark scene.

    Means uniform in x, y in [-2, 2], z in [2, 6]; uniformly random rotations; scales log-uniform so
    that the projected standard deviation is 0.3-3 px (bounding-box radius about 1-10 px) at the
    Gaussian's own depth; opacities U(0.1, 0.9); features N(0, 1). One camera at the origin looking
    down +z with focal length = image size (53 degree field of view).
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([4.0, 4.0, 4.0]) + torch.tensor(
        [-2.0, -2.0, 2.0]
    )
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    focal = float(size)
    sigma_px = torch.exp(torch.empty(n, 3).uniform_(math.log(0.3), math.log(3.0), generator=g))
    scales = sigma_px * means[:, 2:3] / focal
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    features = torch.randn(n, dim, generator=g)
    viewmats = torch.eye(4)[None]
    Ks = intrinsics(focal, focal, size / 2.0, size / 2.0)[None]
    return BenchScene(means, quats, scales, opacities, features, viewmats, Ks, size, size)
