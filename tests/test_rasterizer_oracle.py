"""The reference and cpu backends against the independent brute-force oracle (tests/oracle.py)."""

from __future__ import annotations

import pytest
import torch
from oracle import oracle_render
from scenes import Scene, random_scene

from feature_splat import rasterize

NEAR = 0.2
BACKENDS = ["reference", "cpu"]


def render(scene: Scene, backend: str, **kwargs):
    return rasterize(
        *scene.args(), near_plane=NEAR, backgrounds=scene.backgrounds, backend=backend, **kwargs
    )


def assert_forward_matches(scene: Scene, backend: str) -> None:
    expected = oracle_render(*scene.args(), near_plane=NEAR, backgrounds=scene.backgrounds)
    out = render(scene, backend)
    # The scene is not trivially empty: most pixels are covered, some fully.
    assert float(expected[2].mean()) > 0.5 and float(expected[2].max()) > 0.99
    feats, depth, alpha = (t.double() for t in expected)
    torch.testing.assert_close(out.features.double(), feats, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha.double(), alpha, atol=1e-5, rtol=0)
    # Expected depth divides by alpha: compare the alpha-weighted depth at the same tolerance.
    torch.testing.assert_close(
        (out.depth * out.alpha).double(), depth * alpha, atol=1e-5, rtol=1e-6
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("dim", "width", "height", "n_cameras"),
    [(1, 37, 29, 2), (3, 48, 32, 1), (16, 37, 29, 2), (33, 21, 40, 1), (512, 20, 17, 2)],
)
def test_forward_matches_oracle(
    backend: str, dim: int, width: int, height: int, n_cameras: int
) -> None:
    n = 60 if dim == 512 else 250
    scene = random_scene(
        n=n, dim=dim, width=width, height=height, n_cameras=n_cameras, seed=dim, near_plane=NEAR
    )
    assert_forward_matches(scene, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_camera_features_match_oracle(backend: str) -> None:
    scene = random_scene(n=150, dim=4, n_cameras=2, seed=7, near_plane=NEAR)
    per_camera = torch.stack([scene.features, scene.features.flip(0)])
    scene = scene.with_params([*scene.params()[:4], per_camera])
    assert_forward_matches(scene, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_everything_culled_renders_background(backend: str) -> None:
    scene = random_scene(n=50, dim=3, seed=3, near_plane=NEAR)
    behind = scene.means.clone()
    behind[:, 2] = -behind[:, 2].abs() - 0.5  # every Gaussian behind the cameras
    scene = scene.with_params([behind, *scene.params()[1:]])
    out = render(scene, backend)
    expected = scene.backgrounds[:, None, None, :].expand_as(out.features)
    torch.testing.assert_close(out.features, expected)
    assert float(out.alpha.abs().max()) == 0.0
    assert int(out.meta["radii"].abs().max()) == 0


def _oracle_gradients(scene: Scene, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    params = [p.double().requires_grad_() for p in scene.params()]
    feats, depth, alpha = oracle_render(
        *params,
        scene.viewmats,
        scene.Ks,
        scene.width,
        scene.height,
        near_plane=NEAR,
        backgrounds=scene.backgrounds,
    )
    loss = (
        (feats * weights[0]).sum() + (depth * alpha * weights[1]).sum() + (alpha * weights[2]).sum()
    )
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dim", "n_cameras"), [(3, 2), (16, 1), (33, 2)])
def test_gradients_match_oracle(backend: str, dim: int, n_cameras: int) -> None:
    scene = random_scene(n=120, dim=dim, n_cameras=n_cameras, seed=100 + dim, near_plane=NEAR)
    g = torch.Generator().manual_seed(1)
    shape = (n_cameras, scene.height, scene.width)
    weights = [
        torch.randn(*shape, dim, generator=g),
        torch.randn(*shape, 1, generator=g),
        torch.randn(*shape, 1, generator=g),
    ]
    expected = _oracle_gradients(scene, [w.double() for w in weights])

    params = [p.clone().requires_grad_() for p in scene.params()]
    out = render(scene.with_params(params), backend)
    loss = (out.features * weights[0]).sum() + (out.depth * out.alpha * weights[1]).sum()
    loss = loss + (out.alpha * weights[2]).sum()
    grads = torch.autograd.grad(loss, params)
    for name, got, want in zip(
        ["means", "quats", "scales", "opacities", "features"], grads, expected, strict=True
    ):
        rel = float((got.double() - want).norm() / want.norm().clamp_min(1e-12))
        assert rel < 1e-3, f"{backend}: d loss / d {name} off by {rel:.2e} (relative)"


def test_means2d_gradient_matches_reference() -> None:
    """The cpu backend's screen-space gradient (what densification reads) equals autograd's."""
    scene = random_scene(n=200, dim=8, n_cameras=2, seed=11, near_plane=NEAR)
    grads = {}
    for backend in BACKENDS:
        out = render(
            scene.with_params([p.clone().requires_grad_() for p in scene.params()]), backend
        )
        out.meta["means2d"].retain_grad()
        (out.features.square().sum() + out.alpha.sum()).backward()
        grads[backend] = out.meta["means2d"].grad
    ref, cpu = grads["reference"], grads["cpu"]
    assert float(ref.abs().sum()) > 0
    assert float((cpu - ref).norm() / ref.norm()) < 1e-4
