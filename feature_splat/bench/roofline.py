"""``feature-splat bench roofline``: where the ``cpu`` backend's compositing kernels stand against
this machine's limits.

For the scene of :func:`~feature_splat.bench.scenes.raster_scene` it measures

- the work: pixel-Gaussian pairs that ``render_forward`` and ``render_backward`` visit and blend,
  counted by numba kernels that walk exactly their loops (same bins, helpers and early exits);
- the arithmetic: floating-point operations per counted event, read off the kernels' source
  (:data:`FLOP_TABLE`), and the bytes each must move from memory (:data:`BYTE_TABLE`);
- the machine: sustained float32 / float64 FMA throughput, ``exp`` throughput and memory
  bandwidth, measured by small numba loops on 1 and on every configured thread count;
- the kernels alone (no projection, binning or gradient gather), timed on prepared inputs;

and reports pairs/s, GFLOP/s, exp/s and GB/s as fractions of those limits, with the nearest bound.
Writes ``results.json`` and, where matplotlib is installed, ``roofline.png``. Never run as a test.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from feature_splat.bench.config import RooflineBenchConfig
from feature_splat.bench.scenes import raster_scene
from feature_splat.bench.timing import median_seconds
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.rasterizer import _cpu_kernels as kernels
from feature_splat.rasterizer import cpu
from feature_splat.rasterizer._cpu_kernels import (
    _FASTMATH,
    LANES,
    _row_visibility,
    _tile_gaussian,
    _tile_pixels,
)
from feature_splat.rasterizer.projection import (
    MAX_ALPHA,
    MIN_TRANSMITTANCE,
    Projected,
    project,
    tile_grid,
)

TILE_SIZE = 16  # rasterize()'s default
BANDWIDTH_ARRAY_MB = 256  # each of the triad's three arrays
BOUND_FRACTION = 0.5  # a limit reached to at least this fraction is "the bound"


# --------------------------------------------------------------------------------------------
# Arithmetic per counted event, read off render_forward / render_backward.
#
# A flop is one add, sub, mul, div, sqrt, min/max or comparison of floats; a fused a * b + c
# (fastmath "contract") is 2, so contraction does not change the count. exp and log count as 1
# each (their count is also reported apart). Rounding (ceil/floor) counts 1; int <-> float
# conversions, negations and integer work count 0. Most of this arithmetic is float64: the pixel
# offsets use the Python float 0.5 (so dx, dy, sigma are float64) and the accumulators are
# float64; the exp is float32. ``hoistable``: flops of the term that do not depend on the pixel's
# x, which LLVM may hoist out of the row loop (counted in ``flops`` all the same).
# --------------------------------------------------------------------------------------------


class Term(NamedTuple):
    event: str  # the counter it is multiplied by
    flops: int  # constant part
    per_channel: int = 0  # plus this times D
    exp: int = 0
    log: int = 0
    hoistable: int = 0
    what: str = ""


FLOP_TABLE: dict[str, tuple[Term, ...]] = {
    "forward": (
        # _pixel_box: 4 x (m -/+ r - 0.5) = 8 adds + 4 ceil/floor.
        Term("gaussians", 12, what="pixel box (8 add, 4 round)"),
        # dy = my - (y + 0.5): 2; _row_visibility's a / 2, b dy, c dy dy / 2: 5.
        Term("rows", 7, what="dy (2), the row's sigma coefficients (5)"),
        # _visibility_at, per computed pixel (lane): dx = mx - (x + 0.5): 2; sigma = (a/2 dx + b
        # dy) dx + c dy^2 / 2: 2 FMAs = 4; clamp to [0, 8]: 2; exp: 1; sigma >= 0: 1; o * vis: 1;
        # o vis >= 1/255: 1.
        Term("lanes", 12, exp=1, what="dx, sigma (2 FMA), clamp (2), exp, 2 compares, o*vis"),
        # each pixel of the box: vis == 0: 1.
        Term("box_pixels", 1, what="vis == 0 test"),
        # vis != 0 and the pixel not done: alpha = min(0.999, o vis): 2; next_t = t (1 - alpha):
        # 2; next_t <= 1e-4: 1.
        Term("live", 5, what="alpha (2), next_t (2), stop test (1)"),
        # w = alpha t: 1; acc[d] += w f[d]: one FMA (2) per channel; acc_depth += w z: 2.
        Term("blended", 3, 2, what="w (1), acc FMA (2 per channel), depth FMA (2)"),
        # tile epilogue: out = acc[d] + t bg[d]: one FMA per channel per pixel.
        Term("pixels", 0, 2, what="background FMA per channel"),
    ),
    "backward": (
        # per pixel, tile prologue: tile_grad_background[d] += t_final * grad[d] and the dot
        # product bg . grad (the colour behind the last Gaussian): 2 FMAs per channel.
        Term("pixels", 0, 4, what="background gradient and dot product, per channel"),
        # for k from k_max down: the same pixel box, rows and lanes as the forward.
        Term("gaussians", 12, what="pixel box (8 add, 4 round)"),
        Term("rows", 7, what="dy (2), the row's sigma coefficients (5)"),
        Term("lanes", 12, exp=1, what="dx, sigma (2 FMA), clamp (2), exp, 2 compares, o*vis"),
        Term("box_pixels", 1, what="vis == 0 test"),
        # vis != 0 and k <= last_ids: dx 2; alpha = min(0.999, o vis) 2; one_minus 1,
        # t_p = trans / one_minus 1, w 1; per channel: grad_f += w go (2), f_dot += f go (2) = 4;
        # d_alpha = f_dot - behind (1), behind = alpha f_dot + one_minus behind (3): 4;
        # the same for depth: g_z += w gz (2), (z - behind_z) gz (3), behind_z update (3): 8;
        # d_alpha = t_p (d_alpha + later ga): 3; later *= one_minus: 1;
        # o vis <= 0.999: 1 (the product is the one computed for alpha).
        Term("blended", 24, 4, what="dx, alpha, t_p, w, 4 per channel, colour, depth, d_alpha"),
        # alpha not clamped: g_op += vis d_alpha: 2; d_sigma = -alpha d_alpha: 1;
        # g_ca += 0.5 dx dx ds: 4; g_cb += dx dy ds: 3; g_cc += 0.5 dy dy ds: 4 (2 x-invariant);
        # g_mx += (ca dx + cb dy) ds: 5 (cb dy x-invariant); g_my += (cb dx + cc dy) ds: 5 (cc dy).
        Term("unclamped", 24, hoistable=4, what="opacity, conic and mean gradients"),
    ),
}

# Bytes each event must bring from (or send to) memory beyond the tile's scratch, which stays in
# L1/L2: an upper estimate (a Gaussian read by several tiles is counted in each; write-allocate is
# not counted). float32 inputs, float64 transmittance, int64 last_ids.
BYTE_TABLE: dict[str, tuple[Term, ...]] = {
    "forward": (
        # ids 4, means2d 8, conics 12, opacity 4, depth 4, radii 8; features 4 per channel.
        Term("gaussians", 40, 4, what="one Gaussian's parameters and features, per tile"),
        # features 4 D, depth 4, transmittance 8, last_ids 8 written.
        Term("pixels", 20, 4, what="outputs"),
    ),
    "backward": (
        # read as in the forward (40 + 4 D); isect_grad_features 4 D + isect_grad_geometry 28.
        Term("gaussians", 68, 8, what="parameters read, per-intersection gradients written"),
        Term("tail", 28, 4, what="zeroed gradients of intersections behind every pixel's last"),
        # transmittance 8, last_ids 8, grad_features 4 D, grad_depth 4, grad_alpha 4.
        Term("pixels", 24, 4, what="forward state and output gradients read"),
        Term("tiles", 0, 16, what="tile_grad_background read and written (float64)"),
    ),
}


def _sum_table(terms: tuple[Term, ...], counts: dict[str, int], dim: int) -> dict[str, float]:
    """Totals of a table over the counts: flops (or bytes), exp, log, hoistable."""
    total = {"flops": 0.0, "exp": 0.0, "log": 0.0, "hoistable": 0.0}
    for term in terms:
        count = counts[term.event]
        total["flops"] += count * (term.flops + term.per_channel * dim)
        total["exp"] += count * term.exp
        total["log"] += count * term.log
        total["hoistable"] += count * term.hoistable
    return total


# --------------------------------------------------------------------------------------------
# Work counts: the loops of render_forward / render_backward, counting instead of blending.
# --------------------------------------------------------------------------------------------

FORWARD_EVENTS = (
    "gaussians",  # intersections processed (before a tile's early exit)
    "rows",  # _row_visibility calls (rows of a Gaussian's pixel box)
    "lanes",  # pixels whose visibility was computed (exp evaluated)
    "box_pixels",  # pixels of the boxes' rows
    "visited",  # of which alpha >= 1/255
    "live",  # of which the pixel was not done (blended or stopping)
    "stopped",  # transmittance would fall to 1e-4: the pixel is done
    "blended",  # contributed
    "pixels",
    "skipped",  # intersections left when every pixel of the tile was done
    "tiles",
)
BACKWARD_EVENTS = (
    "gaussians",  # intersections from k_max down (each processed)
    "rows",
    "lanes",
    "box_pixels",
    "visited",  # alpha >= 1/255
    "blended",  # of which k <= last_ids of the pixel
    "unclamped",  # o * vis <= 0.999 (geometry gradients)
    "pixels",
    "tail",  # intersections behind every pixel's last (zeroed)
    "tiles",
)


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def count_forward(gaussians, bins, grid, out_transmittance, out_last):
    """Counts of :data:`FORWARD_EVENTS` for ``render_forward``'s loops; also writes the final
    transmittance and ``last_ids`` by the same rule (to check against the kernel's)."""
    means2d, conics, opacities, radii = gaussians[0], gaussians[1], gaussians[2], gaussians[5]
    offsets, ids = bins
    n_cameras = means2d.shape[0]
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    n_jobs = n_cameras * n_tiles_cam
    counts = np.zeros((n_jobs, len(FORWARD_EVENTS)), np.int64)
    for job in prange(n_jobs):
        c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        tw = x_hi - x_lo + 1
        npx = tw * (y_hi - y_lo + 1)
        trans = np.ones(npx)
        done = np.zeros(npx, np.bool_)
        last = np.full(npx, -1, np.int64)
        visibility = np.zeros((1, max(grid[2], LANES)))
        n_done = 0
        n_g = n_rows = n_lanes = n_box = n_vis = n_live = n_stop = n_blend = n_skip = 0
        for k in range(offsets[job], offsets[job + 1]):
            if n_done == npx:
                n_skip = offsets[job + 1] - k
                break
            n_g += 1
            g = ids[k]
            mx, my, ca, cb, cc, opac, x0, x1, y0, y1 = _tile_gaussian(
                g, c, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi
            )
            box = (x0 - x_lo, x1 - x_lo)
            for y in range(y0, y1 + 1):
                n_rows += 1
                n_lanes += _row_visibility(
                    mx, my - (y + 0.5), ca, cb, cc, opac, x_lo, tw, box, visibility, 0
                )
                for x in range(x0, x1 + 1):
                    n_box += 1
                    vis = visibility[0, x - x_lo]
                    if vis == 0.0:
                        continue
                    n_vis += 1
                    p = (y - y_lo) * tw + (x - x_lo)
                    if done[p]:
                        continue
                    n_live += 1
                    next_t = trans[p] * (1.0 - min(MAX_ALPHA, opac * vis))
                    if next_t <= MIN_TRANSMITTANCE:
                        done[p] = True
                        n_done += 1
                        n_stop += 1
                        continue
                    n_blend += 1
                    trans[p] = next_t
                    last[p] = k
        for p in range(npx):
            out_transmittance[c, y_lo + p // tw, x_lo + p % tw] = trans[p]
            out_last[c, y_lo + p // tw, x_lo + p % tw] = last[p]
        values = (
            n_g, n_rows, n_lanes, n_box, n_vis, n_live, n_stop, n_blend, npx, n_skip, 1
        )  # fmt: skip
        for i in range(len(values)):
            counts[job, i] = values[i]
    return counts.sum(axis=0)


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def count_backward(gaussians, bins, grid, last_ids):
    """Counts of :data:`BACKWARD_EVENTS` for ``render_backward``'s loops, given the forward's
    ``last_ids``."""
    means2d, conics, opacities, radii = gaussians[0], gaussians[1], gaussians[2], gaussians[5]
    offsets, ids = bins
    n_cameras = means2d.shape[0]
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    n_jobs = n_cameras * n_tiles_cam
    counts = np.zeros((n_jobs, len(BACKWARD_EVENTS)), np.int64)
    for job in prange(n_jobs):
        c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        tw = x_hi - x_lo + 1
        npx = tw * (y_hi - y_lo + 1)
        visibility = np.zeros((1, max(grid[2], LANES)))
        start = offsets[job]
        k_max = start - 1
        for p in range(npx):
            k_max = max(k_max, last_ids[c, y_lo + p // tw, x_lo + p % tw])
        n_g = n_rows = n_lanes = n_box = n_vis = n_blend = n_free = 0
        for k in range(k_max, start - 1, -1):
            n_g += 1
            g = ids[k]
            mx, my, ca, cb, cc, opac, x0, x1, y0, y1 = _tile_gaussian(
                g, c, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi
            )
            box = (x0 - x_lo, x1 - x_lo)
            for y in range(y0, y1 + 1):
                n_rows += 1
                n_lanes += _row_visibility(
                    mx, my - (y + 0.5), ca, cb, cc, opac, x_lo, tw, box, visibility, 0
                )
                for x in range(x0, x1 + 1):
                    n_box += 1
                    vis = visibility[0, x - x_lo]
                    if vis == 0.0:
                        continue
                    n_vis += 1
                    if k > last_ids[c, y, x]:
                        continue
                    n_blend += 1
                    if opac * vis <= MAX_ALPHA:
                        n_free += 1
        n_tail = offsets[job + 1] - (k_max + 1)
        values = (n_g, n_rows, n_lanes, n_box, n_vis, n_blend, n_free, npx, n_tail, 1)
        for i in range(len(values)):
            counts[job, i] = values[i]
    return counts.sum(axis=0)


@dataclass
class KernelInputs:
    """What ``render_forward`` / ``render_backward`` read, prepared as ``cpu._Composite`` does."""

    gaussians: tuple
    bins: tuple[np.ndarray, np.ndarray]
    grid: tuple[int, int, int, int]
    n_cameras: int
    width: int
    height: int
    dim: int


def kernel_inputs(
    proj: Projected,
    opacities: torch.Tensor,
    features: torch.Tensor,
    backgrounds: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> KernelInputs:
    """The kernels' inputs for projected Gaussians; ``features`` [1 or C, N, D], ``backgrounds``
    [C, D]."""
    tiles_x, _ = tile_grid(width, height, tile_size)
    bins = cpu.tile_bins(proj, width, height, tile_size)
    gaussians = (
        *(cpu._numpy(t) for t in (proj.means2d, proj.conics, opacities, features, proj.depths)),
        proj.radii.to(torch.int32).contiguous().numpy(),
        cpu._numpy(backgrounds),
    )
    return KernelInputs(
        gaussians,
        bins,
        (width, height, tile_size, tiles_x),
        proj.means2d.shape[0],
        width,
        height,
        features.shape[-1],
    )


def scene_inputs(n: int, dim: int, size: int) -> KernelInputs:
    """The kernels' inputs for ``raster_scene(n, dim, size)``, projected as ``rasterize`` does."""
    means, quats, scales, opacities, features, viewmats, Ks, width, height = raster_scene(
        n, dim, size
    ).args()
    with torch.no_grad():
        proj = project(
            means, quats, scales, opacities, viewmats, Ks, width, height,
            near_plane=0.01, far_plane=1e10, eps2d=0.3,
        )  # fmt: skip
    backgrounds = torch.zeros(viewmats.shape[0], dim)
    return kernel_inputs(proj, opacities, features[None], backgrounds, width, height)


class Forward(NamedTuple):
    features: np.ndarray
    depth: np.ndarray
    transmittance: np.ndarray
    last_ids: np.ndarray


def run_forward(inputs: KernelInputs, n_workers: int, out: Forward | None = None) -> Forward:
    """``kernels.render_forward`` as ``cpu._Composite.forward`` calls it (into ``out`` if given)."""
    c, h, w = inputs.n_cameras, inputs.height, inputs.width
    out = out or Forward(
        np.empty((c, h, w, inputs.dim), np.float32),
        np.empty((c, h, w), np.float32),
        np.empty((c, h, w), np.float64),
        np.empty((c, h, w), np.int64),
    )
    kernels.render_forward(inputs.gaussians, inputs.bins, inputs.grid, n_workers, *out)
    return out


def count_pairs(inputs: KernelInputs, last_ids: np.ndarray | None = None) -> dict[str, Any]:
    """Work counts of both kernels (:data:`FORWARD_EVENTS`, :data:`BACKWARD_EVENTS`).

    The backward counts use ``last_ids`` (the kernel's, from :func:`run_forward`) where given,
    else the counter's own; ``last_ids_mismatch`` is the number of pixels where the two differ.
    """
    shape = (inputs.n_cameras, inputs.height, inputs.width)
    transmittance = np.empty(shape, np.float64)
    own_last = np.empty(shape, np.int64)
    fwd = count_forward(inputs.gaussians, inputs.bins, inputs.grid, transmittance, own_last)
    last = own_last if last_ids is None else last_ids
    bwd = count_backward(inputs.gaussians, inputs.bins, inputs.grid, last)
    return {
        "intersections": len(inputs.bins[1]),
        "pixels": int(np.prod(shape)),
        "forward": dict(zip(FORWARD_EVENTS, map(int, fwd), strict=True)),
        "backward": dict(zip(BACKWARD_EVENTS, map(int, bwd), strict=True)),
        "last_ids_mismatch": int((own_last != last).sum()),
        "transmittance": transmittance,
    }


# --------------------------------------------------------------------------------------------
# Machine limits.
# --------------------------------------------------------------------------------------------

FMA_LENGTH = 512  # elements per thread: 2 KB (float32) / 4 KB (float64), in L1
FMA_CHAIN = 8  # dependent FMAs per element per sweep (one load and store per 8 FMAs)
FMA_SWEEPS = 400_000
EXP_LENGTH = 4096
EXP_SWEEPS = 2000


@njit(cache=True, parallel=True, fastmath=True)
def _fma_loop(acc, sweeps, a, b):
    """``acc[t, i] = acc[t, i] * a + b``, 8 times per element per sweep, one row per thread.
    The vectorised inner loop keeps 8 independent chains per 8 lanes in flight; the sum is
    returned so nothing is dead."""
    for t in prange(acc.shape[0]):
        row = acc[t]
        for _ in range(sweeps):
            for i in range(row.shape[0]):
                x = row[i]
                x = x * a + b
                x = x * a + b
                x = x * a + b
                x = x * a + b
                x = x * a + b
                x = x * a + b
                x = x * a + b
                x = x * a + b
                row[i] = x
    return acc.sum()


@njit(cache=True, parallel=True, fastmath=True)
def _exp_loop(x, out, sweeps):
    """``out[t, i] += exp(x[t, i])`` in float32, one row per thread."""
    for t in prange(x.shape[0]):
        for _ in range(sweeps):
            for i in range(x.shape[1]):
                out[t, i] += math.exp(x[t, i])
    return out.sum()


@njit(cache=True, parallel=True, fastmath=True)
def _triad(a, b, c, s):
    """STREAM triad ``a = b + s c``."""
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


@njit(cache=True, parallel=True, fastmath=True)
def _copy(a, b):
    for i in prange(a.shape[0]):
        a[i] = b[i]


def _set_threads(threads: int) -> int:
    """numba's thread count (capped at the pool's size); returns the count in effect."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()


def fma_gflops(dtype: type, threads: int, repeats: int) -> float:
    """Sustained FMA throughput (GFLOP/s, FMA = 2) of ``threads`` threads in ``dtype``."""
    rows = _set_threads(threads)
    acc = np.ones((rows, FMA_LENGTH), dtype)
    a, b = dtype(0.999999), dtype(1e-6)  # converges to 1: stays finite and normal
    seconds = median_seconds(lambda: _fma_loop(acc, FMA_SWEEPS, a, b), repeats)
    if not np.isfinite(acc).all():
        raise RuntimeError("FMA loop left non-finite values")
    return rows * FMA_LENGTH * FMA_SWEEPS * FMA_CHAIN * 2 / seconds / 1e9


def exp_per_second(threads: int, repeats: int) -> float:
    """float32 ``math.exp`` throughput (exp/s) of ``threads`` threads, arguments in [-5, 0]."""
    rows = _set_threads(threads)
    x = -np.random.default_rng(0).random((rows, EXP_LENGTH), np.float32) * 5
    out = np.zeros_like(x)
    seconds = median_seconds(lambda: _exp_loop(x, out, EXP_SWEEPS), repeats)
    return rows * EXP_LENGTH * EXP_SWEEPS / seconds


def bandwidth_gbs(threads: int, repeats: int, arrays: list[np.ndarray]) -> dict[str, float]:
    """Triad and copy bandwidth (GB/s, STREAM's byte counts: no write-allocate)."""
    _set_threads(threads)
    a, b, c = arrays
    triad = median_seconds(lambda: _triad(a, b, c, 3.0), repeats)
    copy = median_seconds(lambda: _copy(a, b), repeats)
    return {"triad": 3 * a.nbytes / triad / 1e9, "copy": 2 * a.nbytes / copy / 1e9}


def _clock_mhz() -> float | None:
    """The first 'cpu MHz' of /proc/cpuinfo (may be the nominal, not the boost, clock)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except (OSError, ValueError):
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def theoretical_gflops(clock_mhz: float | None, threads: int) -> dict[str, float] | None:
    """2 FMA pipes x vector lanes x 2 flops x clock x cores (AVX-512: 16 / 8 lanes, else 8 / 4)."""
    if clock_mhz is None:
        return None
    lanes32 = 16 if "avx512f" in _cpu_flags() else 8
    per_core = 2 * 2 * clock_mhz / 1e3
    return {
        "float32": per_core * lanes32 * threads,
        "float64": per_core * lanes32 / 2 * threads,
        "float64_scalar": per_core * threads,
    }


# --------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------


@dataclass
class KernelFigures:
    kernel: str
    threads: int
    seconds: float
    pairs_visited_per_s: float
    pairs_blended_per_s: float
    gflops: float
    fraction_of_float32_peak: float
    fraction_of_float64_peak: float
    fraction_of_float64_scalar_peak: float
    exp_per_s: float
    fraction_of_exp_throughput: float
    gbytes_per_s: float
    fraction_of_bandwidth: float
    bound: str = ""
    bound_reason: str = ""
    fractions: dict[str, float] = field(default_factory=dict)


def _bound(fractions: dict[str, float]) -> tuple[str, str]:
    """The nearest limit: the largest fraction if at least :data:`BOUND_FRACTION`, else
    latency/branches (no throughput limit is close)."""
    name, value = max(fractions.items(), key=lambda item: item[1])
    listed = ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())
    if value >= BOUND_FRACTION:
        return name, f"{name} at {value:.0%} of its limit ({listed})"
    return "latency/branches", f"no limit above {BOUND_FRACTION:.0%} ({listed})"


def _backward_args(inputs: KernelInputs, fwd: Forward, n_workers: int) -> tuple:
    """Seeded output gradients and the per-intersection buffers, as ``_Composite.backward``."""
    c, h, w, d = fwd.features.shape
    rng = np.random.default_rng(1)
    m = len(inputs.bins[1])
    return (
        inputs.gaussians,
        inputs.bins,
        inputs.grid,
        n_workers,
        fwd.transmittance,
        fwd.last_ids,
        rng.standard_normal((c, h, w, d), np.float32),
        rng.standard_normal((c, h, w), np.float32),
        rng.standard_normal((c, h, w), np.float32),
        np.empty((m, d), np.float32),
        np.empty((m, 7), np.float32),
        np.zeros((len(inputs.bins[0]) - 1, d), np.float64),
    )


def run_roofline_bench(config: RooflineBenchConfig, console: Console | None = None) -> dict:
    """Measure; prints tables, writes ``results.json`` (and ``roofline.png``) to ``config.out``."""
    console = console or Console()
    out = prepare_output(config.out, "bench-roofline")
    torch_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    threads = list(dict.fromkeys(config.threads))
    steps = 2 + 5 * len(threads)
    machine: dict[str, dict[str, Any]] = {}
    timings: list[KernelFigures] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench roofline", total=steps)
        progress.update(task, description=f"scene N={config.n} D={config.dim} {config.size}px")
        inputs = scene_inputs(config.n, config.dim, config.size)
        torch.set_num_threads(max(threads))
        fwd = run_forward(inputs, cpu._configure_threads())
        progress.advance(task)
        progress.update(task, description="counting pairs")
        counts = count_pairs(inputs, fwd.last_ids)
        transmittance_diff = float(np.abs(counts.pop("transmittance") - fwd.transmittance).max())
        work = {
            name: _sum_table(FLOP_TABLE[name], counts[name], config.dim)
            for name in ("forward", "backward")
        }
        for name in work:
            work[name]["bytes"] = _sum_table(BYTE_TABLE[name], counts[name], config.dim)["flops"]
        progress.advance(task)

        arrays = None
        for t in threads:
            progress.update(task, description=f"float32 FMA peak, {t} thread(s)")
            limits: dict[str, Any] = {"float32_gflops": fma_gflops(np.float32, t, config.repeats)}
            progress.advance(task)
            progress.update(task, description=f"float64 FMA peak, {t} thread(s)")
            limits["float64_gflops"] = fma_gflops(np.float64, t, config.repeats)
            limits["exp_per_s"] = exp_per_second(t, config.repeats)
            progress.advance(task)
            progress.update(task, description=f"memory bandwidth, {t} thread(s)")
            if arrays is None:
                size = BANDWIDTH_ARRAY_MB * 2**20 // 8
                arrays = [np.empty(size) for _ in range(3)]
                for array in arrays:
                    _copy(array, np.full(size, 1.0))  # first touch by the worker threads
            limits["bandwidth_gbs"] = bandwidth_gbs(t, config.repeats, arrays)
            limits["effective_threads"] = numba.get_num_threads()
            limits["theoretical_gflops"] = theoretical_gflops(
                _clock_mhz(), limits["effective_threads"]
            )
            machine[str(t)] = limits
            progress.advance(task)

            torch.set_num_threads(t)
            n_workers = cpu._configure_threads()
            for name in ("forward", "backward"):
                progress.update(task, description=f"render_{name}, {t} thread(s)")
                if name == "forward":
                    target = Forward(*(np.empty_like(a) for a in fwd))
                    seconds = median_seconds(
                        lambda target=target, n_workers=n_workers: run_forward(
                            inputs, n_workers, target
                        ),
                        config.repeats,
                    )
                else:
                    args = _backward_args(inputs, fwd, n_workers)
                    seconds = median_seconds(
                        lambda args=args: kernels.render_backward(*args), config.repeats
                    )
                timings.append(_figures(name, t, seconds, counts[name], work[name], limits))
                progress.advance(task)
        del arrays
    torch.set_num_threads(torch_threads)

    report = {
        "benchmark": "roofline",
        "command": "feature-splat bench roofline",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "clock_mhz": _clock_mhz(),
            "avx2": "avx2" in _cpu_flags(),
            "fma": "fma" in _cpu_flags(),
            "avx512f": "avx512f" in _cpu_flags(),
            "numba": numba.__version__,
            "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "numba_svml": bool(numba.config.USING_SVML),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "limits": machine,
        },
        "counts": {
            **counts,
            "forward_transmittance_max_diff_vs_kernel": transmittance_diff,
            "pairs_visited": {n: counts[n]["visited"] for n in ("forward", "backward")},
            "pairs_blended": {n: counts[n]["blended"] for n in ("forward", "backward")},
        },
        "flop_table": {name: [t._asdict() for t in terms] for name, terms in FLOP_TABLE.items()},
        "byte_table": {name: [t._asdict() for t in terms] for name, terms in BYTE_TABLE.items()},
        "work": {
            name: {**w, "arithmetic_intensity": w["flops"] / w["bytes"]} for name, w in work.items()
        },
        "kernels": [asdict(f) for f in timings],
    }
    plot = _plot(out / "roofline.png", report)
    report["plot"] = plot
    write_json(out / "results.json", report)
    for table in _tables(report):
        console.print(table)
    if max(load_before[0], os.getloadavg()[0]) > 0.5:
        console.print(
            f"[yellow]load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}: other "
            f"processes were running; the figures may understate this machine[/yellow]"
        )
    console.print(f"plot: {plot}")
    console.print(f"results: {out / 'results.json'}")
    return report


def _figures(
    name: str,
    threads: int,
    seconds: float,
    counts: dict[str, int],
    work: dict[str, float],
    limits: dict[str, Any],
) -> KernelFigures:
    """Rates of one kernel at one thread count, against the limits measured at that count."""
    gflops = work["flops"] / seconds / 1e9
    exp_rate = work["exp"] / seconds
    gbs = work["bytes"] / seconds / 1e9
    f64 = limits["float64_gflops"]
    fractions = {
        "exp": exp_rate / limits["exp_per_s"],
        "arithmetic": gflops / f64,  # the pixel arithmetic is float64
        "memory": gbs / limits["bandwidth_gbs"]["triad"],
    }
    bound, reason = _bound(fractions)
    return KernelFigures(
        kernel=name,
        threads=threads,
        seconds=seconds,
        pairs_visited_per_s=counts["visited"] / seconds,
        pairs_blended_per_s=counts["blended"] / seconds,
        gflops=gflops,
        fraction_of_float32_peak=gflops / limits["float32_gflops"],
        fraction_of_float64_peak=gflops / f64,
        fraction_of_float64_scalar_peak=gflops / (f64 / 4),  # one of 4 AVX2 lanes
        exp_per_s=exp_rate,
        fraction_of_exp_throughput=fractions["exp"],
        gbytes_per_s=gbs,
        fraction_of_bandwidth=fractions["memory"],
        bound=bound,
        bound_reason=reason,
        fractions=fractions,
    )


def _tables(report: dict) -> list[Table]:
    counts = report["counts"]
    work = Table(title="work per run (counted over render_forward / render_backward's loops)")
    for column in ("kernel", "gaussian-tile", "exp", "visited", "blended", "GFLOP", "MB", "flop/B"):
        work.add_column(column, justify="right")
    for name in ("forward", "backward"):
        c, w = counts[name], report["work"][name]
        work.add_row(
            name,
            f"{c['gaussians']:,}",
            f"{c['lanes']:,}",
            f"{c['visited']:,}",
            f"{c['blended']:,}",
            f"{w['flops'] / 1e9:.3f}",
            f"{w['bytes'] / 1e6:.1f}",
            f"{w['arithmetic_intensity']:.1f}",
        )
    work.caption = (
        f"{counts['intersections']:,} intersections, {counts['pixels']:,} pixels; "
        f"forward stopped {counts['forward']['stopped']:,} pairs, skipped "
        f"{counts['forward']['skipped']:,} intersections; last_ids mismatch "
        f"{counts['last_ids_mismatch']}"
    )
    limits = Table(title="machine limits (numba loops)")
    for column in ("threads", "f32 GFLOP/s", "f64 GFLOP/s", "theory f32/f64", "Gexp/s", "GB/s"):
        limits.add_column(column, justify="right")
    for t, m in report["machine"]["limits"].items():
        theory = m["theoretical_gflops"]
        limits.add_row(
            f"{t} ({m['effective_threads']})",
            f"{m['float32_gflops']:.1f}",
            f"{m['float64_gflops']:.1f}",
            f"{theory['float32']:.0f} / {theory['float64']:.0f}" if theory else "?",
            f"{m['exp_per_s'] / 1e9:.3f}",
            f"{m['bandwidth_gbs']['triad']:.1f} (copy {m['bandwidth_gbs']['copy']:.1f})",
        )
    limits.caption = f"clock {report['machine']['clock_mhz']} MHz (/proc/cpuinfo)"
    timing = Table(title="compositing kernels alone (median)")
    for column in (
        "kernel",
        "threads",
        "ms",
        "Mvisited/s",
        "Mblended/s",
        "GFLOP/s",
        "% f32",
        "% f64",
        "% exp",
        "GB/s",
        "% bw",
        "bound",
    ):
        timing.add_column(column, justify="right")
    for k in report["kernels"]:
        timing.add_row(
            k["kernel"],
            str(k["threads"]),
            f"{k['seconds'] * 1e3:.2f}",
            f"{k['pairs_visited_per_s'] / 1e6:.1f}",
            f"{k['pairs_blended_per_s'] / 1e6:.1f}",
            f"{k['gflops']:.2f}",
            f"{k['fraction_of_float32_peak']:.1%}",
            f"{k['fraction_of_float64_peak']:.1%}",
            f"{k['fraction_of_exp_throughput']:.1%}",
            f"{k['gbytes_per_s']:.2f}",
            f"{k['fraction_of_bandwidth']:.1%}",
            k["bound"],
        )
    return [work, limits, timing]


def _plot(path: Path, report: dict) -> str:
    """A log-log roofline: the peaks, the bandwidth slope, exp ceilings and the kernels' points.
    Returns the path written, or why not."""
    if importlib.util.find_spec("matplotlib") is None:
        return "skipped: matplotlib is not installed"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = report["machine"]["limits"]
    t_max = max(limits, key=int)
    top = limits[t_max]
    bw = top["bandwidth_gbs"]["triad"]
    intensity = np.logspace(-2, 3, 200)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for key, style in (("float32_gflops", "-"), ("float64_gflops", "--")):
        ax.plot(
            intensity,
            np.minimum(top[key], intensity * bw),
            style,
            color="black",
            label=f"{key[:7]} peak {top[key]:.0f} GFLOP/s, {bw:.0f} GB/s ({t_max} thr.)",
        )
    ax.axhline(top["float64_gflops"] / 4, color="grey", ls=":", label="float64 scalar (1 lane)")
    colours = {"forward": "tab:blue", "backward": "tab:red"}
    for name, colour in colours.items():
        w = report["work"][name]
        ceiling = top["exp_per_s"] * w["flops"] / w["exp"] / 1e9  # GFLOP/s if exp-bound
        ax.axhline(ceiling, color=colour, ls="-.", lw=0.8, label=f"{name}: exp ceiling")
    for k in report["kernels"]:
        w = report["work"][k["kernel"]]
        ax.plot(
            w["arithmetic_intensity"],
            k["gflops"],
            "o" if k["threads"] == 1 else "s",
            color=colours[k["kernel"]],
            label=f"{k['kernel']}, {k['threads']} thr.: {k['gflops']:.2f} GFLOP/s",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / byte from memory)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("cpu backend compositing kernels: roofline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
