"""The numba projection (``cpu_projection.project_cpu``) against the PyTorch ``projection.project``.

Forward values are compared with project() in float32 and float64; gradients with autograd of
project() in float64, and by finite differences (gradcheck).
"""

from __future__ import annotations

import math

import pytest
import torch
from scenes import cameras, random_scene
from torch import Tensor

from feature_splat.rasterizer.cpu_projection import project_cpu
from feature_splat.rasterizer.projection import ALPHA_THRESHOLD, Projected, project

PLANES = {"near_plane": 0.2, "far_plane": 1e10, "eps2d": 0.3}
FIELDS = ("means2d", "conics", "depths")


def scene_args(scene, dtype: torch.dtype = torch.float32) -> tuple:
    """project()'s positional arguments for a tests/scenes.py scene."""
    tensors = (scene.means, scene.quats, scene.scales, scene.opacities, scene.viewmats, scene.Ks)
    return (*(t.to(dtype) for t in tensors), scene.width, scene.height)


def wide_angle_args(n_cameras: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple:
    """Large, anisotropic, rotated Gaussians 45-70 degrees off-axis (the view ray is clamped to
    1.3x the field of view, about 31 degrees on this camera) whose boxes still reach the image,
    plus a few on-axis ones."""
    g = torch.Generator().manual_seed(seed)
    width, height = 37, 29
    n_wide = 24
    angle = math.radians(45.0) + math.radians(25.0) * torch.rand(n_wide, generator=g)
    direction = torch.randint(0, 4, (n_wide,), generator=g)  # +x, -x, +y, -y
    depth = 1.0 + 2.0 * torch.rand(n_wide, generator=g)
    lateral = depth * torch.tan(angle)
    sign = torch.where(direction % 2 == 0, 1.0, -1.0)
    means = torch.stack(
        [
            torch.where(direction < 2, sign * lateral, 0.3 * torch.randn(n_wide, generator=g)),
            torch.where(direction >= 2, sign * lateral, 0.3 * torch.randn(n_wide, generator=g)),
            depth,
        ],
        dim=1,
    )
    scales = lateral[:, None] * (0.3 + 0.4 * torch.rand(n_wide, 3, generator=g))
    scales[:, 2] *= 0.1  # flat
    centre = torch.tensor([[0.1, -0.2, 3.0], [-0.4, 0.3, 4.0], [0.5, 0.4, 2.5]])
    means = torch.cat([means, centre])
    scales = torch.cat(
        [scales, torch.tensor([[0.3, 0.02, 0.1], [0.05, 0.4, 0.2], [0.2, 0.2, 0.01]])]
    )
    total = means.shape[0]
    quats = torch.randn(total, 4, generator=g) * 2.0  # not normalised
    opacities = 0.3 + 0.6 * torch.rand(total, generator=g)
    viewmats, Ks = cameras(n_cameras, width, height)
    tensors = (means, quats, scales, opacities, viewmats, Ks)
    return (*(t.to(dtype) for t in tensors), width, height)


def clamped(args: tuple) -> Tensor:
    """[C, N] bool: the view ray of the Gaussian is clamped in x or y (project()'s limits)."""
    means, _, _, _, viewmats, Ks, width, height = args
    means_c = (viewmats[:, None, :3, :3] @ means[None, :, :, None])[..., 0] + viewmats[
        :, None, :3, 3
    ]
    x, y, z = means_c.unbind(-1)
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    ux, uy = x / z, y / z
    return (
        (ux > (width - cx) / fx + 0.3 * tan_fovx)
        | (ux < -(cx / fx + 0.3 * tan_fovx))
        | (uy > (height - cy) / fy + 0.3 * tan_fovy)
        | (uy < -(cy / fy + 0.3 * tan_fovy))
    )


def assert_forward_equal(ours: Projected, truth: Projected, rtol: float) -> None:
    """Values within rtol, with an absolute floor of rtol times the field's largest magnitude;
    radii exactly equal."""
    for name in FIELDS:
        a, b = getattr(ours, name), getattr(truth, name)
        assert a.dtype == b.dtype
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item(), msg=name)
    assert ours.radii.dtype == torch.int32
    assert torch.equal(ours.radii, truth.radii)


def gradients(fn, args: tuple, weights: list[Tensor]) -> tuple[Tensor, ...]:
    """d (sum of weights * (means2d, conics, depths)) / d (means, quats, scales)."""
    params = [t.detach().clone().requires_grad_() for t in args[:3]]
    out = fn(*params, *args[3:], **PLANES)
    loss = sum((getattr(out, name) * w).sum() for name, w in zip(FIELDS, weights, strict=True))
    return torch.autograd.grad(loss, params)


def random_weights(projected: Projected, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(getattr(projected, name).shape, generator=g, dtype=torch.float64)
        for name in FIELDS
    ]


def assert_gradients_equal(args: tuple, seed: int) -> None:
    """Analytic gradients = autograd of project() (float64), relative error < 1e-8."""
    weights = random_weights(project(*args, **PLANES), seed)
    truth = gradients(project, args, weights)
    ours = gradients(project_cpu, args, weights)
    for name, a, b in zip(("means", "quats", "scales"), ours, truth, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("n_cameras", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_matches_project(seed: int, n_cameras: int) -> None:
    """float32: values equal project()'s up to float32 rounding, radii exactly equal, both to
    project() in float32 and in float64."""
    scene = random_scene(n=200, n_cameras=n_cameras, seed=seed)
    args = scene_args(scene)
    ours = project_cpu(*args, **PLANES)
    truth = project(*args, **PLANES)
    assert_forward_equal(ours, truth, rtol=1e-5)
    assert torch.equal(ours.radii, project(*scene_args(scene, torch.float64), **PLANES).radii)
    visible = truth.visible
    assert visible.any() and not visible.all()  # the scene's culled cases are there


def test_forward_float64() -> None:
    scene = random_scene(n=200, n_cameras=3, seed=3)
    args = scene_args(scene, torch.float64)
    assert_forward_equal(project_cpu(*args, **PLANES), project(*args, **PLANES), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamped_jacobian(dtype: torch.dtype) -> None:
    """Gaussians far outside the field of view whose boxes reach the image (view ray clamped), and
    anisotropic rotated ones with unnormalised quaternions: forward and gradients."""
    args = wide_angle_args(dtype=dtype)
    truth = project(*args, **PLANES)
    assert (truth.visible & clamped(args)).sum() >= 5
    assert_forward_equal(
        project_cpu(*args, **PLANES), truth, rtol=1e-5 if dtype == torch.float32 else 1e-12
    )
    if dtype == torch.float64:
        assert_gradients_equal(args, seed=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_match_autograd(seed: int) -> None:
    """float64, random upstream weights: equal to autograd of project() for every Gaussian, the
    culled ones included (out of depth: z := 1 passes no gradient to z; det := 1 when invalid)."""
    scene = random_scene(n=200, n_cameras=1 + seed, seed=seed)
    args = scene_args(scene, torch.float64)
    assert_gradients_equal(args, seed)


def test_degenerate_inputs() -> None:
    """Zero quaternion (normalised with eps 1e-12), zero scales, opacities at and below 1/255."""
    args = list(scene_args(random_scene(n=20, n_cameras=2, seed=4), torch.float64))
    i = project(*args, **PLANES).visible.all(0).nonzero()[:7, 0].tolist()
    means, quats, scales, opacities = (t.clone() for t in args[:4])
    quats[i[0]] = 0.0
    quats[i[1]] = torch.tensor([1e-13, 0.0, 2e-13, 0.0])
    scales[i[2]] = 0.0
    scales[i[3], 1] = 0.0
    opacities[i[4]] = ALPHA_THRESHOLD * 1.01  # tiny box, kept
    opacities[i[5]] = ALPHA_THRESHOLD  # box of size 0: culled
    opacities[i[6]] = ALPHA_THRESHOLD * (1 - 1e-9)  # below the threshold: culled
    args[:4] = means, quats, scales, opacities
    args = tuple(args)
    ours = project_cpu(*args, **PLANES)
    truth = project(*args, **PLANES)
    assert_forward_equal(ours, truth, rtol=1e-12)
    assert truth.visible[:, i[:5]].all() and not truth.visible[:, i[5:]].any()
    assert_gradients_equal(args, seed=4)
    f32 = tuple(t.float() if torch.is_tensor(t) else t for t in args)
    assert_forward_equal(project_cpu(*f32, **PLANES), project(*f32, **PLANES), rtol=1e-5)


def test_float32_gradients_close_to_float64() -> None:
    scene = random_scene(n=200, n_cameras=2, seed=5)
    args64 = scene_args(scene, torch.float64)
    weights = random_weights(project(*args64, **PLANES), seed=5)
    truth = gradients(project, args64, weights)
    ours = gradients(project_cpu, scene_args(scene), [w.float() for w in weights])
    for a, b in zip(ours, truth, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_gradcheck() -> None:
    """Finite differences on a tiny float64 scene: visible Gaussians away from the clamp's and the
    culling's boundaries (one of them with its view ray well clamped)."""
    means = torch.tensor([[0.1, -0.2, 3.0], [-0.4, 0.3, 4.0], [0.2, 0.1, 2.0], [5.0, 0.2, 2.5]])
    scales = torch.tensor([[0.3, 0.05, 0.1], [0.1, 0.4, 0.2], [0.2, 0.15, 0.05], [1.5, 1.0, 0.2]])
    quats = torch.tensor(
        [[0.9, 0.1, -0.3, 0.2], [0.2, 0.7, 0.1, -0.5], [1.3, 0.0, 0.4, 0.1], [0.5, -0.5, 0.5, 0.4]]
    )
    opacities = torch.full((4,), 0.8)
    viewmats, Ks = cameras(2, 37, 29)
    args = (*(t.double() for t in (means, quats, scales, opacities, viewmats, Ks)), 37, 29)
    proj = project(*args, **PLANES)
    assert proj.visible.all() and clamped(args)[:, 3].all() and not clamped(args)[:, :3].any()

    def fn(means: Tensor, quats: Tensor, scales: Tensor) -> tuple[Tensor, ...]:
        out = project_cpu(means, quats, scales, *args[3:], **PLANES)
        return out.means2d, out.conics, out.depths

    params = [t.clone().requires_grad_() for t in args[:3]]
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_thread_count_bit_identical() -> None:
    scene = random_scene(n=3000, n_cameras=3, seed=6)
    args = scene_args(scene)
    weights = [w.float() for w in random_weights(project(*args, **PLANES), seed=6)]
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = project_cpu(*args, **PLANES)
            results.append(
                [
                    *(getattr(out, n) for n in (*FIELDS, "radii")),
                    *gradients(project_cpu, args, weights),
                ]
            )
    finally:
        torch.set_num_threads(2)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_falls_back_when_cameras_require_grad() -> None:
    """viewmats / Ks requiring grad: project() is used, so the cameras get gradients."""
    args = list(scene_args(random_scene(n=20, n_cameras=1, seed=7), torch.float64))
    args[4] = args[4].clone().requires_grad_()
    out = project_cpu(*args, **PLANES)
    out.means2d.sum().backward()
    assert args[4].grad is not None and args[4].grad.abs().sum() > 0
