"""Analytic primitives with vectorised ray intersection.

Each primitive lives in its own local frame: ``center`` is the frame origin in world coordinates and
``rotation`` (3x3, rows) maps local to world directions, ``world = center + rotation @ local``. The
intersection is solved in local coordinates, where every shape is axis-aligned and centred:

- :class:`Sphere` of ``radius``;
- :class:`Box` with ``half_extents`` (an oriented box once rotated);
- :class:`Cylinder`, capped, ``radius`` and ``half_height`` along local z;
- :class:`Cone`, a capped frustum along local z from ``radius_bottom`` (z = -half_height) to
  ``radius_top`` (z = +half_height);
- :class:`Capsule`, a cylinder of ``radius`` with hemispherical ends, segment ``half_length`` along z;
- :class:`Rectangle`, the finite plane z = 0 with ``half_size`` along x and y, normal +z.

``intersect(origins, directions)`` takes world rays [N, 3] (float64, unit directions) and returns the
nearest hit distance [N] (``inf`` on a miss, hits closer than ``T_MIN`` ignored) and the outward unit
normal [N, 3] in world coordinates. Every primitive also carries a ``class_id`` (an index into
:data:`~feature_splat.data.synthetic.classes.CLASS_NAMES`), an ``instance_id`` shared by all parts of
one object, and a :class:`~feature_splat.data.synthetic.textures.Texture` evaluated in local
coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from feature_splat.data.synthetic.textures import Texture, Vec3

Mat3 = tuple[Vec3, Vec3, Vec3]
IDENTITY: Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
T_MIN = 1e-6
INF = math.inf


def rotation_z(angle: float) -> Mat3:
    """Rotation by ``angle`` radians about the z (up) axis."""
    c, s = math.cos(angle), math.sin(angle)
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def rotation_x(angle: float) -> Mat3:
    """Rotation by ``angle`` radians about the x axis."""
    c, s = math.cos(angle), math.sin(angle)
    return ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c))


def compose(first: Mat3, second: Mat3) -> Mat3:
    """The rotation ``first @ second`` (``second`` applied first)."""
    return tuple(  # type: ignore[return-value]
        tuple(sum(first[i][k] * second[k][j] for k in range(3)) for j in range(3)) for i in range(3)
    )


@dataclass(frozen=True, kw_only=True)
class Primitive:
    """Common fields and the local-frame plumbing.

    Subclasses implement ``bounding_radius``, ``local_normals`` and ``_intersect_local``.
    """

    center: Vec3
    rotation: Mat3 = IDENTITY
    class_id: int
    instance_id: int
    texture: Texture

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere around ``center`` that contains the primitive."""
        raise NotImplementedError

    def _frame(self, like: Tensor) -> tuple[Tensor, Tensor]:
        center = torch.tensor(self.center, dtype=like.dtype, device=like.device)
        rotation = torch.tensor(self.rotation, dtype=like.dtype, device=like.device)
        return center, rotation

    def to_local(self, points: Tensor) -> Tensor:
        """World points [N, 3] in local coordinates."""
        center, rotation = self._frame(points)
        return (points - center) @ rotation

    def intersect(self, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest hit distance [N] (inf on miss) and world unit normal [N, 3] of world rays."""
        center, rotation = self._frame(origins)
        t, normals = self._intersect_local((origins - center) @ rotation, directions @ rotation)
        return t, normals @ rotation.T

    def local_normals(self, local_points: Tensor) -> Tensor:
        """Outward unit normals [N, 3] at local points [N, 3] on the surface."""
        raise NotImplementedError

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest hit distance [N] and local unit normal [N, 3] of rays in local coordinates."""
        raise NotImplementedError


def _quadratic(a: Tensor, half_b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Both roots (smaller first) of ``a t^2 + 2 half_b t + c``; NaN where there is no real root."""
    disc = half_b * half_b - a * c
    root = torch.sqrt(disc.clamp_min(0.0))
    safe_a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    t0 = (-half_b - root) / safe_a
    t1 = (-half_b + root) / safe_a
    nan = torch.full_like(t0, math.nan)
    missing = disc < 0
    low, high = torch.minimum(t0, t1), torch.maximum(t0, t1)
    return torch.where(missing, nan, low), torch.where(missing, nan, high)


def _nearest(candidates: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The smallest valid distance over ``(t, valid)`` candidates; inf where none is valid."""
    best = torch.full_like(candidates[0][0], INF)
    for t, valid in candidates:
        ok = valid & (t > T_MIN)
        best = torch.where(ok & (t < best), t, best)
    return best


@dataclass(frozen=True, kw_only=True)
class Sphere(Primitive):
    """A sphere of ``radius`` centred on ``center``."""

    radius: float

    @property
    def bounding_radius(self) -> float:
        return self.radius

    def local_normals(self, local_points: Tensor) -> Tensor:
        return local_points / self.radius

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        a = (d * d).sum(1)
        t0, t1 = _quadratic(a, (o * d).sum(1), (o * o).sum(1) - self.radius**2)
        t = _nearest([(t0, ~t0.isnan()), (t1, ~t1.isnan())])
        return t, self.local_normals(o + t.nan_to_num(posinf=0.0)[:, None] * d)


@dataclass(frozen=True, kw_only=True)
class Box(Primitive):
    """A box with ``half_extents`` along its local axes."""

    half_extents: Vec3

    @property
    def bounding_radius(self) -> float:
        return math.sqrt(sum(h * h for h in self.half_extents))

    def local_normals(self, local_points: Tensor) -> Tensor:
        half = torch.tensor(self.half_extents, dtype=local_points.dtype, device=local_points.device)
        scaled = local_points / half
        axis = scaled.abs().argmax(dim=1)
        normals = torch.zeros_like(local_points)
        normals.scatter_(1, axis[:, None], torch.sign(scaled.gather(1, axis[:, None])))
        return normals

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        half = torch.tensor(self.half_extents, dtype=o.dtype, device=o.device)
        tiny = torch.where(d >= 0, 1e-300, -1e-300)
        inv = 1.0 / torch.where(d.abs() < 1e-300, tiny, d)
        t_a, t_b = (-half - o) * inv, (half - o) * inv
        near = torch.minimum(t_a, t_b).amax(dim=1)
        far = torch.maximum(t_a, t_b).amin(dim=1)
        hit = near <= far
        t = _nearest([(near, hit), (far, hit)])
        return t, self.local_normals(o + t.nan_to_num(posinf=0.0)[:, None] * d)


@dataclass(frozen=True, kw_only=True)
class Cone(Primitive):
    """A capped frustum along local z: ``radius_bottom`` at z = -half_height, ``radius_top`` at +."""

    radius_bottom: float
    radius_top: float
    half_height: float

    @property
    def bounding_radius(self) -> float:
        return math.hypot(max(self.radius_bottom, self.radius_top), self.half_height)

    @property
    def _slope(self) -> float:
        return (self.radius_top - self.radius_bottom) / (2.0 * self.half_height)

    @property
    def _mid_radius(self) -> float:
        return 0.5 * (self.radius_bottom + self.radius_top)

    def local_normals(self, local_points: Tensor) -> Tensor:
        x, y, z = local_points.unbind(1)
        k, h = self._slope, self.half_height
        side = torch.stack([x, y, -k * (self._mid_radius + k * z)], dim=1)
        side = side / side.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cap = torch.zeros_like(local_points)
        cap[:, 2] = torch.sign(z)
        on_cap = (z.abs() - h).abs() < 1e-7 * max(1.0, h)
        return torch.where(on_cap[:, None], cap, side)

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        k, h, mid = self._slope, self.half_height, self._mid_radius
        radius_o = mid + k * o[:, 2]
        a = d[:, 0] ** 2 + d[:, 1] ** 2 - (k * d[:, 2]) ** 2
        half_b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] - k * d[:, 2] * radius_o
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius_o**2
        candidates = []
        for t_side in _quadratic(a, half_b, c):
            z = o[:, 2] + t_side * d[:, 2]
            candidates.append((t_side, (z.abs() <= h) & (mid + k * z >= 0)))
        for z_cap, radius in ((-h, self.radius_bottom), (h, self.radius_top)):
            t_cap = (z_cap - o[:, 2]) / d[:, 2]
            p = o[:, :2] + t_cap[:, None] * d[:, :2]
            candidates.append((t_cap, (p * p).sum(1) <= radius**2))
        t = _nearest(candidates)
        return t, self.local_normals(o + t.nan_to_num(posinf=0.0)[:, None] * d)


@dataclass(frozen=True, kw_only=True)
class Cylinder(Cone):
    """A capped cylinder of ``radius`` and ``half_height`` along local z: a cone with equal radii.

    Give ``radius``; ``radius_bottom`` and ``radius_top`` are set from it.
    """

    radius_bottom: float = 0.0
    radius_top: float = 0.0
    radius: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius_bottom", self.radius)
        object.__setattr__(self, "radius_top", self.radius)


@dataclass(frozen=True, kw_only=True)
class Capsule(Primitive):
    """A cylinder of ``radius`` around the segment z in [-half_length, half_length], rounded ends."""

    radius: float
    half_length: float

    @property
    def bounding_radius(self) -> float:
        return self.half_length + self.radius

    def local_normals(self, local_points: Tensor) -> Tensor:
        axis_z = local_points[:, 2].clamp(-self.half_length, self.half_length)
        offset = local_points.clone()
        offset[:, 2] = local_points[:, 2] - axis_z
        return offset / offset.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        r, hl = self.radius, self.half_length
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        half_b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
        candidates = []
        for t_side in _quadratic(a, half_b, c):
            candidates.append((t_side, (o[:, 2] + t_side * d[:, 2]).abs() <= hl))
        for end in (-hl, hl):
            oc = o.clone()
            oc[:, 2] = o[:, 2] - end
            for t_cap in _quadratic((d * d).sum(1), (oc * d).sum(1), (oc * oc).sum(1) - r * r):
                z = o[:, 2] + t_cap * d[:, 2]
                candidates.append((t_cap, (z >= hl) if end > 0 else (z <= -hl)))
        t = _nearest(candidates)
        return t, self.local_normals(o + t.nan_to_num(posinf=0.0)[:, None] * d)


@dataclass(frozen=True, kw_only=True)
class Rectangle(Primitive):
    """The finite plane z = 0, |x| <= half_size[0], |y| <= half_size[1], normal +z (local)."""

    half_size: tuple[float, float]

    @property
    def bounding_radius(self) -> float:
        return math.hypot(*self.half_size)

    def local_normals(self, local_points: Tensor) -> Tensor:
        normals = torch.zeros_like(local_points)
        normals[:, 2] = 1.0
        return normals

    def _intersect_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        t = -o[:, 2] / d[:, 2]
        p = o[:, :2] + t[:, None] * d[:, :2]
        inside = (p[:, 0].abs() <= self.half_size[0]) & (p[:, 1].abs() <= self.half_size[1])
        t = _nearest([(t, inside)])
        return t, self.local_normals(o)
