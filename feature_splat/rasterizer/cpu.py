"""The ``cpu`` backend: numba-compiled tile compositing with a hand-written backward pass.

Projection stays in PyTorch (:mod:`.projection`, cheap and differentiated by autograd); the costly
per-pixel compositing and its gradient are :mod:`._cpu_kernels`, wrapped here as an autograd
function. Computation is float32 with float64 per-pixel accumulators; results and gradients are
bit-identical from run to run and for any thread count.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from feature_splat.rasterizer import _cpu_kernels as kernels
from feature_splat.rasterizer.projection import Projected, tile_grid


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _configure_threads() -> int:
    """Use as many numba threads as torch does; returns the scratch row count the kernels need."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return numba.config.NUMBA_NUM_THREADS  # thread ids are below this whatever the setting


class _Composite(torch.autograd.Function):
    """Alpha compositing of projected Gaussians; differentiable w.r.t. all float inputs."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, depths, backgrounds, radii, size):
        width, height, tile_size = size
        tiles_x, tiles_y = tile_grid(width, height, tile_size)
        n_cameras = means2d.shape[0]
        dim = features.shape[-1]
        means2d_np, conics_np, opacities_np, features_np, depths_np, backgrounds_np = (
            _numpy(t) for t in (means2d, conics, opacities, features, depths, backgrounds)
        )
        radii_np = radii.to(torch.int32).contiguous().numpy()
        depth_order = torch.sort(depths.detach(), dim=1, stable=True).indices.numpy()
        n_threads = _configure_threads()
        bins = kernels.bin_gaussians(means2d_np, radii_np, depth_order, tile_size, tiles_x, tiles_y)
        # The kernels take the Gaussians, the tile lists and the image grid as three tuples.
        gaussians = (
            means2d_np,
            conics_np,
            opacities_np,
            features_np,
            depths_np,
            radii_np,
            backgrounds_np,
        )
        grid = (width, height, tile_size, tiles_x)
        out_features = np.empty((n_cameras, height, width, dim), np.float32)
        out_depth = np.empty((n_cameras, height, width), np.float32)
        transmittance = np.empty((n_cameras, height, width), np.float64)
        last_ids = np.empty((n_cameras, height, width), np.int64)
        kernels.render_forward(
            gaussians, bins, grid, n_threads, out_features, out_depth, transmittance, last_ids
        )
        ctx.gaussians, ctx.bins, ctx.grid = gaussians, bins, grid
        ctx.transmittance, ctx.last_ids = transmittance, last_ids
        ctx.dtypes = [t.dtype for t in (means2d, conics, opacities, features, depths, backgrounds)]
        alpha = torch.from_numpy((1.0 - transmittance).astype(np.float32))
        return (
            torch.from_numpy(out_features),
            torch.from_numpy(out_depth)[..., None],
            alpha[..., None],
        )

    @staticmethod
    def backward(ctx, grad_features, grad_depth, grad_alpha):
        features, depths = ctx.gaussians[3], ctx.gaussians[4]
        offsets, ids = ctx.bins
        n_cameras, n = depths.shape
        dim = features.shape[-1]
        n_threads = _configure_threads()
        isect_grad_features = np.empty((len(ids), dim), np.float32)
        isect_grad_geometry = np.empty((len(ids), 7), np.float32)
        tile_grad_background = np.zeros((len(offsets) - 1, dim), np.float64)
        kernels.render_backward(
            ctx.gaussians,
            ctx.bins,
            ctx.grid,
            n_threads,
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
        return (*grads, None, None)


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
        (width, height, tile_size),
    )
    return tuple(t.to(features.dtype) for t in outputs)
