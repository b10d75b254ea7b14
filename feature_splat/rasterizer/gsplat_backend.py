"""The ``gsplat`` backend: delegates to :func:`gsplat.rasterization` (CUDA tensors only)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from feature_splat.errors import BackendUnavailableError


def gsplat_available() -> bool:
    """Whether gsplat can be imported (its CUDA kernels compile on first use)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize_gsplat(
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
    near_plane: float,
    far_plane: float,
    eps2d: float,
    tile_size: int,
    backgrounds: Tensor,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """Render with gsplat; returns features, raw depth (sum_i w_i z_i), alpha and gsplat's meta."""
    if not means.is_cuda:
        raise BackendUnavailableError(
            "backend 'gsplat': needs CUDA tensors; use backend='cpu' on the CPU"
        )
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise BackendUnavailableError(
            "backend 'gsplat': gsplat is not installed (pip install 'feature-splat[cuda]')"
        ) from err
    colors = features[0] if features.shape[0] == 1 else features
    renders, alphas, meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode="RGB+ED",
        packed=False,
        sh_degree=None,
    )
    if meta["radii"].dim() == 2:  # gsplat < 1.5: one radius for both axes, [C, N]
        meta["radii"] = meta["radii"][..., None].expand(-1, -1, 2)
    expected_depth = renders[..., -1:]
    # gsplat divides depth by alpha (clamped at 1e-10); undo it so every backend returns raw depth.
    return renders[..., :-1], expected_depth * alphas.clamp_min(1e-10), alphas, meta
