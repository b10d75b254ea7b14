"""The gsplat backend against the brute-force oracle (tests/oracle.py) and the cpu kernels.

Needs a CUDA GPU and gsplat; skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch
from oracle import oracle_render
from scenes import random_scene

from feature_splat import rasterize

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the gsplat backend is not exercised here", allow_module_level=True)
pytest.importorskip("gsplat")

NEAR = 0.2


@pytest.mark.parametrize("dim", [1, 3, 16, 33, 512])
def test_gsplat_matches_the_oracle(dim: int) -> None:
    """Features, depth and alpha against the brute-force oracle (float64), and the gradients
    of all three against the oracle's autograd."""
    scene = random_scene(
        n=250, dim=dim, width=37, height=29, n_cameras=2, seed=dim, near_plane=NEAR
    )
    g = torch.Generator().manual_seed(dim)
    shape = (2, scene.height, scene.width)
    weights = [torch.randn(*shape, dim, generator=g), torch.randn(*shape, 1, generator=g),
               torch.randn(*shape, 1, generator=g)]  # fmt: skip

    params = [p.double().requires_grad_() for p in scene.params()]
    feats, depth, alpha = oracle_render(
        *params, scene.viewmats.double(), scene.Ks.double(), scene.width, scene.height,
        near_plane=NEAR, backgrounds=scene.backgrounds.double(),
    )  # fmt: skip
    loss = (feats * weights[0].double()).sum() + (depth * alpha * weights[1].double()).sum()
    loss = loss + (alpha * weights[2].double()).sum()
    expected_grads = torch.autograd.grad(loss, params)

    cuda = [p.detach().cuda().requires_grad_() for p in scene.params()]
    out = rasterize(
        *cuda, scene.viewmats.cuda(), scene.Ks.cuda(), scene.width, scene.height,
        near_plane=NEAR, backgrounds=scene.backgrounds.cuda(), backend="gsplat",
    )  # fmt: skip
    assert float(alpha.mean()) > 0.5  # not a trivially empty scene
    torch.testing.assert_close(out.features.cpu().double(), feats.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.alpha.cpu().double(), alpha.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        (out.depth * out.alpha).cpu().double(), (depth * alpha).detach(), atol=1e-4, rtol=1e-5
    )
    w = [t.cuda() for t in weights]
    loss = (out.features * w[0]).sum() + (out.depth * out.alpha * w[1]).sum()
    loss = loss + (out.alpha * w[2]).sum()
    grads = torch.autograd.grad(loss, cuda)
    for name, got, want in zip(
        ["means", "quats", "scales", "opacities", "features"], grads, expected_grads, strict=True
    ):
        rel = float((got.cpu().double() - want).norm() / want.norm().clamp_min(1e-12))
        assert rel < 1e-2, f"gsplat: d loss / d {name} off by {rel:.2e} (relative)"


@pytest.mark.parametrize(("dim", "stride"), [(3, 8), (130, None)])
def test_gsplat_accumulation_matches_the_cpu_kernel(dim: int, stride: int | None) -> None:
    from feature_splat.rasterizer import accumulate

    scene = random_scene(n=250, dim=1, width=37, height=29, n_cameras=2, seed=dim)
    values = torch.randn(2, 4, 5, dim, generator=torch.Generator().manual_seed(dim))
    means, quats, scales, opacities, _, viewmats, Ks, width, height = scene.args()
    cpu = accumulate(
        means, quats, scales, opacities, viewmats, Ks, width, height, values, stride=stride,
        near_plane=NEAR, backend="cpu",
    )  # fmt: skip
    cuda = accumulate(
        means.cuda(), quats.cuda(), scales.cuda(), opacities.cuda(), viewmats.cuda(), Ks.cuda(),
        width, height, values.cuda(), stride=stride, near_plane=NEAR, backend="gsplat",
    )  # fmt: skip
    torch.testing.assert_close(cuda.weights.cpu(), cpu.weights, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cuda.sums.cpu(), cpu.sums, atol=1e-4, rtol=1e-4)
