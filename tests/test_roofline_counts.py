"""The roofline benchmark's pair counts against brute force over pixel centres (no timing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feature_splat.bench.roofline import (
    RooflineBenchConfig,
    count_pairs,
    kernel_inputs,
    run_forward,
)
from feature_splat.errors import ConfigError
from feature_splat.rasterizer import cpu
from feature_splat.rasterizer._cpu_kernels import LANES, NARROW_BOX
from feature_splat.rasterizer.projection import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    MAX_EXTENT,
    MIN_TRANSMITTANCE,
    Projected,
)


def _isotropic(centres, sigmas, opacities, width, height, dim=3):
    """Kernel inputs for isotropic screen-space Gaussians, front to back in the order given, with
    radii by projection's rule; and each one's alpha at every pixel centre [G, H, W] (float32 exp,
    0 below 1/255)."""
    n = len(centres)
    means2d = torch.tensor(centres, dtype=torch.float32)[None]
    inv = torch.tensor([1.0 / s**2 for s in sigmas], dtype=torch.float32)
    conics = torch.stack([inv, torch.zeros(n), inv], dim=-1)[None]
    opac = torch.tensor(opacities, dtype=torch.float32)
    extent = [min(MAX_EXTENT, math.sqrt(2 * math.log(255 * o))) for o in opacities]
    radii = torch.tensor([[math.ceil(k * s)] * 2 for k, s in zip(extent, sigmas, strict=True)])
    proj = Projected(means2d, conics, torch.arange(1.0, n + 1)[None], radii.to(torch.int32)[None])
    features = torch.randn(1, n, dim, generator=torch.Generator().manual_seed(0))
    inputs = kernel_inputs(proj, opac, features, torch.zeros(1, dim), width, height)

    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    alphas, sigma_margin = [], np.inf
    for (mx, my), s, o in zip(centres, sigmas, opacities, strict=True):
        m = np.float32([mx, my]).astype(np.float64)
        sigma = 0.5 * ((xs - m[0]) ** 2 + (ys - m[1]) ** 2) * float(np.float32(1.0 / s**2))
        alpha = np.minimum(MAX_ALPHA, (np.float32(o) * np.exp(np.float32(-sigma))).astype(float))
        alphas.append(np.where(alpha >= ALPHA_THRESHOLD, alpha, 0.0).astype(np.float64))
        s_max = math.log(float(np.float32(o)) / ALPHA_THRESHOLD)
        sigma_margin = min(sigma_margin, np.abs(sigma - s_max).min())
    # No pixel centre within round-off of the 1/255 boundary: the counts are then unambiguous.
    assert sigma_margin > 0.005, "test scene has a pixel on the alpha threshold"
    return inputs, np.stack(alphas)


def test_one_gaussian_in_one_tile_counts_its_pixels():
    inputs, alphas = _isotropic([(8.3, 7.6)], [1.5], [0.8], 16, 16)
    expected = int((alphas[0] > 0).sum())
    fwd = run_forward(inputs, cpu._configure_threads())
    counts = count_pairs(inputs, fwd.last_ids)
    assert counts["intersections"] == 1 and counts["pixels"] == 256
    f, b = counts["forward"], counts["backward"]
    assert f["visited"] == f["live"] == f["blended"] == expected
    assert f["stopped"] == 0 and f["skipped"] == 0
    assert b["visited"] == b["blended"] == b["unclamped"] == expected
    assert f["gaussians"] == b["gaussians"] == 1
    # Its bounding box: the pixel centres within the radius (5 px) of the mean, per axis. It is
    # wider than NARROW_BOX, so each of its rows computes a whole tile row (LANES pixels).
    centres = np.arange(16) + 0.5
    nx, ny = (int((np.abs(centres - m) <= 5).sum()) for m in (8.3, 7.6))
    assert nx >= NARROW_BOX
    assert f["rows"] == b["rows"] == ny and f["box_pixels"] == b["box_pixels"] == nx * ny
    assert f["lanes"] == b["lanes"] == ny * LANES
    assert counts["last_ids_mismatch"] == 0
    np.testing.assert_allclose(counts["transmittance"][0], 1.0 - alphas[0], rtol=1e-5)


def test_two_opaque_gaussians_stop_the_back_one_where_they_overlap():
    # A broad near-opaque front Gaussian over the whole 32 x 32 image (four tiles; alpha clamped to
    # 0.999 at its 4 central pixels), and a small near-opaque one behind it, off-centre.
    inputs, alphas = _isotropic([(15.9, 16.1), (16.3, 17.1)], [20.0, 3.0], [0.9999, 0.9999], 32, 32)
    a1, a2 = alphas
    n1, n2 = int((a1 > 0).sum()), int((a2 > 0).sum())
    behind = (1.0 - a1) * (1.0 - a2)
    stops = (a2 > 0) & (behind <= MIN_TRANSMITTANCE)
    log_margin = np.abs(np.log(behind[a2 > 0]) - math.log(MIN_TRANSMITTANCE)).min()
    assert log_margin > 1e-3, "test scene has a pixel on the stopping boundary"
    stopped = int(stops.sum())
    assert n1 == 32 * 32 and 0 < stopped < n2  # the back one is partly stopped

    fwd = run_forward(inputs, cpu._configure_threads())
    counts = count_pairs(inputs, fwd.last_ids)
    assert counts["intersections"] == 8  # both Gaussians in each of the four tiles
    f, b = counts["forward"], counts["backward"]
    assert f["visited"] == f["live"] == n1 + n2
    assert f["stopped"] == stopped
    assert f["blended"] == n1 + n2 - stopped
    # The backward blends a pixel only up to its last contributor: not the stopped pairs.
    assert b["visited"] == n1 + n2
    assert b["blended"] == n1 + n2 - stopped
    clamped = int((a1 == MAX_ALPHA).sum() + ((a2 == MAX_ALPHA) & ~stops).sum())
    assert clamped > 0 and b["unclamped"] == b["blended"] - clamped
    assert counts["last_ids_mismatch"] == 0
    expected_t = np.where(stops, 1.0 - a1, behind)
    np.testing.assert_allclose(counts["transmittance"][0], expected_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fwd.transmittance[0], expected_t, rtol=1e-5, atol=1e-7)


def test_config_validates():
    with pytest.raises(ConfigError):
        RooflineBenchConfig(threads=())
    with pytest.raises(ConfigError):
        RooflineBenchConfig(threads=(0,))
    with pytest.raises(ConfigError):
        RooflineBenchConfig(repeats=0)
