"""The gsplat backend against the reference backend. Needs a CUDA GPU and gsplat; skipped otherwise."""

from __future__ import annotations

import pytest
import torch
from scenes import random_scene

from feature_splat import rasterize

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the gsplat backend is not exercised here", allow_module_level=True)
pytest.importorskip("gsplat")

NEAR = 0.2


@pytest.mark.parametrize("dim", [1, 3, 16, 33, 512])
def test_gsplat_matches_reference(dim: int) -> None:
    scene = random_scene(
        n=250, dim=dim, width=37, height=29, n_cameras=2, seed=dim, near_plane=NEAR
    )
    params = [p.clone().requires_grad_() for p in scene.params()]
    ref = rasterize(
        *params,
        scene.viewmats,
        scene.Ks,
        scene.width,
        scene.height,
        near_plane=NEAR,
        backgrounds=scene.backgrounds,
        backend="reference",
    )
    ref_loss = ref.features.sum() + ref.alpha.sum()
    ref_grads = torch.autograd.grad(ref_loss, params)

    cuda = [p.detach().cuda().requires_grad_() for p in scene.params()]
    out = rasterize(
        *cuda,
        scene.viewmats.cuda(),
        scene.Ks.cuda(),
        scene.width,
        scene.height,
        near_plane=NEAR,
        backgrounds=scene.backgrounds.cuda(),
        backend="gsplat",
    )
    torch.testing.assert_close(out.features.cpu(), ref.features.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.alpha.cpu(), ref.alpha.detach(), atol=1e-4, rtol=0)
    grads = torch.autograd.grad(out.features.sum() + out.alpha.sum(), cuda)
    for got, want in zip(grads, ref_grads, strict=True):
        assert float((got.cpu() - want).norm() / want.norm().clamp_min(1e-12)) < 1e-2


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
