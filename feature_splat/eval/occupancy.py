"""3D semantic occupancy in the Occ3D-nuScenes conventions: ground truth, visibility, prediction, scores.

Occ3D-nuScenes labels a grid of 0.4 m voxels around the ego vehicle, x and y in [-40, 40] m and z in
[-1, 5.4] m (200 x 200 x 16), in the ego frame (x forward, y left, z up, origin on the ground below
the ego). Every voxel holds a class id of the synthetic worlds' vocabulary
(:data:`~feature_splat.data.synthetic.classes.CLASS_NAMES`), or :data:`FREE` (0, the vocabulary's
``sky``: nothing there). Scores are taken only inside the camera visibility mask, the voxels some
camera pixel ray crosses up to and including its first surface hit, as Occ3D's camera mask and
DistillNeRF's Table 4 do. :meth:`OccupancyGrid.scaled` shrinks the grid for worlds smaller than a
nuScenes scene.

- :func:`voxelize`: ground truth from a world's analytic primitives;
- :func:`camera_visibility`: the camera mask, ray-cast with
  :func:`~feature_splat.data.synthetic.raycast.render_views`;
- :func:`field_occupancy`: zero-shot occupancy of a Gaussian feature field (density + text labels);
- :func:`occupancy_metrics`: per-class IoU, mIoU, foreground mIoU and geometric IoU in the mask;
- :func:`bev_image`: a top-down picture of a label grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.classes import resolve_class
from feature_splat.data.synthetic.primitives import (
    Box,
    Capsule,
    Cone,
    Primitive,
    Rectangle,
    Sphere,
)
from feature_splat.data.synthetic.raycast import camera_rays, render_views, single_threaded
from feature_splat.data.synthetic.worlds import World
from feature_splat.errors import ConfigError, DatasetError, InputShapeError
from feature_splat.eval.metrics import class_iou, confusion_matrix
from feature_splat.field import FeatureField
from feature_splat.gaussians import quat_to_rotmat
from feature_splat.visualize import label_rgb

FREE = 0
"""Label of empty voxels: class 0 of the worlds' vocabulary is ``sky``, i.e. nothing there."""

DEFAULT_FOREGROUND = ("car", "person", "lamp", "tree")
"""The street world's things (``lamp`` is its street lamps); road, sidewalk, building are stuff."""

_SIGMAS = 3.0  # a Gaussian reaches the voxels within this many standard deviations
_POINT_BUDGET = 1 << 22  # points (sub-samples, ray samples, Gaussian-voxel pairs) per batch


@dataclass(frozen=True)
class OccupancyGrid:
    """A voxel grid in the ego frame (x forward, y left, z up, origin on the ground below the ego).

    The defaults are Occ3D-nuScenes'. Voxel ``(i, j, k)`` spans ``x_range[0] + i * voxel_size`` to
    ``x_range[0] + (i + 1) * voxel_size`` along x, and likewise along y and z.
    """

    voxel_size: float = 0.4
    x_range: tuple[float, float] = (-40.0, 40.0)
    y_range: tuple[float, float] = (-40.0, 40.0)
    z_range: tuple[float, float] = (-1.0, 5.4)

    def __post_init__(self) -> None:
        size = self.voxel_size
        if not (isinstance(size, int | float) and math.isfinite(size) and size > 0):
            raise ConfigError(f"OccupancyGrid.voxel_size: expected a positive number, got {size!r}")
        for name in ("x_range", "y_range", "z_range"):
            value = getattr(self, name)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"OccupancyGrid.{name}: expected (low, high), got {value!r}"
                ) from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(
                    f"OccupancyGrid.{name}: expected finite low < high, got ({lo}, {hi})"
                )
            count = (hi - lo) / size
            if abs(count - round(count)) > 1e-6:
                raise ConfigError(
                    f"OccupancyGrid.{name}: ({lo}, {hi}) is {count:.6g} voxels of {size}; "
                    "expected a whole number"
                )
            object.__setattr__(self, name, (lo, hi))
        object.__setattr__(self, "voxel_size", float(size))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels along x, y and z: (200, 200, 16) by default."""
        ranges = (self.x_range, self.y_range, self.z_range)
        return tuple(round((hi - lo) / self.voxel_size) for lo, hi in ranges)  # type: ignore[return-value]

    @property
    def lower(self) -> tuple[float, float, float]:
        """The grid's lowest corner (x, y, z) in the ego frame."""
        return (self.x_range[0], self.y_range[0], self.z_range[0])

    def centers(self, ego_to_world: Tensor | None = None) -> Tensor:
        """Voxel centres [X, Y, Z, 3]: in the ego frame (float32), or in the world frame when the
        ego -> world transform [4, 4] is given (in its dtype)."""
        axes = [
            lo + (torch.arange(n, dtype=torch.float64) + 0.5) * self.voxel_size
            for lo, n in zip(self.lower, self.shape, strict=True)
        ]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        if ego_to_world is None:
            return points.float()
        rotation, translation = _pose(ego_to_world)
        return (points @ rotation.T + translation).to(ego_to_world.dtype)

    def scaled(self, factor: float) -> OccupancyGrid:
        """The grid with its ranges and voxel size multiplied by ``factor`` (same shape)."""
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ConfigError(f"OccupancyGrid.scaled: factor must be positive, got {factor!r}")
        scale = lambda r: (r[0] * factor, r[1] * factor)  # noqa: E731
        return OccupancyGrid(
            self.voxel_size * factor, scale(self.x_range), scale(self.y_range), scale(self.z_range)
        )


def _pose(ego_to_world: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation [3, 3] and translation [3] (float64) of a rigid ego -> world transform [4, 4]."""
    if not isinstance(ego_to_world, Tensor) or tuple(ego_to_world.shape) != (4, 4):
        shape = list(ego_to_world.shape) if isinstance(ego_to_world, Tensor) else type(ego_to_world)
        raise InputShapeError(f"ego_to_world: expected a [4, 4] tensor, got {shape}")
    pose = ego_to_world.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(pose).all()):
        raise InputShapeError("ego_to_world: holds NaN or infinite values")
    rotation = pose[:3, :3]
    error = float((rotation.T @ rotation - torch.eye(3, dtype=torch.float64)).abs().max())
    if error > 1e-4 or abs(float(torch.linalg.det(rotation)) - 1.0) > 1e-4:
        raise InputShapeError(
            f"ego_to_world: the upper-left 3x3 block is not a rotation (max |R^T R - I| = {error:.2g})"
        )
    return rotation, pose[:3, 3]


# ----------------------------------------------------------------------------------------------
# Ground truth

InsideTest = Callable[[Tensor, Tensor, Tensor], Tensor]


def _solid(primitive: Primitive, index: int, thin: float) -> tuple[InsideTest, tuple[float, ...]]:
    """An inside test of local coordinates (x, y, z) and the local half extents that bound it.

    ``thin`` is the half thickness given to a :class:`Rectangle` (a plane has no inside).
    """
    if isinstance(primitive, Sphere):
        r = primitive.radius
        return (lambda x, y, z: x * x + y * y + z * z <= r * r), (r, r, r)
    if isinstance(primitive, Box):
        hx, hy, hz = primitive.half_extents
        return (lambda x, y, z: (x.abs() <= hx) & (y.abs() <= hy) & (z.abs() <= hz)), (hx, hy, hz)
    if isinstance(primitive, Cone):  # and Cylinder
        bottom, top, h = primitive.radius_bottom, primitive.radius_top, primitive.half_height
        slope, mid = (top - bottom) / (2.0 * h), 0.5 * (bottom + top)
        widest = max(bottom, top)
        return (
            lambda x, y, z: (z.abs() <= h) & (x * x + y * y <= (mid + slope * z).clamp_min(0) ** 2)
        ), (widest, widest, h)
    if isinstance(primitive, Capsule):
        r, hl = primitive.radius, primitive.half_length
        return (lambda x, y, z: x * x + y * y + (z.abs() - hl).clamp_min(0) ** 2 <= r * r), (
            r,
            r,
            hl + r,
        )
    if isinstance(primitive, Rectangle):
        hx, hy = primitive.half_size
        return (lambda x, y, z: (z.abs() <= thin) & (x.abs() <= hx) & (y.abs() <= hy)), (
            hx,
            hy,
            thin,
        )
    raise DatasetError(
        f"world.primitives[{index}]: voxelize has no inside test for {type(primitive).__name__}"
    )


@single_threaded()  # many small tensor operations: a second thread slows them down (raycast.py)
def voxelize(
    world: World, grid: OccupancyGrid, ego_to_world: Tensor, *, subsamples: int = 3
) -> Tensor:
    """Ground-truth labels [X, Y, Z] (int64) of ``world`` on ``grid`` placed at ``ego_to_world``.

    Each voxel is probed at the ``subsamples ** 3`` points of a regular sub-grid (spacing
    ``voxel_size / subsamples``). A point takes the class of the *last* primitive of
    ``world.primitives`` that contains it; a :class:`Rectangle` (a plane) contains the points within
    half a sub-grid spacing of it, so a plane fills one layer of sub-samples. A voxel is
    :data:`FREE` when none of its points is inside anything; otherwise it takes the class most of
    its inside points have, a tie going to the class of the later primitive. As Occ3D marks a
    voxel occupied when any point falls in it, a solid's voxels outnumber its volume: a face with
    unit normal n gains ``(1 - 1 / subsamples) |n|_1 / 2`` of a voxel layer (a third of a layer
    for an axis-aligned face with 3 sub-samples, half a layer on average over a sphere).

    Each primitive is tested only at the points inside its own oriented bounding box (a box around
    its local extents, turned into the ego frame), so a street takes about a second.
    """
    if getattr(world, "primitives", None) is None:
        raise InputShapeError(
            f"world: expected a World of analytic primitives, got {type(world).__name__}"
        )
    if not (isinstance(subsamples, int) and subsamples >= 1):
        raise ConfigError(f"voxelize: subsamples must be a positive integer, got {subsamples!r}")
    rotation, translation = _pose(ego_to_world)
    nx, ny, nz = grid.shape
    s, size = subsamples, grid.voxel_size
    count = s**3
    lower = torch.tensor(grid.lower, dtype=torch.float64)
    limits = torch.tensor(grid.shape)
    offsets = (torch.arange(s, dtype=torch.float64) + 0.5) * (size / s)
    owner = torch.full((nx, ny, nz, s, s, s), -1, dtype=torch.int32)
    for index, primitive in enumerate(world.primitives):
        inside, half = _solid(primitive, index, 0.5 * size / s)
        frame = torch.tensor(primitive.rotation, dtype=torch.float64)
        center = torch.tensor(primitive.center, dtype=torch.float64)
        to_local = rotation.T @ frame  # local = ego @ to_local + shift
        shift = (translation - center) @ frame
        center_ego = (center - translation) @ rotation
        reach = to_local.abs() @ torch.tensor(half, dtype=torch.float64)
        first_cell = ((center_ego - reach - lower) / size).floor().long()
        last_cell = ((center_ego + reach - lower) / size).floor().long()
        start, stop = first_cell.clamp_min(0), torch.minimum(last_cell + 1, limits)
        if bool((start >= stop).any()):
            continue
        (i0, j0, k0), (i1, j1, k1) = start.tolist(), stop.tolist()
        rows = max(1, _POINT_BUDGET // ((j1 - j0) * (k1 - k0) * count))
        ys = lower[1] + torch.arange(j0, j1, dtype=torch.float64)[:, None] * size + offsets
        zs = lower[2] + torch.arange(k0, k1, dtype=torch.float64)[:, None] * size + offsets
        ys, zs = ys[None, :, None, None, :, None], zs[None, None, :, None, None, :]
        for first in range(i0, i1, rows):
            last = min(first + rows, i1)
            xs = lower[0] + torch.arange(first, last, dtype=torch.float64)[:, None] * size + offsets
            ego = (xs[:, None, None, :, None, None], ys, zs)
            # Local coordinates, skipping zero terms: an axis-aligned primitive keeps them 1-D.
            x, y, z = (
                sum((ego[r] * to_local[r, a] for r in range(3) if abs(to_local[r, a]) > 1e-12),
                    start=shift[a])
                for a in range(3)
            )  # fmt: skip
            owner[first:last, j0:j1, k0:k1].masked_fill_(inside(x, y, z), index)
    labels = torch.full((nx * ny * nz,), FREE, dtype=torch.int64)
    owner = owner.view(-1)
    occupied = (owner >= 0).nonzero()[:, 0]
    if occupied.numel():
        primitive = owner[occupied].long()
        class_of = torch.tensor([p.class_id for p in world.primitives], dtype=torch.int64)
        n_classes = int(class_of.max()) + 1
        voxels, slot = torch.unique_consecutive(occupied // count, return_inverse=True)
        key = slot * n_classes + class_of[primitive]
        votes = torch.bincount(key, minlength=len(voxels) * n_classes)
        latest = torch.full_like(votes, -1).scatter_reduce(0, key, primitive, "amax")
        score = (votes * (len(world.primitives) + 1) + latest).view(len(voxels), n_classes)
        labels[voxels] = score.argmax(dim=1)
    return labels.view(nx, ny, nz)


# ----------------------------------------------------------------------------------------------
# Visibility


def _resized(cameras: Cameras, scale: float) -> Cameras:
    """``cameras`` with images ``scale`` times as wide and high (intrinsics scaled to match)."""
    if scale == 1.0:
        return cameras
    width, height = max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale))
    Ks = cameras.Ks.clone()
    Ks[:, 0] *= width / cameras.width
    Ks[:, 1] *= height / cameras.height
    return Cameras(cameras.viewmats, Ks, width, height)


def _grid_span(grid: OccupancyGrid, origin: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Entry (>= 0) and exit distances [R] of rays from ``origin`` [3] through the grid's box, all
    in voxel units from its lowest corner."""
    upper = torch.tensor(grid.shape, dtype=torch.float64)
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t_a, t_b = -origin / safe, (upper - origin) / safe
    entry = torch.minimum(t_a, t_b).amax(dim=1).clamp_min(0.0)
    return entry, torch.maximum(t_a, t_b).amin(dim=1)


def _mark(grid: OccupancyGrid, mask: Tensor, cells: Tensor) -> None:
    """Set ``mask`` (flat [X * Y * Z] bool) at the voxels holding ``cells`` [P, 3], points in voxel
    units from the grid's lowest corner."""
    cells = cells.floor().int()
    _, ny, nz = grid.shape
    inside = ((cells >= 0) & (cells < torch.tensor(grid.shape, dtype=torch.int32))).all(dim=1)
    cells = cells[inside].long()
    mask[(cells[:, 0] * ny + cells[:, 1]) * nz + cells[:, 2]] = True


@single_threaded()  # many small tensor operations: a second thread slows them down (raycast.py)
def camera_visibility(
    world: World,
    grid: OccupancyGrid,
    ego_to_world: Tensor,
    cameras: Cameras,
    *,
    rays_scale: float = 1.0,
) -> Tensor:
    """Occ3D's camera mask [X, Y, Z] (bool): the voxels some pixel ray of ``cameras`` traverses.

    One ray per pixel centre (of the images resized by ``rays_scale``) is cast into ``world`` with
    :func:`~feature_splat.data.synthetic.raycast.render_views`, then marched through the grid from
    the camera centre in steps of half a voxel up to its first surface hit, whose voxel (the one
    just behind the surface) is visible too; a ray that hits nothing (sky) runs to the grid's edge.
    Half-voxel steps can miss a voxel whose corner a ray only grazes.
    """
    if not (isinstance(rays_scale, int | float) and math.isfinite(rays_scale) and rays_scale > 0):
        raise ConfigError(f"camera_visibility: rays_scale must be positive, got {rays_scale!r}")
    rotation, translation = _pose(ego_to_world)
    cameras = _resized(cameras, float(rays_scale))
    depth = render_views(world, cameras, supersample=1)["depth"].to(torch.float64)
    step = 0.5  # voxels
    nudge = 1e-3  # voxels past the surface, into the voxel behind it
    nx, ny, nz = grid.shape
    mask = torch.zeros(nx * ny * nz, dtype=torch.bool)
    centre = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    lower = torch.tensor(grid.lower, dtype=torch.float64)
    top = (
        torch.tensor(grid.shape, dtype=torch.float32) - 1
    )  # samples stray outside by rounding only
    strides = torch.tensor([ny * nz, nz, 1], dtype=torch.float64)
    for view in range(len(cameras)):
        origin, directions, z_per_t = camera_rays(cameras, view, centre, range(cameras.height))
        # Rays in the ego frame, in voxel units from the grid's lowest corner.
        origin = ((origin - translation) @ rotation - lower) / grid.voxel_size
        directions = directions.reshape(-1, 3) @ rotation
        hit = depth[view].reshape(-1) / z_per_t.reshape(-1) / grid.voxel_size  # inf on a miss
        entry, exit_ = _grid_span(grid, origin, directions)
        end = torch.minimum(hit, exit_)
        struck = hit <= exit_
        _mark(grid, mask, origin + (hit[struck] + nudge)[:, None] * directions[struck])
        # March all rays in lockstep, the longest first, so the live rays are a prefix.
        counts = torch.where(end >= entry, ((end - entry) / step).floor() + 1, 0).long()
        counts, order = counts.sort(descending=True)
        starts = (origin + entry[order, None] * directions[order]).float()
        steps = (directions[order] * step).float()
        live = len(counts) - torch.searchsorted(
            counts.flip(0), torch.arange(int(counts[0])), right=True
        )
        for k, n in enumerate(live.tolist()):
            cells = torch.minimum(
                torch.add(starts[:n], steps[:n], alpha=k).floor_().clamp_min_(0), top
            )
            mask[(cells.double() @ strides).long()] = True
    return mask.view(nx, ny, nz)


# ----------------------------------------------------------------------------------------------
# Prediction from a feature field


@single_threaded()  # many small tensor operations: a second thread slows them down (raycast.py)
def field_occupancy(
    field: FeatureField,
    grid: OccupancyGrid,
    ego_to_world: Tensor,
    text_embeddings: Tensor,
    class_ids: Sequence[int],
    *,
    density_threshold: float = 0.5,
    max_radius_voxels: int = 3,
) -> tuple[Tensor, Tensor]:
    """Zero-shot semantic occupancy of a Gaussian feature field: labels [X, Y, Z] (int64) and
    density [X, Y, Z] (float32).

    The density at each voxel centre x is ``sum_i opacity_i exp(-d^T Sigma_i^-1 d / 2)`` (``d = x -
    mean_i``, ``Sigma_i = R_i S_i^2 R_i^T``) over the Gaussians whose centre lies in the grid, each
    reaching the voxels within 3 standard deviations of it and at most ``max_radius_voxels`` voxels
    from its own. Voxels denser than ``density_threshold`` are occupied; each takes the
    density-weighted mean of its contributors' features, decoded by ``field.decoder`` and compared
    (cosine) with ``text_embeddings`` [K, M], one row per entry of ``class_ids``: the best row's class
    id is its label. Other voxels are :data:`FREE`.
    """
    g = field.gaussians
    if g.feature_dim == 0:
        raise InputShapeError(
            "field: has no features (feature_dim 0, an RGB-only field); field_occupancy labels "
            "voxels with the Gaussians' features"
        )
    class_ids = list(class_ids)
    if not class_ids or not all(isinstance(c, int) and c >= 0 for c in class_ids):
        raise ConfigError(f"class_ids: expected non-negative class ids, got {class_ids!r}")
    expected = (len(class_ids), field.decoder.out_dim)
    if not isinstance(text_embeddings, Tensor) or tuple(text_embeddings.shape) != expected:
        got = (
            list(text_embeddings.shape)
            if isinstance(text_embeddings, Tensor)
            else type(text_embeddings)
        )
        raise InputShapeError(
            f"text_embeddings: expected {list(expected)} (one row per class id, the decoder's "
            f"width), got {got}"
        )
    if not (math.isfinite(density_threshold) and density_threshold > 0):
        raise ConfigError(
            f"density_threshold: expected a positive number, got {density_threshold!r}"
        )
    if not (isinstance(max_radius_voxels, int) and max_radius_voxels >= 0):
        raise ConfigError(f"max_radius_voxels: expected an integer >= 0, got {max_radius_voxels!r}")
    rotation, translation = _pose(ego_to_world)
    nx, ny, nz = grid.shape
    size = grid.voxel_size
    lower = torch.tensor(grid.lower, dtype=torch.float64)
    with torch.no_grad():
        means = (g.means.detach().cpu().double() - translation) @ rotation  # ego frame
        cell = ((means - lower) / size).floor().long()
        keep = ((cell >= 0) & (cell < torch.tensor(grid.shape))).all(dim=1).nonzero()[:, 0]
        cell, means = cell[keep], means[keep]
        axes = rotation.T @ quat_to_rotmat(g.quats.detach().cpu()[keep].double())  # local -> ego
        inverse_variance = 1.0 / g.scales.detach().cpu()[keep].double().square()
        precision = (axes * inverse_variance[:, None, :]) @ axes.transpose(1, 2)
        sigma = ((axes.square() / inverse_variance[:, None, :]).sum(-1)).sqrt().amax(dim=1)
        radius = (_SIGMAS * sigma / size).ceil().long().clamp(max=max_radius_voxels)
        # The mean relative to its voxel's centre, and the quadratic form's six coefficients.
        offset = ((lower + (cell + 0.5) * size) - means).float()
        p = precision.float()
        coefficients = torch.stack(
            [p[:, 0, 0], p[:, 1, 1], p[:, 2, 2], 2 * p[:, 0, 1], 2 * p[:, 0, 2], 2 * p[:, 1, 2]], 1
        )
        opacity = g.opacities.detach().cpu()[keep].float()
        density = torch.zeros(nx * ny * nz, dtype=torch.float64)
        pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (voxel, Gaussian, weight)
        for r in radius.unique().tolist():
            members = (radius == r).nonzero()[:, 0]
            span = torch.arange(-r, r + 1)
            stencil = torch.stack(torch.meshgrid(span, span, span, indexing="ij"), -1).view(-1, 3)
            per_batch = max(1, _POINT_BUDGET // len(stencil))
            for first in range(0, len(members), per_batch):
                chosen = members[first : first + per_batch]
                cells = cell[chosen, None, :] + stencil  # [n, S, 3]
                d = stencil.float() * size + offset[chosen, None, :]
                c = coefficients[chosen, None, :]
                x, y, z = d.unbind(-1)
                m2 = (
                    c[..., 0] * x * x + c[..., 1] * y * y + c[..., 2] * z * z
                    + c[..., 3] * x * y + c[..., 4] * x * z + c[..., 5] * y * z
                )  # fmt: skip
                valid = (m2 <= _SIGMAS**2) & (
                    (cells >= 0) & (cells < torch.tensor(grid.shape))
                ).all(-1)
                n_index, s_index = valid.nonzero(as_tuple=True)
                hit = cells[n_index, s_index]
                voxel = (hit[:, 0] * ny + hit[:, 1]) * nz + hit[:, 2]
                weight = opacity[chosen][n_index] * torch.exp(-0.5 * m2[n_index, s_index])
                density.index_add_(0, voxel, weight.double())
                pairs.append((voxel, chosen[n_index], weight))
        occupied = density > density_threshold
        labels = torch.full((nx * ny * nz,), FREE, dtype=torch.int64)
        if bool(occupied.any()):
            voxel, gaussian, weight = (torch.cat(parts) for parts in zip(*pairs, strict=True))
            slot = torch.full((nx * ny * nz,), -1, dtype=torch.int64)
            targets = occupied.nonzero()[:, 0]
            slot[targets] = torch.arange(len(targets))
            inside = slot[voxel] >= 0
            voxel, gaussian, weight = slot[voxel[inside]], gaussian[inside], weight[inside]
            features = g.features.detach().cpu()[keep].float()
            summed = torch.zeros(len(targets), g.feature_dim)
            per_batch = max(1, _POINT_BUDGET // g.feature_dim)
            for first in range(0, len(voxel), per_batch):
                part = slice(first, first + per_batch)
                summed.index_add_(0, voxel[part], weight[part, None] * features[gaussian[part]])
            mean = summed / density[targets].float()[:, None]
            texts = torch.nn.functional.normalize(text_embeddings.detach().cpu().float(), dim=-1)
            decoder = field.decoder
            parameter = next(decoder.parameters(), None)
            if parameter is not None:
                mean, texts = mean.to(parameter), texts.to(parameter)
            best = decoder.cosines(mean, texts).argmax(dim=-1).cpu()
            labels[targets] = torch.tensor(class_ids, dtype=torch.int64)[best]
    return labels.view(nx, ny, nz), density.float().view(nx, ny, nz)


# ----------------------------------------------------------------------------------------------
# Scores and pictures


def _check_labels(name: str, labels: Tensor, shape: tuple[int, ...], n_classes: int) -> None:
    if (
        not isinstance(labels, Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise InputShapeError(f"{name}: expected an integer label tensor, got {kind}")
    if tuple(labels.shape) != shape:
        raise InputShapeError(f"{name}: expected shape {list(shape)}, got {list(labels.shape)}")
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < n_classes):
        raise InputShapeError(
            f"{name}: labels must lie in 0..{n_classes - 1} (class_names), got "
            f"{int(labels.min())}..{int(labels.max())}"
        )


def _mean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def occupancy_metrics(
    predicted: Tensor,
    truth: Tensor,
    visible: Tensor,
    class_names: Sequence[str],
    class_ids: Sequence[int],
    foreground: Sequence[str] = DEFAULT_FOREGROUND,
) -> dict:
    """Occupancy scores inside the camera mask ``visible``, as Occ3D and DistillNeRF (Table 4).

    ``predicted`` and ``truth`` are label grids [X, Y, Z] over the vocabulary ``class_names`` (label
    k names ``class_names[k]``; :data:`FREE` is empty space), ``visible`` a bool grid of the same
    shape. Returns:

    - ``per_class_iou``: class name -> IoU for each of ``class_ids``; NaN for a class absent from
      both the visible truth and the visible prediction;
    - ``miou``: the mean of those IoUs over the classes present (NaN if none is);
    - ``foreground_miou``: the same mean over the ``foreground`` classes among ``class_ids`` (names
      or synonyms, e.g. "street lamp" for ``lamp``; classes not in ``class_names`` are skipped);
    - ``geometric_iou``: IoU of the occupied (not FREE) voxels of prediction and truth (NaN if both
      are empty);
    - ``visible_voxels``, ``truth_occupied``, ``predicted_occupied``: voxel counts in the mask.
    """
    names = list(class_names)
    shape = tuple(truth.shape) if isinstance(truth, Tensor) else ()
    _check_labels("truth", truth, shape, len(names))
    _check_labels("predicted", predicted, shape, len(names))
    if (
        not isinstance(visible, Tensor)
        or visible.dtype != torch.bool
        or tuple(visible.shape) != shape
    ):
        got = (
            f"{visible.dtype} {list(visible.shape)}"
            if isinstance(visible, Tensor)
            else type(visible)
        )
        raise InputShapeError(f"visible: expected a bool mask {list(shape)}, got {got}")
    ids = list(class_ids)
    if not all(isinstance(c, int) and 0 <= c < len(names) and c != FREE for c in ids):
        raise ConfigError(
            f"class_ids: expected ids in 1..{len(names) - 1} (FREE is scored by geometric_iou), "
            f"got {ids!r}"
        )
    foreground_ids = set()
    for name in foreground:
        resolved = name if name in names else resolve_class(name)
        if resolved is None:
            raise ConfigError(f"foreground: {name!r} names no known class")
        if resolved in names:  # a class of another vocabulary is skipped
            foreground_ids.add(names.index(resolved))
    pred, true = predicted[visible].long(), truth[visible].long()
    confusion = confusion_matrix(pred, true, len(names))
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    iou = class_iou(confusion)
    per_class = {names[c]: float(iou[c]) if bool(present[c]) else math.nan for c in ids}
    pred_occupied, true_occupied = pred != FREE, true != FREE
    union = int((pred_occupied | true_occupied).sum())
    both = int((pred_occupied & true_occupied).sum())
    return {
        "per_class_iou": per_class,
        "miou": _mean(list(per_class.values())),
        "foreground_miou": _mean([per_class[names[c]] for c in ids if c in foreground_ids]),
        "geometric_iou": both / union if union else math.nan,
        "visible_voxels": int(visible.sum()),
        "truth_occupied": int(true_occupied.sum()),
        "predicted_occupied": int(pred_occupied.sum()),
    }


def bev_image(labels: Tensor, palette: Tensor | None = None) -> Tensor:
    """A bird's-eye view RGB image [X, Y, 3] in [0, 1] of a label grid [X, Y, Z] (or of a top-down
    label map [X, Y]): each column shows its highest occupied voxel's class, FREE columns are black.

    Forward (+x) is up and left (+y) is left: pixel (row, col) shows voxel column (X - 1 - row,
    Y - 1 - col). Colours come from ``palette`` [C, 3] (row = class id) or, by default,
    :func:`~feature_splat.visualize.label_rgb`.
    """
    if (
        not isinstance(labels, Tensor)
        or labels.ndim not in (2, 3)
        or labels.dtype.is_floating_point
    ):
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels)
        raise InputShapeError(f"labels: expected integer labels [X, Y, Z] or [X, Y], got {got}")
    top = labels.long()
    if top.ndim == 3:
        occupied = top != FREE
        height = torch.arange(top.shape[2]).expand_as(top)
        highest = torch.where(occupied, height, -1).amax(dim=2)
        top = top.gather(2, highest.clamp_min(0)[..., None])[..., 0]
        top = torch.where(highest >= 0, top, FREE)
    top = top.flip(0, 1)
    if palette is None:
        rgb = label_rgb(top)
    else:
        if (
            palette.ndim != 2
            or palette.shape[1] != 3
            or (top.numel() and int(top.max()) >= len(palette))
        ):
            raise InputShapeError(
                f"palette: expected [C, 3] covering every label (up to {int(top.max())}), "
                f"got {list(palette.shape)}"
            )
        rgb = palette.float()[top]
    return torch.where((top == FREE)[..., None], torch.zeros_like(rgb), rgb).clamp(0, 1)
