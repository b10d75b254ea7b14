"""Seeded random scenes for rasterizer tests, with the awkward cases the issue lists."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from feature_splat.bench.scenes import BenchScene
from feature_splat.cameras import intrinsics, look_at


@dataclass
class Scene(BenchScene):
    """A benchmark-style scene plus per-camera backgrounds."""

    backgrounds: Tensor

    def params(self) -> list[Tensor]:
        return [self.means, self.quats, self.scales, self.opacities, self.features]

    def with_params(self, params: list[Tensor]) -> Scene:
        return replace(
            self,
            **dict(zip(("means", "quats", "scales", "opacities", "features"), params, strict=True)),
        )


def cameras(n_cameras: int, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Cameras near the origin looking down +z (slightly different positions)."""
    eyes = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.2, 0.1], [-0.3, 0.2, -0.2]])[:n_cameras]
    targets = eyes + torch.tensor([0.0, 0.0, 4.0])
    targets[1:, 0] += 0.3
    viewmats = look_at(eyes, targets, up=torch.tensor([0.0, -1.0, 0.0]))
    focal = 0.9 * width
    K = intrinsics(focal, focal, width / 2.0, height / 2.0)
    return viewmats, K.expand(n_cameras, 3, 3).clone()


def random_scene(
    n: int = 300,
    dim: int = 3,
    width: int = 37,
    height: int = 29,
    n_cameras: int = 2,
    seed: int = 0,
    near_plane: float = 0.2,
) -> Scene:
    """A scene mixing ordinary Gaussians with the edge cases below.

    Besides ``n`` ordinary Gaussians in front of the cameras it includes: Gaussians behind the camera,
    ones straddling the near plane, off-screen ones, one covering the whole image, sub-pixel ones.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    means = torch.cat([uniform(n, 2, lo=-1.2, hi=1.2), uniform(n, 1, lo=2.0, hi=6.0)], dim=1)
    scales = torch.exp(uniform(n, 3, lo=-3.5, hi=-1.5))
    special_means = [
        torch.tensor([[0.1, 0.2, -1.0], [-0.3, 0.1, -3.0]]),  # behind the camera
        torch.tensor(
            [[0.05, -0.05, near_plane + 0.02], [0.2, 0.1, near_plane - 0.01]]
        ),  # near plane
        torch.tensor(
            [[8.0, 0.0, 3.0], [0.0, -9.0, 2.5], [3.2, 2.4, 2.0]]
        ),  # off-screen / at the edge
        torch.tensor([[0.0, 0.0, 5.0]]),  # covers the whole image
        torch.tensor([[0.3, -0.2, 4.0], [-0.4, 0.3, 5.5], [0.1, 0.1, 3.0]]),  # sub-pixel
    ]
    special_scales = [
        torch.full((2, 3), 0.3),
        torch.tensor([[0.3, 0.2, 0.4], [0.2, 0.3, 0.2]]),
        torch.tensor([[0.3, 0.3, 0.3], [0.2, 0.2, 0.2], [0.5, 0.4, 0.3]]),
        torch.tensor([[4.0, 3.0, 0.5]]),
        torch.full((3, 3), 2e-3),
    ]
    means = torch.cat([means, *special_means])
    scales = torch.cat([scales, *special_scales])
    total = means.shape[0]
    quats = torch.randn(total, 4, generator=g)
    opacities = uniform(total, lo=0.1, hi=0.95)
    opacities[n + 7] = 0.35  # the large Gaussian: translucent so what is behind it still shows
    features = torch.randn(total, dim, generator=g)
    viewmats, Ks = cameras(n_cameras, width, height)
    backgrounds = uniform(n_cameras, dim)
    return Scene(
        means, quats, scales, opacities, features, viewmats, Ks, width, height, backgrounds
    )
