"""EWA projection of 3D Gaussians to 2D screen-space Gaussians, in gsplat's conventions.

Shared by the ``reference`` and ``cpu`` backends; plain PyTorch, differentiable by autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from feature_splat.gaussians import quat_to_rotmat

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian whose alpha at a pixel is below this is skipped there
MAX_ALPHA = 0.999  # alpha is clamped to this (gsplat's kernels)
MIN_TRANSMITTANCE = 1e-4  # a pixel stops once its transmittance would fall to this or below
MAX_EXTENT = 3.33  # screen-space bounding box half-size in standard deviations (= sqrt(2 ln 255))


@dataclass
class Projected:
    """Screen-space Gaussians for C cameras (culled ones have ``radii == 0``)."""

    means2d: Tensor  # [C, N, 2] pixel coordinates (differentiable)
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): [[a, b], [b, c]] (differentiable)
    depths: Tensor  # [C, N] camera-space z (differentiable)
    radii: Tensor  # [C, N, 2] int32 half-sizes of the screen bounding box in pixels; 0 = culled

    @property
    def visible(self) -> Tensor:
        """[C, N] bool: the Gaussian touches the image of that camera."""
        return (self.radii > 0).all(dim=-1)


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances R S S^T R^T [N, 3, 3]."""
    rs = quat_to_rotmat(quats) * scales[:, None, :]
    return rs @ rs.transpose(1, 2)


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> Projected:
    """Project N Gaussians into C pinhole cameras (EWA splatting with gsplat's conventions).

    - camera-space Jacobian with the view ray clamped to 1.3x the field of view;
    - ``eps2d`` added to the 2D covariance diagonal (low-pass filter);
    - culled (radius 0): depth outside (near_plane, far_plane), degenerate covariance, opacity below
      1/255, or bounding box entirely off-screen;
    - bounding box half-size ``ceil(k * sqrt(cov_ii))`` with the opacity-aware
      ``k = min(3.33, sqrt(2 ln(255 o)))``, outside which alpha < 1/255.
    """
    rot = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    means_c = (rot @ means[None, :, :, None])[..., 0] + viewmats[:, None, :3, 3]  # [C, N, 3]
    covars_c = rot @ covariances(quats, scales)[None] @ rot.transpose(-1, -2)  # [C, N, 3, 3]

    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians still flow through autograd: keep their arithmetic finite.
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)

    zeros = torch.zeros_like(z)
    jacobian = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(*z.shape, 2, 3)
    cov2d = jacobian @ covars_c @ jacobian.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    with torch.no_grad():
        opac = opacities.detach()[None].expand_as(z)
        valid = valid & (opac >= ALPHA_THRESHOLD)
        extent = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = extent.clamp_max(MAX_EXTENT)
        radius_x = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        radius_y = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        on_screen = (
            (mx + radius_x > 0)
            & (mx - radius_x < width)
            & (my + radius_y > 0)
            & (my - radius_y < height)
        )
        valid = valid & on_screen & ((radius_x > 0) | (radius_y > 0))
        radii = torch.stack([radius_x, radius_y], dim=-1).to(torch.int32) * valid[..., None]

    return Projected(means2d=means2d, conics=conics, depths=means_c[..., 2], radii=radii)


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """Number of tiles along x and y."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
