"""Numba kernels of the ``cpu`` backend's EWA projection: forward and analytic backward.

They compute exactly what :func:`feature_splat.rasterizer.projection.project` computes (same
clamped Jacobian, low-pass filter, culling rules and finite substitutes for culled Gaussians), in
float64 whatever the input dtype (float32 or float64); outputs are written in the arrays' dtype.

Both kernels are parallel over Gaussians, with the cameras visited in order inside one thread: every
output element is written by one thread in a fixed order, so results are bit-identical whatever the
thread count. The backward pass recomputes the forward intermediates rather than storing them.

Per Gaussian g and camera c (view rotation V, translation t, intrinsics fx, fy, cx, cy):

- ``M = R(q / |q|) diag(s)``, so the world covariance is ``M M^T``; camera-space mean ``m_c = V m
  + t`` and ``W = V M``;
- ``z' = z`` if ``near <= z <= far`` else 1; ``tx = z' clamp(x / z', -lim_x_neg, lim_x_pos)``
  (likewise ``ty``); ``J = [[fx/z', 0, -fx tx/z'^2], [0, fy/z', -fy ty/z'^2]]``;
- ``T = J W`` and ``cov2d = T T^T``; ``a, b, c = cov2d_00 + eps2d, cov2d_01, cov2d_11 + eps2d``;
- ``det = a c - b^2`` if valid (in depth and ``det > 0``) else 1; conic ``(c, -b, a) / det``;
- ``means2d = (fx x / z' + cx, fy y / z' + cy)``; depth = ``z`` (not ``z'``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from feature_splat.rasterizer.projection import ALPHA_THRESHOLD, MAX_EXTENT

# No fastmath: results are meant to match project() and to be reproducible bit for bit.
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's default eps


@njit(cache=True)
def _unit_quat(quats, g):
    """Quaternion g as float64 (w, x, y, z), divided by ``max(|q|, 1e-12)``; also that divisor and
    whether the norm was clamped."""
    w, x, y, z = (
        np.float64(quats[g, 0]),
        np.float64(quats[g, 1]),
        np.float64(quats[g, 2]),
        np.float64(quats[g, 3]),
    )
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    clamped = norm < _NORM_EPS
    d = _NORM_EPS if clamped else norm
    return w / d, x / d, y / d, z / d, d, clamped


@njit(cache=True)
def _rotmat(w, x, y, z):
    """Rotation matrix (row-major 9-tuple) of a unit (w, x, y, z) quaternion, as quat_to_rotmat."""
    return (
        1.0 - 2.0 * (y * y + z * z),
        2.0 * (x * y - w * z),
        2.0 * (x * z + w * y),
        2.0 * (x * y + w * z),
        1.0 - 2.0 * (x * x + z * z),
        2.0 * (y * z - w * x),
        2.0 * (x * z - w * y),
        2.0 * (y * z + w * x),
        1.0 - 2.0 * (x * x + y * y),
    )


@njit(cache=True)
def _scaled_rotation(quats, scales, g):
    """``M = R diag(s)`` (row-major 9-tuple), the unit quaternion and its normalisation data."""
    w, x, y, z, d, clamped = _unit_quat(quats, g)
    r = _rotmat(w, x, y, z)
    sx, sy, sz = np.float64(scales[g, 0]), np.float64(scales[g, 1]), np.float64(scales[g, 2])
    m = (
        r[0] * sx, r[1] * sy, r[2] * sz,
        r[3] * sx, r[4] * sy, r[5] * sz,
        r[6] * sx, r[7] * sy, r[8] * sz,
    )  # fmt: skip
    return m, r, (w, x, y, z), d, clamped, (sx, sy, sz)


@njit(cache=True)
def _view(viewmats, c):
    """Camera c's view rotation (row-major 9-tuple) and translation, as float64."""
    v = viewmats[c]
    rot = (
        np.float64(v[0, 0]), np.float64(v[0, 1]), np.float64(v[0, 2]),
        np.float64(v[1, 0]), np.float64(v[1, 1]), np.float64(v[1, 2]),
        np.float64(v[2, 0]), np.float64(v[2, 1]), np.float64(v[2, 2]),
    )  # fmt: skip
    return rot, (np.float64(v[0, 3]), np.float64(v[1, 3]), np.float64(v[2, 3]))


@njit(cache=True)
def _matmul3(p, q):
    """Product of two row-major 3x3 9-tuples."""
    return (
        p[0] * q[0] + p[1] * q[3] + p[2] * q[6],
        p[0] * q[1] + p[1] * q[4] + p[2] * q[7],
        p[0] * q[2] + p[1] * q[5] + p[2] * q[8],
        p[3] * q[0] + p[4] * q[3] + p[5] * q[6],
        p[3] * q[1] + p[4] * q[4] + p[5] * q[7],
        p[3] * q[2] + p[4] * q[5] + p[5] * q[8],
        p[6] * q[0] + p[7] * q[3] + p[8] * q[6],
        p[6] * q[1] + p[7] * q[4] + p[8] * q[7],
        p[6] * q[2] + p[7] * q[5] + p[8] * q[8],
    )


@njit(cache=True)
def _intrinsics(Ks, c, width, height):
    """fx, fy, cx, cy and the view-ray limits lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg (the
    field of view plus 0.3 tan(fov / 2) on each side) of camera c."""
    fx, fy = np.float64(Ks[c, 0, 0]), np.float64(Ks[c, 1, 1])
    cx, cy = np.float64(Ks[c, 0, 2]), np.float64(Ks[c, 1, 2])
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    return (
        (fx, fy, cx, cy),
        ((width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx),
        ((height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy),
    )


@njit(cache=True)
def _clamp_ray(u, lim_pos, lim_neg):
    """``min(max(u, -lim_neg), lim_pos)`` and whether it differs from u (then no gradient to u)."""
    v = min(max(u, -lim_neg), lim_pos)
    return v, u < -lim_neg or u > lim_pos


@njit(cache=True)
def _opacity_constants(opacities):
    """1/255 and 3.33 rounded to the opacities' dtype, as project() uses them: an opacity at the
    rounded threshold passes the test but gets a zero extent, ``sqrt(2 ln(o / o))``."""
    rounded = np.empty(2, opacities.dtype)
    rounded[0] = ALPHA_THRESHOLD
    rounded[1] = MAX_EXTENT
    return np.float64(rounded[0]), np.float64(rounded[1])


@njit(cache=True, parallel=True, error_model="numpy")
def project_forward(
    means,
    quats,
    scales,
    opacities,
    viewmats,
    Ks,
    width,
    height,
    near_plane,
    far_plane,
    eps2d,
    out_means2d,
    out_conics,
    out_depths,
    out_radii,
):
    """Project N Gaussians into C cameras, as ``projection.project``.

    Inputs: means [N, 3], quats [N, 4] (w, x, y, z; normalised here), scales [N, 3], opacities [N],
    viewmats [C, 4, 4], Ks [C, 3, 3]. Writes means2d [C, N, 2], conics [C, N, 3], depths [C, N] and
    int32 radii [C, N, 2] (0 where culled; the other outputs of culled Gaussians are project()'s
    finite substitutes).
    """
    n_cameras, n = viewmats.shape[0], means.shape[0]
    threshold, extent_max = _opacity_constants(opacities)
    for g in prange(n):
        m, _, _, _, _, _ = _scaled_rotation(quats, scales, g)
        px, py, pz = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
        opac = np.float64(opacities[g])
        extent = math.sqrt(2.0 * math.log(max(opac, threshold) / threshold))
        extent = min(extent, extent_max)
        for c in range(n_cameras):
            rot, trans = _view(viewmats, c)
            (fx, fy, cx, cy), (lxp, lxn), (lyp, lyn) = _intrinsics(Ks, c, width, height)
            x = rot[0] * px + rot[1] * py + rot[2] * pz + trans[0]
            y = rot[3] * px + rot[4] * py + rot[5] * pz + trans[1]
            z_raw = rot[6] * px + rot[7] * py + rot[8] * pz + trans[2]
            in_depth = near_plane <= z_raw <= far_plane
            z = z_raw if in_depth else 1.0
            w = _matmul3(rot, m)
            tx = z * _clamp_ray(x / z, lxp, lxn)[0]
            ty = z * _clamp_ray(y / z, lyp, lyn)[0]
            j00, j02 = fx / z, -fx * tx / (z * z)
            j11, j12 = fy / z, -fy * ty / (z * z)
            t00, t01, t02 = (
                j00 * w[0] + j02 * w[6],
                j00 * w[1] + j02 * w[7],
                j00 * w[2] + j02 * w[8],
            )
            t10, t11, t12 = (
                j11 * w[3] + j12 * w[6],
                j11 * w[4] + j12 * w[7],
                j11 * w[5] + j12 * w[8],
            )
            a = t00 * t00 + t01 * t01 + t02 * t02 + eps2d
            b = t00 * t10 + t01 * t11 + t02 * t12
            cc = t10 * t10 + t11 * t11 + t12 * t12 + eps2d
            det = a * cc - b * b
            valid = in_depth and det > 0.0
            if not valid:
                det = 1.0
            mx, my = fx * x / z + cx, fy * y / z + cy
            out_means2d[c, g, 0] = mx
            out_means2d[c, g, 1] = my
            out_conics[c, g, 0] = cc / det
            out_conics[c, g, 1] = -b / det
            out_conics[c, g, 2] = a / det
            out_depths[c, g] = z_raw
            rx = np.ceil(extent * math.sqrt(max(a, 0.0)))
            ry = np.ceil(extent * math.sqrt(max(cc, 0.0)))
            valid = (
                valid
                and opac >= threshold
                and mx + rx > 0.0
                and mx - rx < width
                and my + ry > 0.0
                and my - ry < height
                and (rx > 0.0 or ry > 0.0)
            )
            out_radii[c, g, 0] = np.int32(rx) if valid else 0
            out_radii[c, g, 1] = np.int32(ry) if valid else 0


@njit(cache=True, parallel=True, error_model="numpy")
def project_backward(
    means,
    quats,
    scales,
    viewmats,
    Ks,
    width,
    height,
    near_plane,
    far_plane,
    eps2d,
    grad_means2d,
    grad_conics,
    grad_depths,
    out_grad_means,
    out_grad_quats,
    out_grad_scales,
):
    """Gradients of ``project_forward``'s means2d, conics and depths w.r.t. means, quats, scales.

    Given upstream gradients [C, N, 2], [C, N, 3], [C, N], writes grad_means [N, 3], grad_quats
    [N, 4], grad_scales [N, 3], summing over cameras in camera order. It is what autograd gives
    for ``projection.project``, culled Gaussians included: ``z' = 1`` (out of depth) and ``det = 1``
    (invalid) are constants; a clamped view-ray component passes no gradient to x / z' (only
    ``tx = z' lim`` to z'); at a tie of the clamp (measure zero) the gradient goes to x / z'
    (autograd splits it in half).
    """
    n_cameras, n = viewmats.shape[0], means.shape[0]
    for g in prange(n):
        m, r, uq, qnorm, qclamped, s = _scaled_rotation(quats, scales, g)
        px, py, pz = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
        gpx = gpy = gpz = 0.0
        gm0 = gm1 = gm2 = gm3 = gm4 = gm5 = gm6 = gm7 = gm8 = 0.0  # d loss / d M
        for c in range(n_cameras):
            rot, trans = _view(viewmats, c)
            (fx, fy, _, _), (lxp, lxn), (lyp, lyn) = _intrinsics(Ks, c, width, height)
            x = rot[0] * px + rot[1] * py + rot[2] * pz + trans[0]
            y = rot[3] * px + rot[4] * py + rot[5] * pz + trans[1]
            z_raw = rot[6] * px + rot[7] * py + rot[8] * pz + trans[2]
            in_depth = near_plane <= z_raw <= far_plane
            z = z_raw if in_depth else 1.0
            w = _matmul3(rot, m)
            ux, x_clamped = _clamp_ray(x / z, lxp, lxn)
            uy, y_clamped = _clamp_ray(y / z, lyp, lyn)
            tx, ty = z * ux, z * uy
            z2 = z * z
            j00, j02 = fx / z, -fx * tx / z2
            j11, j12 = fy / z, -fy * ty / z2
            t00, t01, t02 = (
                j00 * w[0] + j02 * w[6],
                j00 * w[1] + j02 * w[7],
                j00 * w[2] + j02 * w[8],
            )
            t10, t11, t12 = (
                j11 * w[3] + j12 * w[6],
                j11 * w[4] + j12 * w[7],
                j11 * w[5] + j12 * w[8],
            )
            a = t00 * t00 + t01 * t01 + t02 * t02 + eps2d
            b = t00 * t10 + t01 * t11 + t02 * t12
            cc = t10 * t10 + t11 * t11 + t12 * t12 + eps2d
            det = a * cc - b * b
            valid = in_depth and det > 0.0

            # conics (c, -b, a) / det
            g0, g1, g2 = (
                np.float64(grad_conics[c, g, 0]),
                np.float64(grad_conics[c, g, 1]),
                np.float64(grad_conics[c, g, 2]),
            )
            if valid:
                g_det = -(g0 * cc - g1 * b + g2 * a) / (det * det)
                ga = g2 / det + g_det * cc
                gb = -g1 / det - 2.0 * g_det * b
                gc = g0 / det + g_det * a
            else:
                ga, gb, gc = g2, -g1, g0
            # cov2d = T T^T with b = (cov01 + cov10) / 2: d T = 2 G T, G = [[ga, gb/2], [gb/2, gc]]
            d00 = 2.0 * ga * t00 + gb * t10
            d01 = 2.0 * ga * t01 + gb * t11
            d02 = 2.0 * ga * t02 + gb * t12
            d10 = gb * t00 + 2.0 * gc * t10
            d11 = gb * t01 + 2.0 * gc * t11
            d12 = gb * t02 + 2.0 * gc * t12
            # T = J W: d J = dT W^T (entries that are not constant 0), d W = J^T dT
            gj00 = d00 * w[0] + d01 * w[1] + d02 * w[2]
            gj02 = d00 * w[6] + d01 * w[7] + d02 * w[8]
            gj11 = d10 * w[3] + d11 * w[4] + d12 * w[5]
            gj12 = d10 * w[6] + d11 * w[7] + d12 * w[8]
            gw0, gw1, gw2 = j00 * d00, j00 * d01, j00 * d02
            gw3, gw4, gw5 = j11 * d10, j11 * d11, j11 * d12
            gw6 = j02 * d00 + j12 * d10
            gw7 = j02 * d01 + j12 * d11
            gw8 = j02 * d02 + j12 * d12
            # W = V M: d M += V^T d W
            gm0 += rot[0] * gw0 + rot[3] * gw3 + rot[6] * gw6
            gm1 += rot[0] * gw1 + rot[3] * gw4 + rot[6] * gw7
            gm2 += rot[0] * gw2 + rot[3] * gw5 + rot[6] * gw8
            gm3 += rot[1] * gw0 + rot[4] * gw3 + rot[7] * gw6
            gm4 += rot[1] * gw1 + rot[4] * gw4 + rot[7] * gw7
            gm5 += rot[1] * gw2 + rot[4] * gw5 + rot[7] * gw8
            gm6 += rot[2] * gw0 + rot[5] * gw3 + rot[8] * gw6
            gm7 += rot[2] * gw1 + rot[5] * gw4 + rot[8] * gw7
            gm8 += rot[2] * gw2 + rot[5] * gw5 + rot[8] * gw8

            # J's entries -> z', tx, ty
            z3 = z2 * z
            gz = -gj00 * fx / z2 - gj11 * fy / z2
            gz += 2.0 * fx * tx * gj02 / z3 + 2.0 * fy * ty * gj12 / z3
            gtx, gty = -fx * gj02 / z2, -fy * gj12 / z2
            # tx = z' clamp(x / z')
            gx, gy = 0.0, 0.0
            gz += gtx * ux + gty * uy
            if not x_clamped:
                gx += gtx
                gz -= gtx * x / z
            if not y_clamped:
                gy += gty
                gz -= gty * y / z
            # means2d = (fx x / z' + cx, fy y / z' + cy)
            gmx, gmy = np.float64(grad_means2d[c, g, 0]), np.float64(grad_means2d[c, g, 1])
            gx += gmx * fx / z
            gy += gmy * fy / z
            gz -= gmx * fx * x / z2 + gmy * fy * y / z2
            if not in_depth:  # z' = 1 is a constant
                gz = 0.0
            gz += np.float64(grad_depths[c, g])
            # m_c = V m + t
            gpx += rot[0] * gx + rot[3] * gy + rot[6] * gz
            gpy += rot[1] * gx + rot[4] * gy + rot[7] * gz
            gpz += rot[2] * gx + rot[5] * gy + rot[8] * gz

        out_grad_means[g, 0] = gpx
        out_grad_means[g, 1] = gpy
        out_grad_means[g, 2] = gpz
        # M = R diag(s)
        sx, sy, sz = s
        out_grad_scales[g, 0] = gm0 * r[0] + gm3 * r[3] + gm6 * r[6]
        out_grad_scales[g, 1] = gm1 * r[1] + gm4 * r[4] + gm7 * r[7]
        out_grad_scales[g, 2] = gm2 * r[2] + gm5 * r[5] + gm8 * r[8]
        r0, r1, r2 = gm0 * sx, gm1 * sy, gm2 * sz  # d loss / d R, row-major
        r3, r4, r5 = gm3 * sx, gm4 * sy, gm5 * sz
        r6, r7, r8 = gm6 * sx, gm7 * sy, gm8 * sz
        qw, qx, qy, qz = uq
        gqw = 2.0 * (-qz * r1 + qy * r2 + qz * r3 - qx * r5 - qy * r6 + qx * r7)
        gqx = 2.0 * (qy * r1 + qz * r2 + qy * r3 - 2.0 * qx * r4 - qw * r5 + qz * r6 + qw * r7)
        gqx -= 4.0 * qx * r8
        gqy = 2.0 * (-2.0 * qy * r0 + qx * r1 + qw * r2 + qx * r3 + qz * r5 - qw * r6 + qz * r7)
        gqy -= 4.0 * qy * r8
        gqz = 2.0 * (-2.0 * qz * r0 - qw * r1 + qx * r2 + qw * r3 - 2.0 * qz * r4 + qy * r5)
        gqz += 2.0 * (qx * r6 + qy * r7)
        # q / max(|q|, eps): project out the radial component unless the norm was clamped
        if not qclamped:
            dot = qw * gqw + qx * gqx + qy * gqy + qz * gqz
            gqw, gqx, gqy, gqz = gqw - dot * qw, gqx - dot * qx, gqy - dot * qy, gqz - dot * qz
        out_grad_quats[g, 0] = gqw / qnorm
        out_grad_quats[g, 1] = gqx / qnorm
        out_grad_quats[g, 2] = gqy / qnorm
        out_grad_quats[g, 3] = gqz / qnorm
