"""A brute-force rasterizer written independently of feature_splat, for tests only.

float64, every Gaussian against every pixel, one global depth sort per camera, no tiles and no
bounding boxes. It implements the contract stated in DESIGN.md / gsplat:

- EWA projection: Sigma_2d = J W Sigma W^T J^T + eps2d I, the view ray clamped to 1.3x the field of view
  when forming J;
- Gaussians with centre depth outside [near, far] or a non-positive 2D determinant are dropped;
- alpha = min(0.999, o exp(-0.5 d^T Sigma_2d^-1 d)) with d = mean2d - pixel centre; skipped if < 1/255;
- front to back; a pixel stops before the Gaussian that would bring transmittance to <= 1e-4;
- out = sum_i alpha_i T_i f_i + T_final * background; depth = sum_i alpha_i T_i z_i / alpha.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rotation(q: Tensor) -> Tensor:
    """Rotation matrices from quaternions via the left/right quaternion product matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    left = torch.stack([w, -x, -y, -z, x, w, -z, y, y, z, w, -x, z, -y, x, w], dim=-1).reshape(
        -1, 4, 4
    )
    right_conj = torch.stack(
        [w, x, y, z, -x, w, -z, y, -y, z, w, -x, -z, -y, x, w], dim=-1
    ).reshape(-1, 4, 4)
    return (left @ right_conj)[:, 1:, 1:]


def oracle_render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns features [C,H,W,D], expected depth [C,H,W,1], alpha [C,H,W,1] (float64, autograd)."""
    f64 = torch.float64
    means, quats, scales, opacities = (t.to(f64) for t in (means, quats, scales, opacities))
    features = features.to(f64)
    n_cameras = viewmats.shape[0]
    if features.ndim == 2:
        features = features[None].expand(n_cameras, -1, -1)
    dim = features.shape[-1]
    if backgrounds is None:
        backgrounds = torch.zeros(n_cameras, dim, dtype=f64)
    backgrounds = backgrounds.to(f64).expand(n_cameras, dim)

    rot_g = _rotation(quats)
    sigma3 = rot_g @ torch.diag_embed(scales**2) @ rot_g.transpose(1, 2)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=f64), torch.arange(width, dtype=f64), indexing="ij"
    )
    pixels = torch.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5], dim=-1)  # [P, 2]

    images, depths, alphas = [], [], []
    for c in range(n_cameras):
        view = viewmats[c].to(f64)
        K = Ks[c].to(f64)
        cam = means @ view[:3, :3].T + view[:3, 3]
        z = cam[:, 2]
        keep = (z >= near_plane) & (z <= far_plane)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        zs = torch.where(keep, z, torch.ones_like(z))
        u = cam[:, 0] / zs
        v = cam[:, 1] / zs
        lim_x = (-(cx / fx) - 0.3 * 0.5 * width / fx, (width - cx) / fx + 0.3 * 0.5 * width / fx)
        lim_y = (-(cy / fy) - 0.3 * 0.5 * height / fy, (height - cy) / fy + 0.3 * 0.5 * height / fy)
        u_c = torch.clamp(u, float(lim_x[0]), float(lim_x[1]))
        v_c = torch.clamp(v, float(lim_y[0]), float(lim_y[1]))
        jac = torch.zeros(len(z), 2, 3, dtype=f64)
        jac = jac + torch.stack(
            [
                torch.stack([fx / zs, torch.zeros_like(zs), -fx * u_c / zs], dim=-1),
                torch.stack([torch.zeros_like(zs), fy / zs, -fy * v_c / zs], dim=-1),
            ],
            dim=1,
        )
        w3 = view[:3, :3]
        sigma2 = jac @ w3 @ sigma3 @ w3.T @ jac.transpose(1, 2) + eps2d * torch.eye(2, dtype=f64)
        det = torch.linalg.det(sigma2)
        keep = keep & (det > 0)
        sigma2 = torch.where(keep[:, None, None], sigma2, torch.eye(2, dtype=f64))
        conic = torch.linalg.inv(sigma2)
        mean2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)

        diff = mean2d[None] - pixels[:, None]  # [P, N, 2]
        power = 0.5 * torch.einsum("pni,nij,pnj->pn", diff, conic, diff)
        alpha = torch.clamp_max(opacities[None] * torch.exp(-power), 0.999)
        used = keep[None] & (power >= 0) & (alpha >= 1.0 / 255.0)

        order = torch.sort(z, stable=True).indices
        trans = torch.ones(len(pixels), dtype=f64)
        stopped = torch.zeros(len(pixels), dtype=torch.bool)
        out = torch.zeros(len(pixels), dim, dtype=f64)
        out_depth = torch.zeros(len(pixels), dtype=f64)
        for g in order.tolist():
            if not bool(keep[g]):
                continue
            a = torch.where(used[:, g], alpha[:, g], torch.zeros_like(alpha[:, g]))
            after = trans * (1 - a)
            stopped = stopped | (used[:, g] & (after <= 1e-4))
            a = torch.where(stopped, torch.zeros_like(a), a)
            out = out + (a * trans)[:, None] * features[c, g][None]
            out_depth = out_depth + a * trans * z[g]
            trans = trans * (1 - a)
        out = out + trans[:, None] * backgrounds[c][None]
        alpha_img = 1 - trans
        images.append(out.reshape(height, width, dim))
        depths.append((out_depth / alpha_img.clamp_min(1e-10)).reshape(height, width, 1))
        alphas.append(alpha_img.reshape(height, width, 1))
    return torch.stack(images), torch.stack(depths), torch.stack(alphas)
