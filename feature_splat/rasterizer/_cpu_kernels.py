"""Numba kernels of the ``cpu`` backend: tile binning, forward compositing, backward, gradient gather.

Every kernel is parallel over independent units (cameras, tiles, Gaussians) and each output element
is written by exactly one unit in a fixed order, so results are bit-identical whatever the thread
count. Inputs are float32; per-pixel accumulation is float64.

Within a tile, Gaussians are visited front to back (back to front in the backward pass) and each one
touches only the pixels inside its screen bounding box, outside of which its alpha is below 1/255.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from feature_splat.rasterizer.projection import ALPHA_THRESHOLD, MAX_ALPHA, MIN_TRANSMITTANCE

# Reassociation lets the per-channel loops vectorise; NaN/inf semantics are kept.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@njit(cache=True, inline="always")
def _pixel_box(mx, my, rx, ry, x_lo, y_lo, x_hi, y_hi):
    """Pixels (inclusive bounds) whose centres lie in the Gaussian's bounding box, clipped to a tile."""
    x0 = max(x_lo, math.ceil(mx - rx - 0.5))
    x1 = min(x_hi, math.floor(mx + rx - 0.5))
    y0 = max(y_lo, math.ceil(my - ry - 0.5))
    y1 = min(y_hi, math.floor(my + ry - 0.5))
    return x0, x1, y0, y1


@njit(cache=True, inline="always")
def _row_span(mx, dy, ca, cb, cc, s_max, x0, x1):
    """Pixels of one row (inclusive, within [x0, x1]) where sigma <= s_max, i.e. alpha >= 1/255.

    Solves 0.5 a dx^2 + b dy dx + 0.5 c dy^2 <= s_max for dx = mx - (x + 0.5), widened by 1e-3 px;
    the caller still applies the exact alpha test, so the span only saves work.
    """
    disc = cb * cb * dy * dy - ca * (cc * dy * dy - 2.0 * s_max)
    if disc < 0.0:
        return 1, 0
    root = math.sqrt(disc)
    centre = mx - 0.5 + cb * dy / ca
    half = root / ca + 1e-3
    return max(x0, math.ceil(centre - half)), min(x1, math.floor(centre + half))


@njit(cache=True, inline="always")
def _alpha_at(opac, ca, cb, cc, dx, dy):
    """A Gaussian's alpha at offset (dx, dy) from its centre: ``min(0.999, o exp(-sigma))``, or 0
    where it is skipped (sigma < 0 from round-off, or alpha below 1/255)."""
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    if sigma < 0.0:
        return 0.0
    alpha = min(MAX_ALPHA, opac * math.exp(np.float32(-sigma)))
    return alpha if alpha >= ALPHA_THRESHOLD else 0.0


@njit(cache=True, inline="always")
def _tile_range(mx, my, rx, ry, tile_size, tiles_x, tiles_y):
    """Tiles touched by a bounding box: x in [tx0, tx1), y in [ty0, ty1) (gsplat's rule)."""
    tx0 = min(max(0, math.floor((mx - rx) / tile_size)), tiles_x)
    tx1 = min(max(0, math.ceil((mx + rx) / tile_size)), tiles_x)
    ty0 = min(max(0, math.floor((my - ry) / tile_size)), tiles_y)
    ty1 = min(max(0, math.ceil((my + ry) / tile_size)), tiles_y)
    return tx0, tx1, ty0, ty1


@njit(cache=True, inline="always")
def _tile_pixels(job, n_tiles_cam, grid):
    """Camera and pixel bounds (inclusive) of work unit ``job`` = camera * n_tiles + tile."""
    width, height, tile_size, tiles_x = grid
    c = job // n_tiles_cam
    tile = job % n_tiles_cam
    x_lo = (tile % tiles_x) * tile_size
    y_lo = (tile // tiles_x) * tile_size
    x_hi = min(x_lo + tile_size, width) - 1
    y_hi = min(y_lo + tile_size, height) - 1
    return c, x_lo, y_lo, x_hi, y_hi


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def bin_gaussians(means2d, radii, depth_order, tile_size, tiles_x, tiles_y):
    """List the Gaussians touching each tile, front to back.

    Returns ``offsets`` [C * n_tiles + 1] (tile t's list is ``ids[offsets[t]:offsets[t+1]]``) and
    ``ids`` [M] int32 Gaussian indices. ``depth_order`` [C, N] is a stable argsort of depths.
    """
    n_cameras, n = radii.shape[0], radii.shape[1]
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_cameras * n_tiles + 1, np.int64)
    for c in prange(n_cameras):
        for g in range(n):
            rx, ry = radii[c, g, 0], radii[c, g, 1]
            if rx <= 0 or ry <= 0:
                continue
            mx, my = means2d[c, g, 0], means2d[c, g, 1]
            tx0, tx1, ty0, ty1 = _tile_range(mx, my, rx, ry, tile_size, tiles_x, tiles_y)
            for ty in range(ty0, ty1):
                for tx in range(tx0, tx1):
                    counts[1 + c * n_tiles + ty * tiles_x + tx] += 1
    offsets = np.cumsum(counts)
    ids = np.empty(offsets[-1], np.int32)
    cursor = offsets[:-1].copy()
    for c in prange(n_cameras):
        for rank in range(n):
            g = depth_order[c, rank]
            rx, ry = radii[c, g, 0], radii[c, g, 1]
            if rx <= 0 or ry <= 0:
                continue
            mx, my = means2d[c, g, 0], means2d[c, g, 1]
            tx0, tx1, ty0, ty1 = _tile_range(mx, my, rx, ry, tile_size, tiles_x, tiles_y)
            for ty in range(ty0, ty1):
                for tx in range(tx0, tx1):
                    t = c * n_tiles + ty * tiles_x + tx
                    ids[cursor[t]] = g
                    cursor[t] += 1
    return offsets, ids


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def render_forward(
    gaussians, bins, grid, n_threads, out_features, out_depth, out_transmittance, out_last
):
    """Composite every tile front to back.

    Writes features (with background) [C,H,W,D], raw depth [C,H,W], final transmittance [C,H,W]
    and, per pixel, the index into ``ids`` of the last Gaussian that contributed (-1 if none).
    """
    means2d, conics, opacities, features, depths, radii, backgrounds = gaussians
    offsets, ids = bins
    n_cameras = means2d.shape[0]
    dim = features.shape[2]
    shared_features = features.shape[0] == 1
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    n_px = grid[2] * grid[2]
    acc = np.zeros((n_threads, n_px, dim))
    acc_depth = np.zeros((n_threads, n_px))
    trans = np.ones((n_threads, n_px))
    done = np.zeros((n_threads, n_px), np.bool_)
    last = np.empty((n_threads, n_px), np.int64)
    for job in prange(n_cameras * n_tiles_cam):
        th = numba.get_thread_id()
        c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        cf = 0 if shared_features else c
        tw = x_hi - x_lo + 1
        npx = tw * (y_hi - y_lo + 1)
        acc[th, :npx] = 0.0
        acc_depth[th, :npx] = 0.0
        trans[th, :npx] = 1.0
        done[th, :npx] = False
        last[th, :npx] = -1
        n_done = 0
        for k in range(offsets[job], offsets[job + 1]):
            if n_done == npx:
                break
            g = ids[k]
            mx, my = means2d[c, g, 0], means2d[c, g, 1]
            ca, cb, cc = conics[c, g, 0], conics[c, g, 1], conics[c, g, 2]
            opac = opacities[g]
            z = depths[c, g]
            x0, x1, y0, y1 = _pixel_box(
                mx, my, radii[c, g, 0], radii[c, g, 1], x_lo, y_lo, x_hi, y_hi
            )
            s_max = math.log(opac / ALPHA_THRESHOLD)
            for y in range(y0, y1 + 1):
                dy = my - (y + 0.5)
                xa, xb = _row_span(mx, dy, ca, cb, cc, s_max, x0, x1)
                for x in range(xa, xb + 1):
                    p = (y - y_lo) * tw + (x - x_lo)
                    if done[th, p]:
                        continue
                    alpha = _alpha_at(opac, ca, cb, cc, mx - (x + 0.5), dy)
                    if alpha == 0.0:
                        continue
                    t_p = trans[th, p]
                    next_t = t_p * (1.0 - alpha)
                    if next_t <= MIN_TRANSMITTANCE:  # the pixel stops before this Gaussian
                        done[th, p] = True
                        n_done += 1
                        continue
                    w = alpha * t_p
                    for d in range(dim):
                        acc[th, p, d] += w * features[cf, g, d]
                    acc_depth[th, p] += w * z
                    trans[th, p] = next_t
                    last[th, p] = k
        for p in range(npx):
            y = y_lo + p // tw
            x = x_lo + p % tw
            t_p = trans[th, p]
            for d in range(dim):
                out_features[c, y, x, d] = acc[th, p, d] + t_p * backgrounds[c, d]
            out_depth[c, y, x] = acc_depth[th, p]
            out_transmittance[c, y, x] = t_p
            out_last[c, y, x] = last[th, p]


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def render_backward(
    gaussians,
    bins,
    grid,
    n_threads,
    transmittance,
    last_ids,
    grad_features,
    grad_depth,
    grad_alpha,
    isect_grad_features,
    isect_grad_geometry,
    tile_grad_background,
):
    """Back-propagate through the compositing of every tile, back to front.

    Per intersection k (a row of ``ids``) writes d loss / d features into
    ``isect_grad_features[k]`` [D] and into ``isect_grad_geometry[k]`` [7]: means2d x, y; conic a,
    b, c; opacity; depth. Per tile, d loss / d background into ``tile_grad_background`` [tiles, D].
    """
    means2d, conics, opacities, features, depths, radii, backgrounds = gaussians
    offsets, ids = bins
    n_cameras = means2d.shape[0]
    dim = features.shape[2]
    shared_features = features.shape[0] == 1
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    n_px = grid[2] * grid[2]
    behind = np.zeros((n_threads, n_px, dim))  # colour behind the current Gaussian, per pixel
    behind_depth = np.zeros((n_threads, n_px))
    trans = np.ones((n_threads, n_px))
    later = np.ones((n_threads, n_px))  # product of (1 - alpha) over Gaussians behind
    grad_f = np.zeros((n_threads, dim))
    for job in prange(n_cameras * n_tiles_cam):
        th = numba.get_thread_id()
        c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        cf = 0 if shared_features else c
        tw = x_hi - x_lo + 1
        npx = tw * (y_hi - y_lo + 1)
        start = offsets[job]
        k_max = start - 1
        for p in range(npx):
            y = y_lo + p // tw
            x = x_lo + p % tw
            t_final = transmittance[c, y, x]
            trans[th, p] = t_final
            later[th, p] = 1.0
            behind_depth[th, p] = 0.0
            for d in range(dim):
                behind[th, p, d] = backgrounds[c, d]
                tile_grad_background[job, d] += t_final * grad_features[c, y, x, d]
            k_max = max(k_max, last_ids[c, y, x])
        for k in range(k_max + 1, offsets[job + 1]):  # behind every pixel's last: no gradient
            isect_grad_features[k, :] = 0.0
            isect_grad_geometry[k, :] = 0.0
        for k in range(k_max, start - 1, -1):
            g = ids[k]
            mx, my = means2d[c, g, 0], means2d[c, g, 1]
            ca, cb, cc = conics[c, g, 0], conics[c, g, 1], conics[c, g, 2]
            opac = opacities[g]
            z = depths[c, g]
            x0, x1, y0, y1 = _pixel_box(
                mx, my, radii[c, g, 0], radii[c, g, 1], x_lo, y_lo, x_hi, y_hi
            )
            grad_f[th, :] = 0.0
            g_mx = g_my = g_ca = g_cb = g_cc = g_op = g_z = 0.0
            s_max = math.log(opac / ALPHA_THRESHOLD)
            for y in range(y0, y1 + 1):
                dy = my - (y + 0.5)
                xa, xb = _row_span(mx, dy, ca, cb, cc, s_max, x0, x1)
                for x in range(xa, xb + 1):
                    if k > last_ids[c, y, x]:
                        continue
                    p = (y - y_lo) * tw + (x - x_lo)
                    dx = mx - (x + 0.5)
                    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < 0.0:
                        continue
                    vis = math.exp(np.float32(-sigma))
                    alpha = min(MAX_ALPHA, opac * vis)
                    if alpha < ALPHA_THRESHOLD:
                        continue
                    one_minus = 1.0 - alpha
                    t_p = trans[th, p] / one_minus  # transmittance in front of this Gaussian
                    w = alpha * t_p
                    d_alpha = 0.0
                    for d in range(dim):
                        go = grad_features[c, y, x, d]
                        f = features[cf, g, d]
                        grad_f[th, d] += w * go
                        d_alpha += (f - behind[th, p, d]) * go
                        behind[th, p, d] = alpha * f + one_minus * behind[th, p, d]
                    gz = grad_depth[c, y, x]
                    g_z += w * gz
                    d_alpha += (z - behind_depth[th, p]) * gz
                    behind_depth[th, p] = alpha * z + one_minus * behind_depth[th, p]
                    d_alpha = t_p * (d_alpha + later[th, p] * grad_alpha[c, y, x])
                    later[th, p] *= one_minus
                    trans[th, p] = t_p
                    if opac * vis <= MAX_ALPHA:
                        g_op += vis * d_alpha
                        d_sigma = -alpha * d_alpha
                        g_ca += 0.5 * dx * dx * d_sigma
                        g_cb += dx * dy * d_sigma
                        g_cc += 0.5 * dy * dy * d_sigma
                        g_mx += (ca * dx + cb * dy) * d_sigma
                        g_my += (cb * dx + cc * dy) * d_sigma
            for d in range(dim):
                isect_grad_features[k, d] = grad_f[th, d]
            isect_grad_geometry[k, 0] = g_mx
            isect_grad_geometry[k, 1] = g_my
            isect_grad_geometry[k, 2] = g_ca
            isect_grad_geometry[k, 3] = g_cb
            isect_grad_geometry[k, 4] = g_cc
            isect_grad_geometry[k, 5] = g_op
            isect_grad_geometry[k, 6] = g_z


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def gather_gradients(
    offsets,
    ids,
    n_cameras,
    n,
    isect_grad_features,
    isect_grad_geometry,
    n_feature_sets,
    grad_features,
    grad_geometry,
    grad_opacities,
):
    """Sum per-intersection gradients into per-Gaussian ones, in a fixed (camera, tile, depth) order.

    ``grad_features`` [n_feature_sets, N, D], ``grad_geometry`` [C, N, 6] (means2d, conic, depth),
    ``grad_opacities`` [N]; all zero-initialised by the caller.
    """
    n_isect = ids.shape[0]
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    # Counting sort of intersections by Gaussian, keeping their order: deterministic.
    counts = np.zeros(n + 1, np.int64)
    for k in range(n_isect):
        counts[ids[k] + 1] += 1
    starts = np.cumsum(counts)
    cursor = starts[:-1].copy()
    by_gaussian = np.empty(n_isect, np.int64)
    camera_of = np.empty(n_isect, np.int64)
    for job in range(offsets.shape[0] - 1):
        for k in range(offsets[job], offsets[job + 1]):
            g = ids[k]
            by_gaussian[cursor[g]] = k
            cursor[g] += 1
            camera_of[k] = job // n_tiles_cam
    dim = isect_grad_features.shape[1]
    for g in prange(n):
        for j in range(starts[g], starts[g + 1]):
            k = by_gaussian[j]
            c = camera_of[k]
            cf = 0 if n_feature_sets == 1 else c
            for d in range(dim):
                grad_features[cf, g, d] += isect_grad_features[k, d]
            grad_geometry[c, g, 0] += isect_grad_geometry[k, 0]
            grad_geometry[c, g, 1] += isect_grad_geometry[k, 1]
            grad_geometry[c, g, 2] += isect_grad_geometry[k, 2]
            grad_geometry[c, g, 3] += isect_grad_geometry[k, 3]
            grad_geometry[c, g, 4] += isect_grad_geometry[k, 4]
            grad_geometry[c, g, 5] += isect_grad_geometry[k, 6]
            grad_opacities[g] += isect_grad_geometry[k, 5]


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def accumulate_tiles(
    gaussians, bins, grid, jobs, n_threads, cells, max_tile_cells, targets, out_sums, out_weights
):
    """Rendering-weighted sums of per-cell targets, per intersection, for tiles ``jobs`` of one
    camera (the forward pass's compositing, with the features replaced by an accumulation).

    For intersection k (a Gaussian g in a tile), row ``k - offsets[jobs[0]]`` of ``out_sums`` [K, M]
    receives ``sum_p s_p w_gp targets[cell(p)]`` over the tile's pixels p, and ``out_weights`` [K]
    receives ``sum_p s_p w_gp``, where ``w_gp = alpha T`` is g's rendering weight at p and
    ``s_p = scale_y[y] scale_x[x]``. ``cells`` = (cell_y [H], cell_x [W], scale_y [H], scale_x
    [W]) maps pixels to the rows and columns of ``targets`` [h, w, M]; no tile spans more than
    ``max_tile_cells`` cells. The weights are summed per cell first, so the M-channel work is
    per (Gaussian, cell) pair, not per pixel.
    """
    means2d, conics, opacities, radii = gaussians
    offsets, ids = bins
    cell_y, cell_x, scale_y, scale_x = cells
    dim = targets.shape[2]
    n_tiles_cam = offsets.shape[0] - 1
    first_row = offsets[jobs[0]]
    n_px = grid[2] * grid[2]
    trans = np.ones((n_threads, n_px))
    done = np.zeros((n_threads, n_px), np.bool_)
    cell_weight = np.zeros((n_threads, max_tile_cells))
    for job in prange(jobs[0], jobs[1]):
        th = numba.get_thread_id()
        _, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        tw = x_hi - x_lo + 1
        npx = tw * (y_hi - y_lo + 1)
        cy0, cx0 = cell_y[y_lo], cell_x[x_lo]
        cells_w = cell_x[x_hi] - cx0 + 1
        n_cells = (cell_y[y_hi] - cy0 + 1) * cells_w
        trans[th, :npx] = 1.0
        done[th, :npx] = False
        n_done = 0
        for k in range(offsets[job], offsets[job + 1]):
            row = k - first_row
            out_sums[row, :] = 0.0
            out_weights[row] = 0.0
            if n_done == npx:
                continue
            cell_weight[th, :n_cells] = 0.0
            g = ids[k]
            mx, my = means2d[0, g, 0], means2d[0, g, 1]
            ca, cb, cc = conics[0, g, 0], conics[0, g, 1], conics[0, g, 2]
            opac = opacities[g]
            x0, x1, y0, y1 = _pixel_box(
                mx, my, radii[0, g, 0], radii[0, g, 1], x_lo, y_lo, x_hi, y_hi
            )
            s_max = math.log(opac / ALPHA_THRESHOLD)
            for y in range(y0, y1 + 1):
                dy = my - (y + 0.5)
                xa, xb = _row_span(mx, dy, ca, cb, cc, s_max, x0, x1)
                for x in range(xa, xb + 1):
                    p = (y - y_lo) * tw + (x - x_lo)
                    if done[th, p]:
                        continue
                    alpha = _alpha_at(opac, ca, cb, cc, mx - (x + 0.5), dy)
                    if alpha == 0.0:
                        continue
                    t_p = trans[th, p]
                    next_t = t_p * (1.0 - alpha)
                    if next_t <= MIN_TRANSMITTANCE:
                        done[th, p] = True
                        n_done += 1
                        continue
                    local = (cell_y[y] - cy0) * cells_w + (cell_x[x] - cx0)
                    cell_weight[th, local] += alpha * t_p * scale_y[y] * scale_x[x]
                    trans[th, p] = next_t
            total = 0.0
            for local in range(n_cells):
                w = cell_weight[th, local]
                if w == 0.0:
                    continue
                total += w
                cy = cy0 + local // cells_w
                cx = cx0 + local % cells_w
                for d in range(dim):
                    out_sums[row, d] += w * targets[cy, cx, d]
            out_weights[row] = total


@njit(cache=True, parallel=True, error_model="numpy")
def scatter_rows(ids, sums, weights, out_sums, out_weights):
    """``out_sums[ids[k]] += sums[k]`` and ``out_weights[ids[k]] += weights[k]`` for every row k.

    The rows are grouped by Gaussian (a stable counting sort), then each Gaussian's rows are added
    in row order by one thread: deterministic for any thread count, and each row is read whole.
    """
    n_rows = ids.shape[0]
    counts = np.zeros(out_sums.shape[0] + 1, np.int64)
    for k in range(n_rows):
        counts[ids[k] + 1] += 1
    starts = np.cumsum(counts)
    cursor = starts[:-1].copy()
    order = np.empty(n_rows, np.int64)
    for k in range(n_rows):
        g = ids[k]
        order[cursor[g]] = k
        cursor[g] += 1
    touched = np.flatnonzero(counts[1:])
    dim = sums.shape[1]
    for i in prange(touched.shape[0]):
        g = touched[i]
        for j in range(starts[g], starts[g + 1]):
            k = order[j]
            out_weights[g] += weights[k]
            for d in range(dim):
                out_sums[g, d] += sums[k, d]
