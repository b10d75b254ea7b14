"""The ``cpu`` backend: numba-compiled tile compositing with a hand-written backward pass.

Projection is :mod:`.cpu_projection` (numba, analytic backward); binning, the per-pixel
compositing and its gradient are :mod:`._cpu_kernels`, wrapped here as an autograd function.
Computation is float32 with float64 per-pixel accumulators; results and gradients are
bit-identical from run to run and for any thread count.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from torch import Tensor

from feature_splat.rasterizer import _cpu_kernels as kernels
from feature_splat.rasterizer.projection import Projected, tile_grid


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _configure_threads() -> int:
    """Use as many numba threads as torch does; returns that count.

    numba's OpenMP threading layer shares libgomp with torch, and starting it resets the thread
    count torch reads to every core, so torch's own setting is put back after.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return numba.get_num_threads()


class _Scratch(threading.local):
    """Per-thread buffers reused from call to call (fresh memory costs a first touch per page).

    Only for arrays that live within one kernel call sequence; anything handed to torch or kept
    for the backward pass is allocated fresh.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(size + size // 4, dtype)  # room to grow as densification does
            self.buffers[name] = buffer
        return buffer[:size].reshape(shape)


_scratch = _Scratch()


def tile_bins(
    proj: Projected, width: int, height: int, tile_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussians touching each tile, front to back, as the compositing kernels read them:
    ``offsets`` [C * n_tiles + 1] int64 and ``ids`` [M] int32 (tile t of camera c, t = c *
    n_tiles + ty * tiles_x + tx, lists ``ids[offsets[t]:offsets[t + 1]]``)."""
    tiles_x, tiles_y = tile_grid(width, height, tile_size)
    depth_order = torch.sort(proj.depths.detach(), dim=1, stable=True).indices.numpy()
    return kernels.bin_gaussians(
        _numpy(proj.means2d), proj.radii.to(torch.int32).contiguous().numpy(), depth_order,
        tile_size, tiles_x, tiles_y, _configure_threads(),
    )  # fmt: skip


class _Composite(torch.autograd.Function):
    """Alpha compositing of projected Gaussians; differentiable w.r.t. all float inputs."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, depths, backgrounds, radii, bins, size):
        width, height, tile_size = size
        tiles_x, _ = tile_grid(width, height, tile_size)
        n_cameras = means2d.shape[0]
        dim = features.shape[-1]
        n_workers = _configure_threads()
        # The kernels take the Gaussians, the tile lists and the image grid as three tuples.
        gaussians = (
            *(_numpy(t) for t in (means2d, conics, opacities, features, depths)),
            radii.to(torch.int32).contiguous().numpy(),
            _numpy(backgrounds),
        )
        grid = (width, height, tile_size, tiles_x)
        out_features = torch.empty(n_cameras, height, width, dim)
        out_depth = torch.empty(n_cameras, height, width, 1)
        transmittance = np.empty((n_cameras, height, width), np.float64)
        last_ids = np.empty((n_cameras, height, width), np.int64)
        kernels.render_forward(
            gaussians, bins, grid, n_workers, out_features.numpy(), out_depth.numpy()[..., 0],
            transmittance, last_ids,
        )  # fmt: skip
        ctx.gaussians, ctx.bins, ctx.grid = gaussians, bins, grid
        ctx.transmittance, ctx.last_ids = transmittance, last_ids
        ctx.dtypes = [t.dtype for t in (means2d, conics, opacities, features, depths, backgrounds)]
        alpha = torch.from_numpy((1.0 - transmittance).astype(np.float32))
        return out_features, out_depth, alpha[..., None]

    @staticmethod
    def backward(ctx, grad_features, grad_depth, grad_alpha):
        features, depths = ctx.gaussians[3], ctx.gaussians[4]
        offsets, ids = ctx.bins
        n_cameras, n = depths.shape
        dim = features.shape[-1]
        n_workers = _configure_threads()
        isect_grad_features = _scratch.array("isect_grad_features", (len(ids), dim), np.float32)
        isect_grad_geometry = _scratch.array("isect_grad_geometry", (len(ids), 7), np.float32)
        tile_grad_background = np.zeros((len(offsets) - 1, dim), np.float64)
        kernels.render_backward(
            ctx.gaussians,
            ctx.bins,
            ctx.grid,
            n_workers,
            ctx.transmittance,
            ctx.last_ids,
            _numpy(grad_features),
            _numpy(grad_depth[..., 0]),
            _numpy(grad_alpha[..., 0]),
            isect_grad_features,
            isect_grad_geometry,
            tile_grad_background,
        )
        grad_feature_sets = np.zeros(features.shape, np.float32)
        grad_geometry = np.zeros((n_cameras, n, 6), np.float32)
        grad_opacities = np.zeros(n, np.float32)
        kernels.gather_gradients(
            offsets,
            ids,
            n_cameras,
            n,
            isect_grad_features,
            isect_grad_geometry,
            features.shape[0],
            n_workers,
            grad_feature_sets,
            grad_geometry,
            grad_opacities,
        )
        grad_background = tile_grad_background.reshape(n_cameras, -1, dim).sum(axis=1)
        grads = [
            grad_geometry[..., 0:2],
            grad_geometry[..., 2:5],
            grad_opacities,
            grad_feature_sets,
            grad_geometry[..., 5],
            grad_background,
        ]
        grads = [
            torch.from_numpy(np.ascontiguousarray(g)).to(dt)
            for g, dt in zip(grads, ctx.dtypes, strict=True)
        ]
        return (*grads, None, None, None)


def rasterize_cpu(
    proj: Projected,
    opacities: Tensor,
    features: Tensor,
    backgrounds: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians; returns features [C,H,W,D], raw depth [C,H,W,1], alpha [C,H,W,1]."""
    outputs = _Composite.apply(
        proj.means2d,
        proj.conics,
        opacities,
        features,
        proj.depths,
        backgrounds,
        proj.radii,
        tile_bins(proj, width, height, tile_size),
        (width, height, tile_size),
    )
    return tuple(t.to(features.dtype) for t in outputs)
