"""``rasterize()``: the one function everything in feature-splat renders through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from feature_splat.errors import (
    BackendUnavailableError,
    CameraError,
    InputShapeError,
    NonFiniteError,
)
from feature_splat.rasterizer.backends import BACKENDS, Backend
from feature_splat.rasterizer.cpu import rasterize_cpu
from feature_splat.rasterizer.cpu_projection import project_cpu
from feature_splat.rasterizer.gsplat_backend import gsplat_available, rasterize_gsplat
from feature_splat.rasterizer.projection import project
from feature_splat.rasterizer.reference import rasterize_reference


@dataclass
class RenderOutput:
    """What :func:`rasterize` returns for C cameras.

    ``meta`` carries what gsplat's densification strategies read as ``info``: ``width``, ``height``,
    ``n_cameras``, ``radii`` [C, N, 2], ``gaussian_ids`` (None: not packed) and ``means2d`` [C, N, 2],
    whose gradient is retained when a strategy asks for it.
    """

    features: Tensor  # [C, H, W, D], background included
    depth: Tensor  # [C, H, W, 1], expected depth sum_i w_i z_i / alpha
    alpha: Tensor  # [C, H, W, 1], 1 - final transmittance
    meta: dict[str, Any] = field(default_factory=dict)


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    features: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    backend: Backend = "auto",
    validate: bool = True,
) -> RenderOutput:
    """Render N Gaussians carrying D-channel features into C pinhole cameras.

    Args:
        means: [N, 3] centres in world coordinates.
        quats: [N, 4] rotations (w, x, y, z), normalised here.
        scales: [N, 3] positive standard deviations along the rotated axes.
        opacities: [N] in [0, 1].
        features: [N, D] or [C, N, D], any D >= 1 (RGB is D = 3; concatenate RGB and features to
            render both in one pass).
        viewmats: [C, 4, 4] world -> camera, OpenCV axes (x right, y down, z forward).
        Ks: [C, 3, 3] pinhole intrinsics.
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians whose centre depth lies outside are culled.
        eps2d: added to the 2D covariance diagonal (anti-aliasing low-pass, in pixels^2).
        tile_size: tile edge in pixels.
        backgrounds: [C, D] or [D] colour behind everything (default 0).
        backend: "reference" (pure PyTorch), "cpu" (fast, numba), "gsplat" (CUDA), or "auto":
            gsplat for CUDA tensors when installed, cpu otherwise.
        validate: check the values (finite, scales >= 0, opacities in [0, 1], rigid view
            matrices, pinhole intrinsics: :func:`check_values`, one host sync in all). Shapes are
            always checked. Callers that render their own objects many times (the trainer, the
            viewer) check once and pass False.

    Returns:
        A :class:`RenderOutput`. Conventions follow ``gsplat.rasterization`` (EWA projection, alpha
        clamped to 0.999, alpha < 1/255 skipped, stop at transmittance <= 1e-4).
    """
    tensors = (means, quats, scales, opacities, features, viewmats, Ks, backgrounds)
    devices = {t.device for t in tensors if isinstance(t, Tensor)}
    if len(devices) > 1:
        raise InputShapeError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    n = _check_gaussian_shapes(means, quats, scales, opacities)
    n_cameras = _check_camera_args(
        viewmats, Ks, width, height, near_plane, far_plane, eps2d, tile_size
    )
    features, backgrounds = _check_feature_shapes(features, backgrounds, n, n_cameras)
    if validate:
        check_values(means, quats, scales, opacities, viewmats, Ks, features, backgrounds)
    backend = _choose_backend(backend, means)
    if backend == "gsplat":
        feats, raw_depth, alpha, meta = rasterize_gsplat(
            means,
            quats,
            scales,
            opacities,
            features,
            viewmats,
            Ks,
            width,
            height,
            near_plane=near_plane,
            far_plane=far_plane,
            eps2d=eps2d,
            tile_size=tile_size,
            backgrounds=backgrounds,
        )
    else:
        proj = (project_cpu if backend == "cpu" else project)(
            means,
            quats,
            scales,
            opacities,
            viewmats,
            Ks,
            width,
            height,
            near_plane=near_plane,
            far_plane=far_plane,
            eps2d=eps2d,
        )
        composite = rasterize_reference if backend == "reference" else rasterize_cpu
        feats, raw_depth, alpha = composite(
            proj, opacities, features, backgrounds, width, height, tile_size
        )
        meta = {
            "width": width,
            "height": height,
            "n_cameras": n_cameras,
            "tile_size": tile_size,
            "radii": proj.radii,
            "means2d": proj.means2d,
            "depths": proj.depths,
            "conics": proj.conics,
            "gaussian_ids": None,
        }
    meta["backend"] = backend
    depth = raw_depth / alpha.clamp_min(1e-10)
    return RenderOutput(features=feats, depth=depth, alpha=alpha, meta=meta)


def _choose_backend(backend: str, means: Tensor) -> str:
    if backend == "auto":
        return "gsplat" if means.is_cuda and gsplat_available() else "cpu"
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"backend: expected one of {('auto', *BACKENDS)}, got {backend!r}"
        )
    if backend == "cpu" and means.device.type != "cpu":
        raise BackendUnavailableError(
            f"backend 'cpu': tensors are on {means.device}; move them to the CPU or use 'gsplat'"
        )
    return backend


def _check_shape(name: str, value: Tensor, shape: tuple[int | None, ...], hint: str) -> None:
    if not isinstance(value, Tensor):
        raise InputShapeError(f"{name}: expected a torch.Tensor {hint}, got {type(value).__name__}")
    ok = value.ndim == len(shape) and all(
        s is None or s == v for s, v in zip(shape, value.shape, strict=True)
    )
    if not ok:
        raise InputShapeError(f"{name}: expected shape {hint}, got {list(value.shape)}")
    if not value.is_floating_point():
        raise InputShapeError(f"{name}: expected a floating-point tensor, got {value.dtype}")


def _check_gaussian_shapes(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor) -> int:
    """Shapes and dtypes of the Gaussians; returns N."""
    _check_shape("means", means, (None, 3), "[N, 3]")
    n = means.shape[0]
    _check_shape("quats", quats, (n, 4), f"[{n}, 4] (N from means)")
    _check_shape("scales", scales, (n, 3), f"[{n}, 3]")
    _check_shape("opacities", opacities, (n,), f"[{n}]")
    return n


def _check_camera_args(
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    tile_size: int,
) -> int:
    """Camera matrices, image size and projection options; returns C."""
    _check_shape("viewmats", viewmats, (None, 4, 4), "[C, 4, 4]")
    n_cameras = viewmats.shape[0]
    if n_cameras == 0:
        raise InputShapeError("viewmats: expected at least one camera, got C = 0")
    _check_shape("Ks", Ks, (n_cameras, 3, 3), f"[{n_cameras}, 3, 3] (C from viewmats)")
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputShapeError(f"{name}: expected a positive int, got {value!r}")
    if not 0 < near_plane < far_plane:
        raise CameraError(
            f"near_plane/far_plane: expected 0 < near < far, got {near_plane}, {far_plane}"
        )
    if eps2d < 0:
        raise InputShapeError(f"eps2d: expected >= 0, got {eps2d}")
    return n_cameras


def _check_feature_shapes(
    features: Tensor, backgrounds: Tensor | None, n: int, n_cameras: int
) -> tuple[Tensor, Tensor]:
    """Features as [1 or C, N, D] (D >= 1) and backgrounds as [C, D] (default 0)."""
    if not isinstance(features, Tensor) or features.ndim not in (2, 3):
        shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise InputShapeError(f"features: expected [N, D] or [C, N, D], got {shape}")
    if features.ndim == 2:
        features = features[None]
    _check_shape("features", features, (None, n, None), f"[{n}, D] or [{n_cameras}, {n}, D]")
    if features.shape[0] not in (1, n_cameras):
        raise InputShapeError(
            f"features: leading dimension must be C = {n_cameras}, got {features.shape[0]}"
        )
    dim = features.shape[-1]
    if dim < 1:
        raise InputShapeError("features: expected at least one channel (D >= 1), got D = 0")
    if backgrounds is None:
        return features, torch.zeros(n_cameras, dim, dtype=features.dtype, device=features.device)
    if backgrounds.ndim == 1:
        backgrounds = backgrounds.expand(n_cameras, -1)
    _check_shape("backgrounds", backgrounds, (n_cameras, dim), f"[{n_cameras}, {dim}] or [{dim}]")
    return features, backgrounds


def check_values(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor | None = None,
    Ks: Tensor | None = None,
    features: Tensor | None = None,
    backgrounds: Tensor | None = None,
) -> None:
    """The value checks of :func:`rasterize` (shapes are assumed checked): every tensor finite,
    scales >= 0, opacities in [0, 1], no zero quaternion, view matrices rigid (OpenCV world ->
    camera) and intrinsics pinhole with zero skew. All tests are reduced on the tensors' device
    and read back in one host sync; the first failing one raises its error. Cameras (viewmats
    and Ks, given together) and features are optional: a field can be checked once on its own."""
    named = {
        "means": means, "quats": quats, "scales": scales, "opacities": opacities,
        "features": features, "viewmats": viewmats, "Ks": Ks, "backgrounds": backgrounds,
    }  # fmt: skip
    named = {name: t.detach() for name, t in named.items() if t is not None}
    tests = {f"finite {name}": ~torch.isfinite(t).all() for name, t in named.items()}
    tests |= {
        "scales": (named["scales"] < 0).any(),
        "opacities": ((named["opacities"] < 0) | (named["opacities"] > 1)).any(),
        "quats": (named["quats"].norm(dim=-1) < 1e-12).any(),
    }
    if "viewmats" in named:
        rot = named["viewmats"][:, :3, :3].double()
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        ortho_error = (rot @ rot.transpose(1, 2) - eye).abs().amax(dim=(1, 2))
        det = torch.linalg.det(rot)
        bottom = named["viewmats"][:, 3]
        K = named["Ks"]
        bad_rows = (bottom - bottom.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(dim=-1) > 1e-6
        bad_K = (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)
        bad_K |= (K[:, 0, 1].abs() > 0) | (K[:, 1, 0].abs() > 0)
        bad_K |= (K[:, 2] - K.new_tensor([0.0, 0.0, 1.0])).abs().amax(-1) > 1e-6
        tests |= {
            "viewmats rows": bad_rows.any(),
            "viewmats rotation": ((ortho_error > 1e-3) | (det < 0)).any(),
            "Ks": bad_K.any(),
        }
    failed = torch.stack(list(tests.values())).cpu().tolist()  # the one host sync
    if not any(failed):
        return
    test = next(name for name, bad in zip(tests, failed, strict=True) if bad)
    if test.startswith("finite "):
        name = test.removeprefix("finite ")
        first = (~torch.isfinite(named[name])).nonzero()[0].tolist()
        raise NonFiniteError(f"{name}: non-finite value (NaN or inf) at index {first}")
    if test == "scales":
        raise InputShapeError(
            "scales: expected non-negative (activated) scales; pass exp(log_scales)"
        )
    if test == "opacities":
        raise InputShapeError("opacities: expected values in [0, 1]; pass sigmoid(logits)")
    if test == "quats":
        raise InputShapeError("quats: a quaternion has zero norm")
    if test == "viewmats rows":
        cam = int(bad_rows.nonzero()[0])
        raise CameraError(
            f"viewmats[{cam}]: last row must be [0, 0, 0, 1], got {bottom[cam].tolist()}"
        )
    if test == "viewmats rotation":
        cam = int(((ortho_error > 1e-3) | (det < 0)).nonzero()[0])
        raise CameraError(
            f"viewmats[{cam}]: rotation block must be orthonormal with determinant +1 "
            f"(world -> camera, OpenCV axes); got |R R^T - I| = {float(ortho_error[cam]):.3g}, "
            f"det = {float(det[cam]):.3g}"
        )
    cam = int(bad_K.nonzero()[0])
    raise CameraError(
        f"Ks[{cam}]: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, "
        f"got {K[cam].tolist()}"
    )
