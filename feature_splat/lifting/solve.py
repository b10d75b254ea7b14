"""Training-free features for fixed Gaussians: the rendering-weight average, then compression.

With the geometry fixed, a rendered feature is linear in the Gaussians' features, so the best
features form a sparse least-squares problem. Its row-normalised solution (Occam's LGS, Dr. Splat)
gives each Gaussian the average of the teacher's features over the pixels it renders into,
weighted by its rendering weight ``w = T * alpha``. One pass over the training views computes it
(:func:`~feature_splat.rasterizer.accumulate`). A PCA gives F channels and a linear decoder, so
the result is an ordinary feature field: either of the teacher's features, projected before
lifting (F channels to accumulate instead of M: the fast default), or of the lifted features at the
teacher's full width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from rich.progress import track
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import ConfigError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField
from feature_splat.rasterizer import accumulate, rasterize
from feature_splat.rasterizer.backends import Backend
from feature_splat.teachers import to_teacher_cells


@dataclass
class PcaBasis:
    """An affine map between the teacher's M channels and F principal coefficients."""

    mean: Tensor  # [M]
    directions: Tensor  # [M, F] orthonormal columns, strongest first

    def project(self, features: Tensor) -> Tensor:
        """Coefficients [..., F] of features [..., M]."""
        return (features.float() - self.mean) @ self.directions

    def decoder(self) -> SpeedUpDecoder:
        """The linear speed-up decoder F -> M that maps coefficients back."""
        width, dim = self.directions.shape
        decoder = SpeedUpDecoder(dim, width)
        with torch.no_grad():
            decoder.layers[0].weight.copy_(self.directions)
            decoder.layers[0].bias.copy_(self.mean)
        return decoder


def _principal(sum_x: Tensor, sum_xx: Tensor, total: Tensor, dim: int) -> PcaBasis:
    """The ``dim`` strongest principal directions from weighted sums (float64)."""
    width = sum_x.shape[0]
    if not 1 <= dim <= width:
        raise ConfigError(f"feature_dim: expected 1..{width} (the teacher's width), got {dim}")
    mean = sum_x / total.clamp_min(1e-30)
    covariance = sum_xx / total.clamp_min(1e-30) - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(covariance)
    return PcaBasis(mean.float(), vectors[:, -dim:].flip(1).float().contiguous())


def teacher_basis(teacher_maps: Tensor, dim: int) -> PcaBasis:
    """PCA of the teacher's features over every cell of ``teacher_maps`` [V, h, w, M]."""
    width = teacher_maps.shape[-1]
    sum_x = torch.zeros(width, dtype=torch.float64)
    sum_xx = torch.zeros(width, width, dtype=torch.float64)
    for view in range(len(teacher_maps)):
        x = teacher_maps[view].reshape(-1, width).double()
        sum_x += x.sum(0)
        sum_xx += x.T @ x
    total = torch.tensor(float(teacher_maps[..., 0].numel()), dtype=torch.float64)
    return _principal(sum_x, sum_xx, total, dim)


def lifted_basis(features: Tensor, weights: Tensor, dim: int) -> PcaBasis:
    """PCA of lifted features [N, M], each Gaussian weighted by its total rendering weight [N]."""
    w = weights.double()
    x = features.double()
    return _principal((w[:, None] * x).sum(0), x.T @ (w[:, None] * x), w.sum(), dim)


@dataclass
class LiftedFeatures:
    """The teacher's features lifted onto N fixed Gaussians."""

    features: Tensor  # [N, K] rendering-weight averages (K = M, or F in a PCA basis)
    weights: Tensor  # [N] total rendering weight, in teacher cells (0: never seen)

    def unseen(self, min_weight: float) -> Tensor:
        """[N] bool: Gaussians whose total weight is below ``min_weight`` (too little evidence)."""
        return self.weights < min_weight


def lift_features(
    gaussians: GaussianField,
    cameras: Cameras,
    teacher_maps: Tensor,
    stride: int | None,
    near_plane: float,
    basis: PcaBasis | None = None,
    backend: Backend = "auto",
) -> LiftedFeatures:
    """Rendering-weight averages of ``teacher_maps`` [V, h, w, M] (one per camera) per Gaussian,
    in the coordinates of ``basis`` when given (lifting is linear, so projecting the maps first
    gives the projection of the averages, at the cost of F channels instead of M)."""
    if len(cameras) != len(teacher_maps):
        raise ConfigError(
            f"lift: {len(cameras)} cameras but {len(teacher_maps)} teacher maps; expected one each"
        )
    g = gaussians.detach()
    total = None
    for view in track(range(len(cameras)), description="lifting", transient=True):
        camera = cameras[view]
        values = teacher_maps[view : view + 1]
        if basis is not None:
            values = basis.project(values)
        total = accumulate(
            g.means, g.quats, g.scales, g.opacities, camera.viewmats.to(g.means),
            camera.Ks.to(g.means), camera.width, camera.height, values, stride=stride,
            near_plane=near_plane, backend=backend, into=total,
        )  # fmt: skip
    return LiftedFeatures(total.averages(in_place=True), total.weights)


def fit_background(
    gaussians: GaussianField, cameras: Cameras, images: Tensor, sh_degree: int, near_plane: float
) -> Tensor:
    """The RGB background [3] that best explains ``images`` [V, H, W, 3] behind the Gaussians
    (closed-form least squares over the transmittance left at each pixel)."""
    g = gaussians.detach()
    numerator = torch.zeros(3, dtype=torch.float64)
    denominator = torch.zeros((), dtype=torch.float64)
    for view in range(len(cameras)):
        camera = cameras[view]
        colors = g.colors(camera.centers.to(g.means), degree=sh_degree)
        out = rasterize(
            g.means, g.quats, g.scales, g.opacities, colors, camera.viewmats.to(g.means),
            camera.Ks.to(g.means), camera.width, camera.height, near_plane=near_plane,
        )  # fmt: skip
        left = (1.0 - out.alpha[0]).double()  # [H, W, 1]
        residual = images[view].double() - out.features[0].double()
        numerator += (left * residual).sum((0, 1))
        denominator += left.square().sum()
    if float(denominator) < 1e-9:  # the Gaussians cover every pixel: the background never shows
        return torch.zeros(3)
    return (numerator / denominator).clamp(0.0, 1.0).float()


def lifted_field(
    gaussians: GaussianField,
    lifted: LiftedFeatures,
    basis: PcaBasis,
    min_weight: float,
    background_rgb: Tensor,
    sh_degree: int,
    near_plane: float,
) -> FeatureField:
    """A feature field: the Gaussians with their lifted features as coefficients of ``basis``
    (projected first if they are at the teacher's width), its decoder, and ``unseen`` set for
    Gaussians below ``min_weight``: selections leave them out (they still render; one never
    seen at all takes the mean feature)."""
    unseen = lifted.unseen(min_weight)
    if bool(unseen.all()):
        raise ConfigError(
            f"lift: no Gaussian has a total rendering weight of {min_weight} or more in the "
            f"training views: do the Gaussians and the cameras share a frame?"
        )
    features = lifted.features
    if features.shape[1] != basis.directions.shape[1]:
        features = basis.project(features)
    features = torch.where(lifted.weights[:, None] > 0, features, 0.0)
    background = torch.cat([background_rgb.float(), torch.zeros(features.shape[1])])
    return FeatureField(
        gaussians.detach().with_features(features.float()), basis.decoder(), background,
        sh_degree, near_plane, unseen=unseen,
    )  # fmt: skip


def solve_iterations(
    field: FeatureField,
    cameras: Cameras,
    teacher_maps: Tensor,
    basis: PcaBasis,
    stride: int | None,
    iterations: int,
    weights: Tensor,
    backend: Backend = "auto",
) -> FeatureField:
    """``iterations`` steps of SIRT on the least-squares problem the lifted features approximate.

    The unknowns are the Gaussians' coefficients x; ``A x`` is their render averaged over the
    teacher's cells; the target b is the teacher's maps in ``basis``. Each step adds
    ``C A^T R (b - A x)``, with R = 1 / (each cell's rendered alpha) and C = 1 / ``weights``
    (each Gaussian's total weight): one render and one accumulation per view. The rendering-weight
    average is SIRT's first step from zero; further steps undo the blur of averaging over the
    teacher's cells (small objects come back), converging to the least-squares solution.
    """
    g = field.gaussians.detach()
    x = g.features.clone()
    ones = torch.ones(len(g), 1, dtype=x.dtype)
    scale = torch.where(weights > 0, 1.0 / weights.clamp_min(1e-30), 0.0).to(x.dtype)[:, None]
    targets = [basis.project(maps) for maps in teacher_maps]  # [h, w, F] per view, once
    for _ in track(range(iterations), description="solving", transient=True):
        update = torch.zeros_like(x)
        for view, target in enumerate(targets):
            camera = cameras[view]
            viewmat, K = camera.viewmats.to(g.means), camera.Ks.to(g.means)
            with torch.no_grad():
                out = rasterize(
                    g.means, g.quats, g.scales, g.opacities, torch.cat([x, ones], 1), viewmat, K,
                    camera.width, camera.height, near_plane=field.near_plane, backend=backend,
                )  # fmt: skip
            pooled = to_teacher_cells(out.features.permute(0, 3, 1, 2), target.shape[:2], stride)
            pooled = pooled[0].permute(1, 2, 0)  # [h, w, F + 1]: A x and the cells' alpha
            residual = (target - pooled[..., :-1]) / pooled[..., -1:].clamp_min(1e-2)
            update += accumulate(
                g.means, g.quats, g.scales, g.opacities, viewmat, K, camera.width,
                camera.height, residual[None], stride=stride, near_plane=field.near_plane,
                backend=backend,
            ).sums  # fmt: skip
        x += update * scale
    return replace(field, gaussians=g.with_features(x))
