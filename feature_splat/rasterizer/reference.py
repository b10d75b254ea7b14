"""The ``reference`` backend: tile rasterization in plain PyTorch, differentiated by autograd.

Written for clarity; it is the readable statement of what every backend computes:

1. project the Gaussians (:mod:`.projection`);
2. list, for every 16x16 tile, the Gaussians whose bounding box touches it, front to back;
3. per pixel, composite front to back: ``alpha = min(0.999, o exp(-sigma))`` with
   ``sigma = 0.5 d^T conic d``, skip ``alpha < 1/255``, stop before transmittance falls to 1e-4,
   ``out = sum_i alpha_i T_i f_i + T_final * background``.

Tiles are processed in batches (padded to the longest list in the batch), never a Python loop per
pixel or per Gaussian.
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.rasterizer.projection import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    MIN_TRANSMITTANCE,
    Projected,
    tile_grid,
)

# Upper bound on pixels x Gaussians evaluated per batch of tiles (bounds peak memory).
_BATCH_ELEMENTS = 1 << 22


def tile_intersections(
    proj: Projected, width: int, height: int, tile_size: int
) -> tuple[Tensor, Tensor]:
    """(tile, Gaussian) pairs sorted by tile, then depth (front to back).

    Returns ``tile_ids`` [M] (global: camera * n_tiles + tile) and ``gaussian_ids`` [M].
    """
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    n_cameras, n = proj.depths.shape
    with torch.no_grad():
        cam, gid = proj.visible.nonzero(as_tuple=True)
        mean = proj.means2d.detach()[cam, gid]
        radius = proj.radii[cam, gid].to(mean.dtype)
        lo = torch.floor((mean - radius) / tile_size)
        hi = torch.ceil((mean + radius) / tile_size)
        limit = torch.tensor([tiles_x, tiles_y], dtype=mean.dtype, device=mean.device)
        lo = torch.minimum(lo.clamp_min(0), limit).long()
        hi = torch.minimum(hi.clamp_min(0), limit).long()
        span = hi - lo
        counts = span[:, 0] * span[:, 1]
        owner = torch.repeat_interleave(torch.arange(len(cam), device=cam.device), counts)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(owner), device=cam.device) - first[owner]
        tx = lo[owner, 0] + local % span[owner, 0]
        ty = lo[owner, 1] + local // span[owner, 0]
        tile_ids = cam[owner] * (tiles_x * tiles_y) + ty * tiles_x + tx
        # Depth rank per camera: a stable sort, so equal depths keep index order (as gsplat does).
        depth_rank = torch.empty_like(proj.depths, dtype=torch.long)
        order = torch.sort(proj.depths.detach(), dim=1, stable=True).indices
        depth_rank.scatter_(1, order, torch.arange(n, device=order.device).expand(n_cameras, n))
        keys = tile_ids * n + depth_rank[cam[owner], gid[owner]]
        sort = torch.argsort(keys)
    return tile_ids[sort], gid[owner][sort]


def rasterize_reference(
    proj: Projected,
    opacities: Tensor,
    features: Tensor,
    backgrounds: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians; returns features [C,H,W,D], raw depth [C,H,W,1], alpha [C,H,W,1].

    ``features`` is [1 or C, N, D]; ``backgrounds`` [C, D]. Raw depth is sum_i w_i z_i (not divided
    by alpha).
    """
    n_cameras = proj.depths.shape[0]
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    n_tiles = n_cameras * tiles_x * tiles_y
    dim = features.shape[-1]
    device, dtype = proj.means2d.device, proj.means2d.dtype
    if proj.means2d.shape[1] == 0:  # no Gaussians: every pixel is background
        zeros = torch.zeros(n_cameras, height, width, 1, device=device, dtype=dtype)
        return backgrounds[:, None, None, :].expand(-1, height, width, -1), zeros, zeros
    tile_ids, gaussian_ids = tile_intersections(proj, width, height, tile_size)
    counts = torch.bincount(tile_ids, minlength=n_tiles)
    starts = torch.cumsum(counts, 0) - counts

    # Pixel centres of one tile, relative to the tile's corner.
    local = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    local_y, local_x = torch.meshgrid(local, local, indexing="ij")
    local_xy = torch.stack([local_x.reshape(-1), local_y.reshape(-1)], dim=-1)  # [P, 2]

    outputs = []
    tile = 0
    while tile < n_tiles:
        batch = 1
        longest = max(int(counts[tile]), 1)
        while tile + batch < n_tiles:
            longest_next = max(longest, int(counts[tile + batch]))
            if (batch + 1) * longest_next * tile_size * tile_size > _BATCH_ELEMENTS:
                break
            batch, longest = batch + 1, longest_next
        ids = torch.arange(tile, tile + batch, device=device)
        outputs.append(
            _composite_tiles(
                ids,
                starts[ids],
                counts[ids],
                longest,
                gaussian_ids,
                proj,
                opacities,
                features,
                backgrounds,
                local_xy,
                tiles_x,
                tiles_y,
                tile_size,
            )
        )
        tile += batch
    out = torch.cat(outputs)  # [n_tiles, P, D + 2]
    out = out.reshape(n_cameras, tiles_y, tiles_x, tile_size, tile_size, dim + 2)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(
        n_cameras, tiles_y * tile_size, tiles_x * tile_size, dim + 2
    )[:, :height, :width]
    return out[..., :dim], out[..., dim : dim + 1], out[..., dim + 1 :]


def _composite_tiles(
    ids: Tensor,
    starts: Tensor,
    counts: Tensor,
    longest: int,
    gaussian_ids: Tensor,
    proj: Projected,
    opacities: Tensor,
    features: Tensor,
    backgrounds: Tensor,
    local_xy: Tensor,
    tiles_x: int,
    tiles_y: int,
    tile_size: int,
) -> Tensor:
    """Composite a batch of B tiles; returns [B, P, D + 2] (features, raw depth, alpha)."""
    cam = ids // (tiles_x * tiles_y)
    within = ids % (tiles_x * tiles_y)
    corner = torch.stack([within % tiles_x, within // tiles_x], dim=-1).to(local_xy) * tile_size
    pixels = corner[:, None, :] + local_xy[None]  # [B, P, 2]

    slot = torch.arange(longest, device=ids.device)
    present = slot[None, :] < counts[:, None]  # [B, L]
    flat = (starts[:, None] + slot[None, :]).clamp_max(max(len(gaussian_ids) - 1, 0))
    gid = torch.where(present, gaussian_ids[flat] if len(gaussian_ids) else flat, 0)
    cam_l = cam[:, None].expand_as(gid)

    mean = proj.means2d[cam_l, gid]  # [B, L, 2]
    conic = proj.conics[cam_l, gid]  # [B, L, 3]
    delta = mean[:, None, :, :] - pixels[:, :, None, :]  # [B, P, L, 2]
    dx, dy = delta[..., 0], delta[..., 1]
    a, b, c = (conic[:, None, :, k] for k in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[gid][:, None, :] * torch.exp(-sigma), MAX_ALPHA)
    used = present[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))
    # A pixel stops before the Gaussian that would take its transmittance to 1e-4 or below.
    alive = torch.cumprod(1.0 - alpha, dim=-1) > MIN_TRANSMITTANCE
    alpha = alpha * alive
    after = torch.cumprod(1.0 - alpha, dim=-1)  # transmittance after each Gaussian
    before = torch.cat([torch.ones_like(after[..., :1]), after[..., :-1]], dim=-1)
    weights = alpha * before  # [B, P, L]

    feats = features[cam_l if features.shape[0] > 1 else torch.zeros_like(cam_l), gid]  # [B, L, D]
    rendered = weights @ feats + after[..., -1:] * backgrounds[cam][:, None, :]
    depth = (weights * proj.depths[cam_l, gid][:, None, :]).sum(-1, keepdim=True)
    alpha_out = 1.0 - after[..., -1:]
    return torch.cat([rendered, depth, alpha_out], dim=-1)
