"""Numba kernels of the ``cpu`` backend: tile binning, forward compositing, backward, gradient gather.

Every kernel is parallel over independent units (cameras, tiles, Gaussians) and each output element
is written by exactly one unit in a fixed order, so results are bit-identical whatever the thread
count. Inputs are float32; per-pixel accumulation is float64.

Within a tile, Gaussians are visited front to back (back to front in the backward pass) and each one
touches only the rows of its screen bounding box, outside of which its alpha is below 1/255. For each
such row its exp is evaluated at every pixel of the tile's row at once, in a branch-free loop that
vectorises (:func:`_row_visibility`); the blending then visits the pixels where it passes 1/255.
"""

from __future__ import annotations

import math

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
def _tile_gaussian(g, c, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi):
    """Gaussian ``g`` as camera ``c`` sees it: its mean (mx, my), conic (a, b, c) and opacity,
    and its :func:`_pixel_box` in the tile ``x_lo..x_hi`` x ``y_lo..y_hi``."""
    mx, my = means2d[c, g, 0], means2d[c, g, 1]
    x0, x1, y0, y1 = _pixel_box(mx, my, radii[c, g, 0], radii[c, g, 1], x_lo, y_lo, x_hi, y_hi)
    ca, cb, cc = conics[c, g, 0], conics[c, g, 1], conics[c, g, 2]
    return mx, my, ca, cb, cc, opacities[g], x0, x1, y0, y1


SIGMA_MAX = 8.0
"""Beyond this sigma no Gaussian (opacity <= 1) reaches alpha 1/255: exp(-8) < 1/255."""
LANES = 16
"""Pixels of a row whose visibility is computed by one constant-length (vectorised) loop."""
NARROW_BOX = 8
"""Bounding boxes narrower than this many pixels have their own pixels computed, not a whole row."""


@njit(cache=True, inline="always")
def _exp_neg(s):
    """``exp(-s)`` for ``0 <= s <= SIGMA_MAX``, branch-free so that a loop of it vectorises:
    ``(e^(-s/16))^16``, with ``e^(-s/16)`` (``-s/16`` in [-0.5, 0]) by its degree-8 Taylor
    polynomial. Relative error below 5e-9 where an alpha can reach 1/255 (``s <= ln 255``), below
    1.4e-7 up to ``SIGMA_MAX``."""
    r = -0.0625 * s
    poly = 1.0 / 40320.0  # Horner's scheme, highest power first
    poly = poly * r + 1.0 / 5040.0
    poly = poly * r + 1.0 / 720.0
    poly = poly * r + 1.0 / 120.0
    poly = poly * r + 1.0 / 24.0
    poly = poly * r + 1.0 / 6.0
    poly = poly * r + 0.5
    poly = poly * r + 1.0
    poly = poly * r + 1.0
    poly = poly * poly
    poly = poly * poly
    poly = poly * poly
    return poly * poly


@njit(cache=True, inline="always")
def _visibility_at(dx, half_a, b_dy, c_dy, opac):
    """``exp(-sigma)`` at horizontal offset ``dx`` (``sigma = (a dx / 2 + b dy) dx + c dy^2 / 2``),
    or 0 where the Gaussian is skipped: sigma < 0 (round-off) or alpha ``o exp(-sigma)`` below
    1/255. Branch-free (selects only)."""
    sigma = (half_a * dx + b_dy) * dx + c_dy
    vis = _exp_neg(min(max(sigma, 0.0), SIGMA_MAX))
    return vis if (sigma >= 0.0) & (opac * vis >= ALPHA_THRESHOLD) else 0.0


@njit(cache=True, inline="always")
def _row_visibility(mx, dy, ca, cb, cc, opac, x_lo, n, box, out, row):
    """:func:`_visibility_at` of one Gaussian at the pixel centres ``x_lo + i + 0.5`` of one image
    row (``dy = my - (y + 0.5)``), into ``out[row, i]``, for at least the pixels ``box`` = (i0, i1)
    (inclusive) of its bounding box. A box narrower than :data:`NARROW_BOX` pixels gets just its
    own; otherwise all ``n`` pixels of the tile row are computed (``out`` has room for
    :data:`LANES`), as exactly ``LANES`` when ``n <= LANES``: a loop of constant length that LLVM
    unrolls and vectorises. Returns how many pixels were computed."""
    half_a, b_dy, c_dy = 0.5 * ca, cb * dy, 0.5 * cc * dy * dy
    i0, i1 = box
    if i1 - i0 < NARROW_BOX:
        for i in range(i0, i1 + 1):
            out[row, i] = _visibility_at(mx - (x_lo + i + 0.5), half_a, b_dy, c_dy, opac)
        return i1 - i0 + 1
    if n <= LANES:
        for i in range(LANES):
            out[row, i] = _visibility_at(mx - (x_lo + i + 0.5), half_a, b_dy, c_dy, opac)
        return LANES
    for i in range(n):
        out[row, i] = _visibility_at(mx - (x_lo + i + 0.5), half_a, b_dy, c_dy, opac)
    return n


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


# Fixed cost of a tile (clearing and writing its pixels), in intersections, for the schedule.
TILE_COST = 4


@njit(cache=True)
def balance_tiles(cost, first, n_workers):
    """Deal tiles ``first .. first + len(cost) - 1`` to ``n_workers`` workers with about equal
    work each, ``cost[i]`` being tile ``first + i``'s (intersections to composite).

    Tiles go, costliest first, to the least-loaded worker (longest-processing-time scheduling).
    Returns ``order`` (the tiles grouped by worker, in tile order within a worker) and ``starts``
    [n_workers + 1] (worker w's tiles are ``order[starts[w]:starts[w + 1]]``). A picture's tiles
    differ in cost tenfold (a wall beside a detailed object), so the equal split of the tile
    range that a plain parallel loop makes leaves one thread idle for much of the time. Which
    worker composites a tile never changes its result.
    """
    n = cost.shape[0]
    load = np.zeros(n_workers, np.int64)
    worker = np.empty(n, np.int64)
    for i in np.argsort(-cost, kind="mergesort"):
        w = np.argmin(load)
        worker[i] = w
        load[w] += cost[i] + TILE_COST
    starts = np.zeros(n_workers + 1, np.int64)
    for i in range(n):
        starts[worker[i] + 1] += 1
    starts = np.cumsum(starts)
    placed = starts[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[placed[worker[i]]] = first + i
        placed[worker[i]] += 1
    return order, starts


@njit(cache=True, inline="always")
def stable_key_order(keys, n_keys, n_threads):
    """A stable counting sort of ``keys`` [M] (integers in [0, n_keys)).

    Returns ``order`` [M] (``keys[order]`` is sorted, equal keys keep their order) and
    ``starts`` [n_keys + 1] (key k occupies ``order[starts[k]:starts[k + 1]]``). The keys are
    counted and placed in one chunk per thread (``n_threads`` chunks at most), in parallel
    (inlined into parallel kernels); a stable sort has one result, so it is the same for any
    thread count.
    """
    m = keys.shape[0]
    n_chunks = max(1, min(n_threads, m // 4096))
    size = (m + n_chunks - 1) // n_chunks
    counts = np.zeros((n_chunks, n_keys), np.int64)
    for chunk in prange(n_chunks):
        for i in range(chunk * size, min(m, (chunk + 1) * size)):
            counts[chunk, keys[i]] += 1
    starts = np.empty(n_keys + 1, np.int64)
    total = 0
    for k in range(n_keys):  # chunk c's keys k go after every earlier chunk's keys k
        starts[k] = total
        for chunk in range(n_chunks):
            placed = counts[chunk, k]
            counts[chunk, k] = total
            total += placed
    starts[n_keys] = total
    order = np.empty(m, np.int64)
    for chunk in prange(n_chunks):
        for i in range(chunk * size, min(m, (chunk + 1) * size)):
            k = keys[i]
            order[counts[chunk, k]] = i
            counts[chunk, k] += 1
    return order, starts


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def bin_gaussians(means2d, radii, depth_order, tile_size, tiles_x, tiles_y, n_threads):
    """List the Gaussians touching each tile, front to back.

    Returns ``offsets`` [C * n_tiles + 1] (tile t's list is ``ids[offsets[t]:offsets[t+1]]``) and
    ``ids`` [M] int32 Gaussian indices. ``depth_order`` [C, N] is a stable argsort of depths.
    Parallel over Gaussians: each one's (tile, Gaussian) pairs are written in depth order at
    offsets from a prefix sum of tile counts, then sorted stably by tile.
    """
    n_cameras, n = radii.shape[0], radii.shape[1]
    n_tiles = tiles_x * tiles_y
    pair_starts = np.zeros(n_cameras * n + 1, np.int64)
    for item in prange(n_cameras * n):
        c, g = item // n, depth_order[item // n, item % n]
        rx, ry = radii[c, g, 0], radii[c, g, 1]
        if rx > 0 and ry > 0:
            mx, my = means2d[c, g, 0], means2d[c, g, 1]
            tx0, tx1, ty0, ty1 = _tile_range(mx, my, rx, ry, tile_size, tiles_x, tiles_y)
            pair_starts[item + 1] = (tx1 - tx0) * (ty1 - ty0)
    pair_starts = np.cumsum(pair_starts)
    tiles = np.empty(pair_starts[-1], np.int32)
    gaussians = np.empty(pair_starts[-1], np.int32)
    for item in prange(n_cameras * n):
        c, g = item // n, depth_order[item // n, item % n]
        k = pair_starts[item]
        if k == pair_starts[item + 1]:
            continue
        mx, my = means2d[c, g, 0], means2d[c, g, 1]
        tx0, tx1, ty0, ty1 = _tile_range(
            mx, my, radii[c, g, 0], radii[c, g, 1], tile_size, tiles_x, tiles_y
        )
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                tiles[k] = c * n_tiles + ty * tiles_x + tx
                gaussians[k] = g
                k += 1
    order, offsets = stable_key_order(tiles, n_cameras * n_tiles, n_threads)
    ids = np.empty(order.shape[0], np.int32)
    for k in prange(order.shape[0]):
        ids[k] = gaussians[order[k]]
    return offsets, ids


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def render_forward(
    gaussians, bins, grid, n_workers, out_features, out_depth, out_transmittance, out_last
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
    acc = np.zeros((n_workers, n_px, dim))
    acc_depth = np.zeros((n_workers, n_px))
    trans = np.ones((n_workers, n_px))
    done = np.zeros((n_workers, n_px), np.bool_)
    last = np.empty((n_workers, n_px), np.int64)
    # one tile row per thread, padded against false sharing
    visibility = np.zeros((n_workers, max(grid[2], LANES) + 8))
    order, starts = balance_tiles(np.diff(offsets), 0, n_workers)
    for th in prange(n_workers):  # th: this worker's rows of the scratch arrays
        for i in range(starts[th], starts[th + 1]):
            job = order[i]
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
                mx, my, ca, cb, cc, opac, x0, x1, y0, y1 = _tile_gaussian(
                    g, c, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi
                )
                z = depths[c, g]
                box = (x0 - x_lo, x1 - x_lo)
                for y in range(y0, y1 + 1):
                    _row_visibility(
                        mx, my - (y + 0.5), ca, cb, cc, opac, x_lo, tw, box, visibility, th
                    )
                    for x in range(x0, x1 + 1):
                        vis = visibility[th, x - x_lo]
                        p = (y - y_lo) * tw + (x - x_lo)
                        if vis == 0.0 or done[th, p]:
                            continue
                        alpha = min(MAX_ALPHA, opac * vis)
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
    n_workers,
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
    # Per pixel, the colour composited behind the current Gaussian enters the gradient only through
    # its dot product with d loss / d colour, so that scalar is carried instead of D channels.
    behind = np.zeros((n_workers, n_px))
    behind_depth = np.zeros((n_workers, n_px))
    trans = np.ones((n_workers, n_px))
    later = np.ones((n_workers, n_px))  # product of (1 - alpha) over Gaussians behind
    grad_f = np.zeros((n_workers, dim + 16))  # padded: no cache line shared between threads
    visibility = np.zeros((n_workers, max(grid[2], LANES) + 8))
    n_jobs = n_cameras * n_tiles_cam
    live = np.empty(n_jobs, np.int64)  # per tile, its intersections up to its pixels' last
    for job in prange(n_jobs):
        c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
        k_max = offsets[job] - 1
        for y in range(y_lo, y_hi + 1):
            for x in range(x_lo, x_hi + 1):
                k_max = max(k_max, last_ids[c, y, x])
        live[job] = k_max - offsets[job] + 1
    order, starts = balance_tiles(live, 0, n_workers)
    for th in prange(n_workers):  # th: this worker's rows of the scratch arrays
        for i in range(starts[th], starts[th + 1]):
            job = order[i]
            c, x_lo, y_lo, x_hi, y_hi = _tile_pixels(job, n_tiles_cam, grid)
            cf = 0 if shared_features else c
            tw = x_hi - x_lo + 1
            npx = tw * (y_hi - y_lo + 1)
            start = offsets[job]
            k_max = start - 1 + live[job]
            for p in range(npx):
                y = y_lo + p // tw
                x = x_lo + p % tw
                t_final = transmittance[c, y, x]
                trans[th, p] = t_final
                later[th, p] = 1.0
                behind_depth[th, p] = 0.0
                bg_dot = 0.0
                for d in range(dim):
                    bg_dot += backgrounds[c, d] * grad_features[c, y, x, d]
                    tile_grad_background[job, d] += t_final * grad_features[c, y, x, d]
                behind[th, p] = bg_dot
            for k in range(k_max + 1, offsets[job + 1]):  # behind every pixel's last: no gradient
                isect_grad_features[k, :] = 0.0
                isect_grad_geometry[k, :] = 0.0
            for k in range(k_max, start - 1, -1):
                g = ids[k]
                mx, my, ca, cb, cc, opac, x0, x1, y0, y1 = _tile_gaussian(
                    g, c, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi
                )
                z = depths[c, g]
                grad_f[th, :] = 0.0
                g_mx = g_my = g_ca = g_cb = g_cc = g_op = g_z = 0.0
                box = (x0 - x_lo, x1 - x_lo)
                for y in range(y0, y1 + 1):
                    dy = my - (y + 0.5)
                    _row_visibility(mx, dy, ca, cb, cc, opac, x_lo, tw, box, visibility, th)
                    for x in range(x0, x1 + 1):
                        vis = visibility[th, x - x_lo]
                        if vis == 0.0 or k > last_ids[c, y, x]:
                            continue
                        p = (y - y_lo) * tw + (x - x_lo)
                        dx = mx - (x + 0.5)
                        alpha = min(MAX_ALPHA, opac * vis)
                        one_minus = 1.0 - alpha
                        t_p = trans[th, p] / one_minus  # transmittance in front of this Gaussian
                        w = alpha * t_p
                        f_dot = 0.0
                        for d in range(dim):
                            go = grad_features[c, y, x, d]
                            grad_f[th, d] += w * go
                            f_dot += features[cf, g, d] * go
                        d_alpha = f_dot - behind[th, p]
                        behind[th, p] = alpha * f_dot + one_minus * behind[th, p]
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
    n_threads,
    grad_features,
    grad_geometry,
    grad_opacities,
):
    """Sum per-intersection gradients into per-Gaussian ones, in a fixed (camera, tile, depth) order.

    ``grad_features`` [n_feature_sets, N, D], ``grad_geometry`` [C, N, 6] (means2d, conic, depth),
    ``grad_opacities`` [N]; all zero-initialised by the caller.
    """
    n_tiles_cam = (offsets.shape[0] - 1) // n_cameras
    by_gaussian, starts = stable_key_order(
        ids, n, n_threads
    )  # keeps the (camera, tile, depth) order
    camera_of = np.empty(ids.shape[0], np.int64)
    for job in prange(offsets.shape[0] - 1):
        for k in range(offsets[job], offsets[job + 1]):
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
    gaussians, bins, grid, jobs, n_workers, cells, max_tile_cells, targets, out_sums, out_weights
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
    trans = np.ones((n_workers, n_px))
    done = np.zeros((n_workers, n_px), np.bool_)
    cell_weight = np.zeros((n_workers, max_tile_cells + 8))  # padded against false sharing
    visibility = np.zeros((n_workers, max(grid[2], LANES) + 8))
    order, starts = balance_tiles(np.diff(offsets[jobs[0] : jobs[1] + 1]), jobs[0], n_workers)
    for th in prange(n_workers):  # th: this worker's rows of the scratch arrays
        for i in range(starts[th], starts[th + 1]):
            job = order[i]
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
                mx, my, ca, cb, cc, opac, x0, x1, y0, y1 = _tile_gaussian(
                    g, 0, means2d, conics, opacities, radii, x_lo, y_lo, x_hi, y_hi
                )
                box = (x0 - x_lo, x1 - x_lo)
                for y in range(y0, y1 + 1):
                    _row_visibility(
                        mx, my - (y + 0.5), ca, cb, cc, opac, x_lo, tw, box, visibility, th
                    )
                    for x in range(x0, x1 + 1):
                        vis = visibility[th, x - x_lo]
                        p = (y - y_lo) * tw + (x - x_lo)
                        if vis == 0.0 or done[th, p]:
                            continue
                        alpha = min(MAX_ALPHA, opac * vis)
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
def scatter_rows(ids, sums, weights, n_threads, out_sums, out_weights):
    """``out_sums[ids[k]] += sums[k]`` and ``out_weights[ids[k]] += weights[k]`` for every row k.

    The rows are grouped by Gaussian (:func:`stable_key_order`), then each Gaussian's rows are added
    in row order by one thread: deterministic for any thread count, and each row is read whole.
    """
    order, starts = stable_key_order(ids, out_sums.shape[0], n_threads)
    touched = np.flatnonzero(starts[1:] - starts[:-1])
    dim = sums.shape[1]
    for i in prange(touched.shape[0]):
        g = touched[i]
        for j in range(starts[g], starts[g + 1]):
            k = order[j]
            out_weights[g] += weights[k]
            for d in range(dim):
                out_sums[g, d] += sums[k, d]
