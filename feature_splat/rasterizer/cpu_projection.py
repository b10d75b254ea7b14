"""EWA projection for the ``cpu`` backend: numba kernels with an analytic backward.

:func:`project_cpu` is a drop-in replacement for :func:`projection.project` (same arguments, same
:class:`Projected`, same values up to float rounding), differentiable w.r.t. means, quats and
scales.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from feature_splat.rasterizer import _cpu_projection_kernels as kernels
from feature_splat.rasterizer.cpu import _configure_threads
from feature_splat.rasterizer.projection import Projected, project


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Project(torch.autograd.Function):
    """The projection kernels; differentiable w.r.t. means, quats and scales."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, size, planes):
        width, height = size
        near_plane, far_plane, eps2d = planes
        n_cameras, n = viewmats.shape[0], means.shape[0]
        dtype = means.dtype
        means2d = torch.empty(n_cameras, n, 2, dtype=dtype)
        conics = torch.empty(n_cameras, n, 3, dtype=dtype)
        depths = torch.empty(n_cameras, n, dtype=dtype)
        radii = torch.empty(n_cameras, n, 2, dtype=torch.int32)
        _configure_threads()
        kernels.project_forward(
            _numpy(means), _numpy(quats), _numpy(scales), _numpy(opacities), _numpy(viewmats),
            _numpy(Ks), width, height, near_plane, far_plane, eps2d,
            means2d.numpy(), conics.numpy(), depths.numpy(), radii.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.size, ctx.planes = size, planes
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _grad_radii):
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        width, height = ctx.size
        near_plane, far_plane, eps2d = ctx.planes
        n_cameras, n = viewmats.shape[0], means.shape[0]
        dtype = means.dtype

        def upstream(grad: Tensor | None, *shape: int) -> np.ndarray:
            return torch.zeros(shape, dtype=dtype).numpy() if grad is None else _numpy(grad)

        grad_means = torch.empty(n, 3, dtype=dtype)
        grad_quats = torch.empty(n, 4, dtype=dtype)
        grad_scales = torch.empty(n, 3, dtype=dtype)
        _configure_threads()
        kernels.project_backward(
            _numpy(means), _numpy(quats), _numpy(scales), _numpy(viewmats), _numpy(Ks),
            width, height, near_plane, far_plane, eps2d,
            upstream(grad_means2d, n_cameras, n, 2), upstream(grad_conics, n_cameras, n, 3),
            upstream(grad_depths, n_cameras, n),
            grad_means.numpy(), grad_quats.numpy(), grad_scales.numpy(),
        )  # fmt: skip
        return grad_means, grad_quats, grad_scales, None, None, None, None, None


def project_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float,
    far_plane: float,
    eps2d: float,
) -> Projected:
    """Project N Gaussians into C pinhole cameras: :func:`projection.project` on numba kernels.

    CPU tensors, float32 or float64 (computed in float64 either way; outputs in ``means``' dtype).
    Differentiable w.r.t. ``means``, ``quats`` and ``scales``; ``opacities`` only decide culling
    and get no gradient (as in project()). The kernels do not differentiate ``viewmats`` or
    ``Ks``: if either requires grad, this returns ``project(...)`` (plain PyTorch) instead.
    Gradients of culled Gaussians are autograd's of project() (see
    ``_cpu_projection_kernels.project_backward``).
    """
    if viewmats.requires_grad or Ks.requires_grad:
        return project(
            means, quats, scales, opacities, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        )  # fmt: skip
    means2d, conics, depths, radii = _Project.apply(
        means, quats, scales, opacities, viewmats, Ks,
        (int(width), int(height)), (float(near_plane), float(far_plane), float(eps2d)),
    )  # fmt: skip
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii)
