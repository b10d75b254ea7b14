"""``accumulate()``: per-Gaussian sums of per-pixel values, weighted by each Gaussian's rendering
weight ``w = T * alpha`` (the adjoint of compositing). Feature lifting is built on it.

A rendered pixel is ``sum_g w_gp f_g + T_p bg``: linear in the Gaussians' features. For a map of
values ``G`` on a teacher's grid, ``accumulate`` returns for every Gaussian g

    sums[g]    = sum_views sum_pixels s_p w_gp G[cell(p)]
    weights[g] = sum_views sum_pixels s_p w_gp

where ``cell(p)`` is the grid cell pixel p falls in and ``s_p = 1 / (pixels in that cell)``, so each
cell counts once, as in training, where rendered features are averaged over the cells
(:func:`~feature_splat.teachers.to_teacher_cells`) before the loss. ``sums / weights`` is the
rendering-weight average of the map seen through each Gaussian.

Backends:
- ``cpu``: numba kernels (:func:`._cpu_kernels.accumulate_tiles`): the forward compositing with the
  features replaced by the accumulation, per camera and in batches of tiles, so memory stays bounded
  by ``memory_budget`` whatever N and M; deterministic for any thread count.
- ``gsplat`` (CUDA) and ``reference``: the same sums as the gradient of ``<render(f), G>`` with
  respect to f, computed by the backend's own backward rasterization (gsplat's fused CUDA kernel),
  in channel chunks. Compositing is linear in f, so this gradient is the accumulation exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from feature_splat.errors import InputShapeError
from feature_splat.rasterizer import _cpu_kernels as kernels
from feature_splat.rasterizer.api import (
    _check_camera_args,
    _check_gaussian_shapes,
    _choose_backend,
    check_values,
    rasterize,
)
from feature_splat.rasterizer.backends import Backend
from feature_splat.rasterizer.cpu import _configure_threads, tile_bins
from feature_splat.rasterizer.cpu_projection import project_cpu
from feature_splat.rasterizer.projection import tile_grid

_ADJOINT_CHUNK = 64  # channels per backward pass on the gradient backends


@dataclass
class Accumulated:
    """What :func:`accumulate` returns for N Gaussians and M-channel values."""

    sums: Tensor  # [N, M] float32: sum of s_p w_gp G[cell(p)]
    weights: Tensor  # [N] float64: sum of s_p w_gp (0 for a Gaussian no view sees)

    def averages(self, in_place: bool = False) -> Tensor:
        """The rendering-weight averages ``sums / weights`` [N, M] (0 where the weight is 0);
        ``in_place`` divides ``sums`` itself (no second [N, M] buffer)."""
        averages = self.sums if in_place else self.sums.clone()
        averages.div_(self.weights.clamp_min(1e-30).to(averages.dtype)[:, None])
        averages[self.weights == 0] = 0.0
        return averages


def pixel_cells(size: int, n_cells: int, stride: int | None) -> tuple[Tensor, Tensor]:
    """Along one image axis of ``size`` pixels: the cell of each pixel [size] (``p // stride``
    on a stride grid, else the nearest of ``n_cells`` equal cells) and ``1 / pixels in that
    cell`` [size] (float64)."""
    index = torch.arange(size)
    cell = index // stride if stride is not None else index * n_cells // size
    counts = torch.bincount(cell, minlength=n_cells).double()
    return cell, 1.0 / counts[cell]


def accumulate(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    values: Tensor,
    *,
    stride: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backend: Backend = "auto",
    memory_budget: int = 64 << 20,
    into: Accumulated | None = None,
) -> Accumulated:
    """Rendering-weighted sums of ``values`` per Gaussian over C cameras (see the module docs).

    Args:
        means, quats, scales, opacities, viewmats, Ks, width, height: as for
            :func:`~feature_splat.rasterizer.rasterize` (activated scales and opacities).
        values: [C, h, w, M] per-view maps on a grid of h x w cells over the image (a teacher's
            features; any float dtype, read one view at a time).
        stride: the grid's cell size in pixels when its cells tile the image from the top-left
            corner (a teacher's :func:`~feature_splat.teachers.grid_stride`), else None: the image
            is split into h x w equal cells.
        memory_budget: bytes of per-intersection scratch the cpu backend may use at once.
        into: sums to add to (returned), as from an earlier call on other views: summing many
            views needs no [N, M] buffer per view.
    """
    _check_gaussian_shapes(means, quats, scales, opacities)
    n_cameras = _check_camera_args(
        viewmats, Ks, width, height, near_plane, far_plane, eps2d, tile_size
    )
    check_values(means, quats, scales, opacities, viewmats, Ks)
    if not isinstance(values, Tensor) or values.ndim != 4 or values.shape[0] != n_cameras:
        shape = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise InputShapeError(
            f"values: expected [{n_cameras}, h, w, M] (C from viewmats), got {shape}"
        )
    _, h, w, dim = values.shape
    if min(h, w, dim) < 1 or not values.is_floating_point():
        raise InputShapeError(
            f"values: expected a float map with h, w, M >= 1, got {list(values.shape)}"
        )
    if stride is not None and (-(-height // stride), -(-width // stride)) != (h, w):
        stride = None  # not this grid: equal cells, as training resamples
    cell_y, scale_y = pixel_cells(height, h, stride)
    cell_x, scale_x = pixel_cells(width, w, stride)
    backend = _choose_backend(backend, means)
    if into is None:
        into = Accumulated(
            torch.zeros(len(means), dim, device=means.device),
            torch.zeros(len(means), dtype=torch.float64, device=means.device),
        )
    elif (
        into.sums.shape != (len(means), dim)
        or into.weights.shape != (len(means),)
        or (into.sums.dtype, into.weights.dtype) != (torch.float32, torch.float64)
        or into.sums.device != means.device
        or not into.sums.is_contiguous()
    ):
        raise InputShapeError(
            f"into: expected contiguous float32 sums [{len(means)}, {dim}] and float64 weights "
            f"[{len(means)}] on {means.device}, got {into.sums.dtype} {list(into.sums.shape)} and "
            f"{into.weights.dtype} {list(into.weights.shape)}"
        )
    args = (
        (means, quats, scales, opacities), viewmats, Ks, (width, height, tile_size), values,
        (cell_y, cell_x, scale_y, scale_x), (near_plane, far_plane, eps2d),
    )  # fmt: skip
    if backend == "cpu":
        with torch.no_grad():
            return _accumulate_cpu(*args, into, memory_budget)
    return _accumulate_adjoint(*args, into, backend)


def _accumulate_cpu(
    gaussians: tuple[Tensor, Tensor, Tensor, Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    size: tuple[int, int, int],
    values: Tensor,
    cells: tuple[Tensor, Tensor, Tensor, Tensor],
    planes: tuple[float, float, float],
    into: Accumulated,
    memory_budget: int,
) -> Accumulated:
    means, quats, scales, opacities = gaussians
    width, height, tile_size = size
    near_plane, far_plane, eps2d = planes
    tiles_x, _ = tile_grid(width, height, tile_size)
    dim = values.shape[-1]
    sums, weights = into.sums.numpy(), into.weights.numpy()  # added to in place
    cells_np = tuple(t.contiguous().numpy() for t in cells)
    max_tile_cells = _max_tile_cells(cells[0], tile_size) * _max_tile_cells(cells[1], tile_size)
    opacities_np = opacities.detach().float().contiguous().numpy()
    max_rows = max(1, memory_budget // (4 * dim))
    row_sums = np.empty((0, dim), np.float32)  # per-intersection scratch, grown when needed
    row_weights = np.empty(0, np.float64)
    n_threads = _configure_threads()
    for c in range(len(viewmats)):
        proj = project_cpu(
            means, quats, scales, opacities, viewmats[c : c + 1], Ks[c : c + 1], width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        )  # fmt: skip
        means2d, conics = (t.float().contiguous().numpy() for t in (proj.means2d, proj.conics))
        radii = proj.radii.to(torch.int32).contiguous().numpy()
        offsets, ids = tile_bins(proj, width, height, tile_size)
        target = values[c].float().contiguous().numpy()
        n_jobs, job = len(offsets) - 1, 0
        while job < n_jobs:  # batches of whole tiles holding at most max_rows intersections
            end = int(np.searchsorted(offsets, offsets[job] + max_rows, side="right")) - 1
            end = min(max(end, job + 1), n_jobs)
            rows = int(offsets[end] - offsets[job])
            if rows > len(row_sums):
                row_sums = np.empty((rows, dim), np.float32)
                row_weights = np.empty(rows, np.float64)
            kernels.accumulate_tiles(
                (means2d, conics, opacities_np, radii), (offsets, ids),
                (width, height, tile_size, tiles_x), (job, end), n_threads, cells_np,
                max_tile_cells, target, row_sums, row_weights,
            )  # fmt: skip
            kernels.scatter_rows(
                ids[offsets[job] : offsets[end]], row_sums[:rows], row_weights[:rows], n_threads,
                sums, weights,
            )  # fmt: skip
            job = end
    return into


def _max_tile_cells(cell: Tensor, tile_size: int) -> int:
    """The most cells any tile spans along one axis, given each pixel's cell [size]."""
    starts = torch.arange(0, len(cell), tile_size)
    ends = (starts + tile_size).clamp_max(len(cell)) - 1
    return int((cell[ends] - cell[starts]).max()) + 1


def _accumulate_adjoint(
    gaussians: tuple[Tensor, Tensor, Tensor, Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    size: tuple[int, int, int],
    values: Tensor,
    cells: tuple[Tensor, Tensor, Tensor, Tensor],
    planes: tuple[float, float, float],
    into: Accumulated,
    backend: str,
) -> Accumulated:
    """The sums as gradients of ``<render(f), G>`` w.r.t. zero features f, by ``backend``."""
    means, quats, scales, opacities = (t.detach() for t in gaussians)
    width, height, tile_size = size
    near_plane, far_plane, eps2d = planes
    device = means.device
    cell_y, cell_x, scale_y, scale_x = (t.to(device) for t in cells)
    pixel_scale = (scale_y[:, None] * scale_x[None, :]).float()[..., None]  # [H, W, 1]
    dim = values.shape[-1]
    sums, weights = into.sums, into.weights
    for c in range(len(viewmats)):
        per_pixel = values[c].to(device).float()[cell_y][:, cell_x] * pixel_scale  # [H, W, M]
        for start in range(0, dim, _ADJOINT_CHUNK):
            chunk = torch.cat([per_pixel[..., start : start + _ADJOINT_CHUNK], pixel_scale], -1)
            probe = torch.zeros(len(means), chunk.shape[-1], device=device, requires_grad=True)
            with torch.enable_grad():
                out = rasterize(
                    means, quats, scales, opacities, probe, viewmats[c : c + 1], Ks[c : c + 1],
                    width, height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
                    tile_size=tile_size, backend=backend, validate=False,
                )  # fmt: skip
                (grad,) = torch.autograd.grad(out.features[0], probe, grad_outputs=chunk)
            sums[:, start : start + _ADJOINT_CHUNK] += grad[:, :-1]
            if start == 0:
                weights += grad[:, -1].double()
    return into
