"""Built-in synthetic worlds: seeded, deterministic scenes of analytic primitives with a camera rig.

- ``room``: an 8 x 6 x 2.8 m room (floor, four walls, ceiling) with a table, chairs, a sofa, a floor
  lamp, plants, a ball, and mugs and books on the table; cameras stand inside near the walls at
  varied heights and look inward at varied points.
- ``tabletop``: a table with mugs, books, a desk lamp, a plant and a ball on a large floor, two
  chairs beside it; cameras orbit it through 360 degrees at varied elevations. Sky shows above the
  horizon.
- ``street``: a road with a centre line, sidewalks, building facades on both sides and across both
  ends, parked and driving cars, trees, street lamps and pedestrians; a rig of 6 outward-looking
  cameras (60 degrees apart, little overlap) moves forward along the road and shoots at several
  positions.

:func:`build_world` also builds the real-mesh worlds of :data:`MESH_WORLD_NAMES` (pybullet meshes,
see :mod:`~feature_splat.data.synthetic.mesh_worlds`).

A :class:`World` is immutable. ``world.without(classes)`` and ``world.only(classes)`` give the same
world with some classes removed or kept alone (the editing ground truth); ``world.cameras(width,
height, n_views)`` gives its rig's cameras (independent of which classes are kept), and
``world.render(cameras)`` (:func:`~feature_splat.data.synthetic.raycast.render_views`) ray-casts
them::

    world = build_world("room", seed=0)
    cameras = world.cameras(128, 96)
    full = world.render(cameras)
    edited = world.without(["chair", "mug"]).render(cameras)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.synthetic.classes import CLASS_NAMES, resolve_class
from feature_splat.data.synthetic.primitives import (
    IDENTITY,
    Box,
    Capsule,
    Cone,
    Cylinder,
    Mat3,
    Primitive,
    Rectangle,
    Sphere,
    compose,
    rotation_x,
    rotation_z,
)
from feature_splat.data.synthetic.raycast import render_views
from feature_splat.data.synthetic.textures import Texture, Vec3
from feature_splat.errors import DatasetError

if TYPE_CHECKING:
    from feature_splat.data.synthetic.mesh_worlds import MeshWorld

PROCEDURAL_WORLD_NAMES = ("room", "tabletop", "street")
# Real-mesh worlds: built by mesh_worlds.py, rendered by pybullet.
MESH_WORLD_NAMES = ("tabletop-real", "playroom-real")
WORLD_NAMES = PROCEDURAL_WORLD_NAMES + MESH_WORLD_NAMES
SKY_COLOR: Vec3 = (0.62, 0.75, 0.90)


# ----------------------------------------------------------------------------------------------
# Camera rigs


def _cameras(
    eyes: np.ndarray, targets: np.ndarray, fov_x: float, width: int, height: int
) -> Cameras:
    viewmats = look_at(
        torch.tensor(eyes, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
    )
    K = intrinsics_from_fov(fov_x, width, height)
    return Cameras(viewmats, K.expand(len(eyes), 3, 3).clone(), width, height)


@dataclass(frozen=True)
class InwardRig:
    """Cameras on an ellipse inside a room, at varied heights, looking at jittered inner points.

    View ``i`` sits at angle ``2 pi i / n`` (jittered) so consecutive views are neighbours and every
    8th (test) view lies between training views.
    """

    center: Vec3
    radii: tuple[float, float]
    heights: tuple[float, float]
    target_spread: Vec3
    fov_x_degrees: float
    seed: int
    default_views: int = 48

    def cameras(self, width: int, height: int, n_views: int) -> Cameras:
        """``n_views`` cameras for images of ``width`` x ``height`` pixels."""
        rng = np.random.default_rng([self.seed, n_views, 1])
        step = 2.0 * math.pi / n_views
        angles = np.arange(n_views) * step + rng.uniform(-0.3, 0.3, n_views) * step
        levels = (np.arange(n_views) * 0.618034) % 1.0  # golden-ratio spread of heights
        low, high = self.heights
        eyes = np.stack(
            [
                self.center[0] + self.radii[0] * np.cos(angles),
                self.center[1] + self.radii[1] * np.sin(angles),
                low + (high - low) * levels,
            ],
            axis=1,
        )
        targets = np.asarray(self.center) + rng.uniform(-1.0, 1.0, (n_views, 3)) * np.asarray(
            self.target_spread
        )
        return _cameras(eyes, targets, self.fov_x_degrees, width, height)


@dataclass(frozen=True)
class OrbitRig:
    """Cameras around ``target`` through 360 degrees, elevation swinging between two bounds."""

    target: Vec3
    radius: float
    elevations_degrees: tuple[float, float]
    fov_x_degrees: float
    seed: int
    default_views: int = 48

    def cameras(self, width: int, height: int, n_views: int) -> Cameras:
        """``n_views`` cameras for images of ``width`` x ``height`` pixels."""
        rng = np.random.default_rng([self.seed, n_views, 2])
        step = 2.0 * math.pi / n_views
        azimuths = np.arange(n_views) * step + rng.uniform(-0.25, 0.25, n_views) * step
        low, high = np.radians(self.elevations_degrees)
        elevations = low + (high - low) * (0.5 + 0.5 * np.sin(np.arange(n_views) * 2.4))
        radii = self.radius * rng.uniform(0.9, 1.1, n_views)
        eyes = np.asarray(self.target) + radii[:, None] * np.stack(
            [
                np.cos(elevations) * np.cos(azimuths),
                np.cos(elevations) * np.sin(azimuths),
                np.sin(elevations),
            ],
            axis=1,
        )
        targets = np.asarray(self.target) + rng.uniform(-0.15, 0.15, (n_views, 3))
        return _cameras(eyes, targets, self.fov_x_degrees, width, height)


@dataclass(frozen=True)
class StreetRig:
    """``n_cameras`` outward-looking cameras, evenly spread in yaw, moving along +x.

    Views are grouped by position: view ``p * n_cameras + k`` is camera ``k`` (yaw ``k * 360 /
    n_cameras`` degrees from +x) at position ``p``; positions are evenly spaced from ``start_x`` to
    ``end_x``.
    """

    start_x: float
    end_x: float
    lane_y: float
    camera_height: float
    pitch_degrees: float
    fov_x_degrees: float
    n_cameras: int = 6
    default_views: int = 48

    def cameras(self, width: int, height: int, n_views: int) -> Cameras:
        """``n_views`` cameras (a multiple of ``n_cameras``) for ``width`` x ``height`` images."""
        if n_views % self.n_cameras:
            raise DatasetError(
                f"n_views: the street rig has {self.n_cameras} cameras, so n_views must be a "
                f"multiple of {self.n_cameras}, got {n_views}"
            )
        positions = np.linspace(self.start_x, self.end_x, n_views // self.n_cameras)
        yaws = np.arange(self.n_cameras) * 2.0 * math.pi / self.n_cameras
        pitch = math.radians(self.pitch_degrees)
        eyes = np.array([[x, self.lane_y, self.camera_height] for x in positions for _ in yaws])
        forward = np.array(
            [
                [math.cos(y) * math.cos(pitch), math.sin(y) * math.cos(pitch), -math.sin(pitch)]
                for _ in positions
                for y in yaws
            ]
        )
        return _cameras(eyes, eyes + forward, self.fov_x_degrees, width, height)


Rig = InwardRig | OrbitRig | StreetRig


# ----------------------------------------------------------------------------------------------
# The world


@dataclass(frozen=True)
class World:
    """A static scene: primitives, lighting, sky colour and the camera rig that views it."""

    name: str
    seed: int
    primitives: tuple[Primitive, ...]
    rig: Rig
    sky_color: Vec3 = SKY_COLOR
    light_direction: Vec3 = (0.4, 0.3, 0.85)
    ambient: float = 0.4

    @property
    def class_names(self) -> list[str]:
        """Label ``k`` names ``class_names[k]`` (the shared vocabulary; ``sky`` is 0)."""
        return list(CLASS_NAMES)

    def classes(self) -> list[str]:
        """Names of the classes that have primitives in this world (``sky`` excluded)."""
        return [CLASS_NAMES[k] for k in sorted({p.class_id for p in self.primitives})]

    def cameras(self, width: int = 128, height: int = 96, n_views: int | None = None) -> Cameras:
        """The rig's ``n_views`` cameras (default: the rig's own count) for images of this size."""
        return self.rig.cameras(width, height, n_views or self.rig.default_views)

    def render(self, cameras: Cameras, *, supersample: int = 2) -> dict[str, Tensor]:
        """Ray-cast ``cameras``; see :func:`~feature_splat.data.synthetic.raycast.render_views`."""
        return render_views(self, cameras, supersample=supersample)

    def without(self, classes: str | Iterable[str | int]) -> World:
        """The same world with every primitive of ``classes`` (names, synonyms or ids) removed."""
        drop = _class_ids(classes)
        return replace(self, primitives=tuple(p for p in self.primitives if p.class_id not in drop))

    def only(self, classes: str | Iterable[str | int]) -> World:
        """The same world keeping only the primitives of ``classes`` (everything else is sky)."""
        keep = _class_ids(classes)
        return replace(self, primitives=tuple(p for p in self.primitives if p.class_id in keep))

    def fingerprint(self) -> str:
        """A hash of everything that determines this world's renders (geometry, textures, light, rig)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def _class_ids(classes: str | Iterable[str | int]) -> set[int]:
    """Class ids for names, synonyms or ids; unknown names raise :class:`DatasetError`."""
    if isinstance(classes, str):
        classes = [classes]
    ids = set()
    for item in classes:
        if isinstance(item, int):
            if not 0 <= item < len(CLASS_NAMES):
                raise DatasetError(f"classes: class id {item} outside 0..{len(CLASS_NAMES) - 1}")
            ids.add(item)
            continue
        name = resolve_class(item)
        if name is None:
            raise DatasetError(f"classes: unknown class {item!r}; known classes: {CLASS_NAMES}")
        ids.add(CLASS_NAMES.index(name))
    return ids


# ----------------------------------------------------------------------------------------------
# Building objects out of primitives


class _Builder:
    """Collects primitives, hands out instance ids, and draws seeded variations."""

    def __init__(self, seed: int, world_index: int) -> None:
        self.rng = np.random.default_rng([seed, world_index])
        self.primitives: list[Primitive] = []
        self._next_instance = 0

    def object(self, class_name: str, origin: Vec3, yaw: float = 0.0) -> _Object:
        """A new object (fresh instance id) whose parts are placed relative to ``origin``/``yaw``."""
        instance = self._next_instance
        self._next_instance += 1
        return _Object(self, CLASS_NAMES.index(class_name), instance, origin, yaw)

    def tint(self, color: Vec3, amount: float = 0.06) -> Vec3:
        """``color`` with each channel jittered by up to ``amount``."""
        jitter = self.rng.uniform(-amount, amount, 3)
        return tuple(float(np.clip(c + j, 0.0, 1.0)) for c, j in zip(color, jitter, strict=True))

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


@dataclass
class _Object:
    builder: _Builder
    class_id: int
    instance_id: int
    origin: Vec3
    yaw: float

    def add(
        self,
        shape: Callable[..., Primitive],
        offset: Vec3,
        texture: Texture,
        rotation: Mat3 = IDENTITY,
        **size: float | tuple[float, ...],
    ) -> None:
        """Add a part at ``offset`` (object coordinates, rotated by the object's yaw)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        x, y, z = offset
        center = (
            float(self.origin[0] + c * x - s * y),
            float(self.origin[1] + s * x + c * y),
            float(self.origin[2] + z),
        )
        self.builder.primitives.append(
            shape(
                center=center,
                rotation=compose(rotation_z(self.yaw), rotation),
                class_id=self.class_id,
                instance_id=self.instance_id,
                texture=texture,
                **size,
            )
        )


def _frame(x_axis: Vec3, y_axis: Vec3, z_axis: Vec3) -> Mat3:
    """The rotation taking local x, y, z to the given world axes (its columns)."""
    return tuple(zip(x_axis, y_axis, z_axis, strict=True))  # type: ignore[return-value]


# Local z along world x (for horizontal capsules) and along world -y (for wheels, axles).
_Z_TO_X = compose(rotation_z(math.pi / 2), rotation_x(math.pi / 2))
_Z_TO_Y = rotation_x(math.pi / 2)

WOOD = Texture((0.55, 0.38, 0.22), "stripes", scale=0.12, contrast=0.25, axis=(0.2, 1.0, 0.0))
METAL = Texture((0.35, 0.35, 0.38))


def _table(b: _Builder, origin: Vec3, yaw: float, size: tuple[float, float], height: float) -> None:
    table = b.object("table", origin, yaw)
    sx, sy = size
    top = replace(WOOD, color=b.tint(WOOD.color))
    table.add(Box, (0.0, 0.0, height - 0.025), top, half_extents=(sx / 2, sy / 2, 0.025))
    leg_height = (height - 0.05) / 2
    for fx in (-1, 1):
        for fy in (-1, 1):
            table.add(
                Cylinder,
                (fx * (sx / 2 - 0.08), fy * (sy / 2 - 0.08), leg_height),
                Texture((0.30, 0.20, 0.12)),
                radius=0.035,
                half_height=leg_height,
            )


def _chair(b: _Builder, origin: Vec3, yaw: float, color: Vec3) -> None:
    """A chair facing +x (before ``yaw``): seat, back on the -x side, four legs."""
    chair = b.object("chair", origin, yaw)
    fabric = Texture(b.tint(color), "noise", scale=0.15, contrast=0.25, seed=chair.instance_id)
    chair.add(Box, (0.0, 0.0, 0.45), fabric, half_extents=(0.22, 0.22, 0.03))
    chair.add(Box, (-0.2, 0.0, 0.72), fabric, half_extents=(0.025, 0.22, 0.25))
    for fx in (-1, 1):
        for fy in (-1, 1):
            chair.add(Cylinder, (fx * 0.18, fy * 0.18, 0.21), METAL, radius=0.02, half_height=0.21)


def _sofa(b: _Builder, origin: Vec3, yaw: float, color: Vec3) -> None:
    """A two-metre sofa facing +x (before ``yaw``)."""
    sofa = b.object("sofa", origin, yaw)
    fabric = Texture(b.tint(color), "noise", scale=0.3, contrast=0.3, seed=sofa.instance_id)
    sofa.add(Box, (0.05, 0.0, 0.22), fabric, half_extents=(0.4, 0.85, 0.22))
    sofa.add(Box, (-0.35, 0.0, 0.55), fabric, half_extents=(0.1, 1.0, 0.35))
    for fy in (-1, 1):
        sofa.add(Box, (0.0, fy * 0.92, 0.32), fabric, half_extents=(0.45, 0.08, 0.32))


def _floor_lamp(b: _Builder, origin: Vec3) -> None:
    lamp = b.object("lamp", origin)
    lamp.add(Cylinder, (0.0, 0.0, 0.02), METAL, radius=0.18, half_height=0.02)
    lamp.add(Cylinder, (0.0, 0.0, 0.8), METAL, radius=0.02, half_height=0.78)
    shade = Texture((0.95, 0.88, 0.70), "stripes", scale=0.06, contrast=0.15, axis=(0, 0, 1))
    lamp.add(Cone, (0.0, 0.0, 1.6), shade, radius_bottom=0.25, radius_top=0.15, half_height=0.16)


def _desk_lamp(b: _Builder, origin: Vec3, color: Vec3) -> None:
    lamp = b.object("lamp", origin)
    paint = Texture(b.tint(color))
    lamp.add(Cylinder, (0.0, 0.0, 0.015), paint, radius=0.08, half_height=0.015)
    lamp.add(Capsule, (0.0, 0.0, 0.2), METAL, radius=0.012, half_length=0.17)
    lamp.add(Cone, (0.0, 0.0, 0.4), paint, radius_bottom=0.1, radius_top=0.04, half_height=0.06)


def _mug(b: _Builder, origin: Vec3, yaw: float, color: Vec3) -> None:
    """A mug standing on ``origin``: a cylinder with a handle of three small capsules."""
    mug = b.object("mug", origin, yaw)
    glaze = Texture(b.tint(color), "stripes", scale=0.04, contrast=0.2, axis=(0, 0, 1))
    mug.add(Cylinder, (0.0, 0.0, 0.05), glaze, radius=0.045, half_height=0.05)
    mug.add(Capsule, (0.07, 0.0, 0.05), glaze, radius=0.01, half_length=0.025)
    for z in (0.025, 0.075):
        mug.add(Capsule, (0.055, 0.0, z), glaze, _Z_TO_X, radius=0.01, half_length=0.012)


def _plant(b: _Builder, origin: Vec3, size: float) -> None:
    """A potted plant ``size`` metres tall-ish: a flared pot and three foliage spheres."""
    plant = b.object("plant", origin)
    pot = Texture((0.70, 0.38, 0.25), "stripes", scale=0.3 * size, contrast=0.15, axis=(0, 0, 1))
    leaves = Texture(
        b.tint((0.22, 0.50, 0.20)),
        "noise",
        scale=0.25 * size,
        contrast=0.45,
        seed=plant.instance_id,
    )
    plant.add(
        Cone,
        (0.0, 0.0, 0.15 * size),
        pot,
        radius_bottom=0.1 * size,
        radius_top=0.14 * size,
        half_height=0.15 * size,
    )
    plant.add(Sphere, (0.0, 0.0, 0.5 * size), leaves, radius=0.25 * size)
    for angle in (0.5, 2.6, 4.4):
        offset = (0.16 * size * math.cos(angle), 0.16 * size * math.sin(angle), 0.62 * size)
        plant.add(Sphere, offset, leaves, radius=0.15 * size)


def _book(b: _Builder, origin: Vec3, yaw: float, color: Vec3, thickness: float) -> None:
    book = b.object("book", origin, yaw)
    cover = Texture(b.tint(color, 0.1), "stripes", scale=0.2, contrast=0.2, axis=(1, 0, 0))
    book.add(Box, (0.0, 0.0, thickness / 2), cover, half_extents=(0.1, 0.14, thickness / 2))


def _ball(b: _Builder, origin: Vec3, radius: float, color: Vec3) -> None:
    ball = b.object("ball", origin)
    paint = Texture(color, "stripes", color2=(0.95, 0.95, 0.9), scale=radius * 1.5, contrast=0.8)
    ball.add(Sphere, (0.0, 0.0, radius), paint, rotation_x(0.6), radius=radius)


def _car(b: _Builder, origin: Vec3, yaw: float, color: Vec3) -> None:
    """A car facing +x (before ``yaw``): body, cabin with darker windows, four wheels."""
    car = b.object("car", origin, yaw)
    paint = Texture(b.tint(color), "noise", scale=1.5, contrast=0.15, seed=car.instance_id)
    glass = Texture(
        tuple(0.6 * c for c in paint.color), "windows", color2=(0.15, 0.18, 0.22), scale=0.9
    )
    car.add(Box, (0.0, 0.0, 0.65), paint, half_extents=(2.1, 0.9, 0.33))
    car.add(Box, (-0.2, 0.0, 1.25), glass, half_extents=(1.1, 0.8, 0.28))
    tyre = Texture((0.12, 0.12, 0.12))
    for fx in (-1, 1):
        for fy in (-1, 1):
            car.add(
                Cylinder, (fx * 1.35, fy * 0.8, 0.33), tyre, _Z_TO_Y, radius=0.33, half_height=0.12
            )


def _tree(b: _Builder, origin: Vec3, height: float, conifer: bool) -> None:
    tree = b.object("tree", origin)
    bark = Texture((0.40, 0.28, 0.18), "stripes", scale=0.2, contrast=0.2, axis=(1, 1, 0))
    leaves = Texture(
        b.tint((0.20, 0.45, 0.18)), "noise", scale=0.8, contrast=0.4, seed=tree.instance_id
    )
    trunk = 0.4 * height
    tree.add(Cylinder, (0.0, 0.0, trunk / 2), bark, radius=0.15, half_height=trunk / 2)
    if conifer:
        crown = height - trunk * 0.6
        tree.add(
            Cone,
            (0.0, 0.0, trunk * 0.6 + crown / 2),
            leaves,
            radius_bottom=0.3 * height,
            radius_top=0.02,
            half_height=crown / 2,
        )
    else:
        radius = 0.3 * height
        tree.add(Sphere, (0.0, 0.0, height - radius), leaves, radius=radius)
        tree.add(
            Sphere, (0.5 * radius, 0.3 * radius, height - 1.6 * radius), leaves, radius=0.7 * radius
        )


def _person(b: _Builder, origin: Vec3, yaw: float) -> None:
    """A standing person about 1.7 m tall: capsule legs, torso and arms, sphere head."""
    person = b.object("person", origin, yaw)
    shirt = Texture(
        b.tint((0.3, 0.4, 0.6), 0.25), "stripes", scale=0.15, contrast=0.2, axis=(0, 0, 1)
    )
    trousers = Texture(b.tint((0.25, 0.25, 0.3), 0.1))
    skin = Texture(b.tint((0.85, 0.66, 0.52), 0.08))
    for side in (-1, 1):
        person.add(Capsule, (0.0, side * 0.1, 0.45), trousers, radius=0.08, half_length=0.32)
        person.add(Capsule, (0.0, side * 0.26, 1.1), shirt, radius=0.055, half_length=0.24)
    person.add(Capsule, (0.0, 0.0, 1.12), shirt, radius=0.17, half_length=0.2)
    person.add(Sphere, (0.0, 0.0, 1.6), skin, radius=0.11)


def _building(b: _Builder, center_xy: tuple[float, float], size: Vec3) -> None:
    sx, sy, sz = size
    building = b.object("building", (center_xy[0], center_xy[1], 0.0))
    facade = Texture(
        b.tint((0.72, 0.62, 0.52), 0.12),
        "windows",
        color2=(0.25, 0.3, 0.38),
        scale=2.0,
        contrast=0.7,
    )
    building.add(Box, (0.0, 0.0, sz / 2), facade, half_extents=(sx / 2, sy / 2, sz / 2))


def _street_lamp(b: _Builder, origin: Vec3, arm_direction: float) -> None:
    lamp = b.object("lamp", origin)
    lamp.add(Cylinder, (0.0, 0.0, 2.5), METAL, radius=0.08, half_height=2.5)
    head = Texture((0.95, 0.92, 0.75))
    lamp.add(Box, (0.0, arm_direction * 0.4, 5.0), head, half_extents=(0.15, 0.4, 0.08))


# ----------------------------------------------------------------------------------------------
# The worlds


def _room(seed: int) -> World:
    b = _Builder(seed, 0)
    half_x, half_y, height = 4.0, 3.0, 2.8
    tiles = Texture(b.tint((0.62, 0.48, 0.34)), "checker", scale=0.5, contrast=0.3)
    b.object("floor", (0.0, 0.0, 0.0)).add(Rectangle, (0, 0, 0), tiles, half_size=(half_x, half_y))
    plaster = Texture((0.92, 0.90, 0.85), "noise", scale=1.0, contrast=0.1)
    b.object("ceiling", (0.0, 0.0, 0.0)).add(
        Rectangle, (0, 0, height), plaster, rotation_x(math.pi), half_size=(half_x, half_y)
    )
    wall_colors = [(0.80, 0.74, 0.62), (0.62, 0.72, 0.78), (0.78, 0.66, 0.66), (0.70, 0.78, 0.64)]
    wall_centers = [
        (half_x, 0.0, half_y),
        (-half_x, 0.0, half_y),
        (0.0, half_y, half_x),
        (0.0, -half_y, half_x),
    ]
    for (cx, cy, half_width), color in zip(wall_centers, wall_colors, strict=True):
        # Local z faces into the room, local y is up, local x = up x inward runs along the wall.
        inward = (-float(np.sign(cx)), -float(np.sign(cy)), 0.0)
        along = (-inward[1], inward[0], 0.0)
        paper = Texture(b.tint(color, 0.03), "stripes", scale=0.35, contrast=0.18)
        b.object("wall", (cx, cy, 0.0)).add(
            Rectangle,
            (0.0, 0.0, height / 2),
            paper,
            _frame(along, (0.0, 0.0, 1.0), inward),
            half_size=(half_width, height / 2),
        )

    table_x, table_y, table_yaw = 0.3, -0.2, b.uniform(-0.1, 0.1)
    _table(b, (table_x, table_y, 0.0), table_yaw, (1.6, 0.9), 0.75)
    chair_color = (0.35, 0.45, 0.62)
    _chair(b, (table_x - 1.05, table_y, 0.0), table_yaw + b.uniform(-0.2, 0.2), chair_color)
    _chair(
        b, (table_x + 1.05, table_y, 0.0), table_yaw + math.pi + b.uniform(-0.2, 0.2), chair_color
    )
    _chair(b, (table_x, table_y + 0.75, 0.0), -math.pi / 2 + b.uniform(-0.2, 0.2), chair_color)
    top = 0.75
    _mug(b, (table_x - 0.45, table_y - 0.15, top), b.uniform(0, 6.3), (0.85, 0.25, 0.2))
    _mug(b, (table_x + 0.35, table_y + 0.2, top), b.uniform(0, 6.3), (0.95, 0.9, 0.8))
    _book(b, (table_x + 0.1, table_y - 0.2, top), b.uniform(-0.5, 0.5), (0.2, 0.35, 0.7), 0.04)
    _book(
        b, (table_x + 0.1, table_y - 0.2, top + 0.04), b.uniform(-0.5, 0.5), (0.75, 0.6, 0.2), 0.03
    )
    _plant(b, (table_x - 0.1, table_y + 0.2, top), 0.45)

    _sofa(b, (-1.0, half_y - 0.5, 0.0), -math.pi / 2, (0.55, 0.30, 0.30))
    _floor_lamp(b, (half_x - 0.6, half_y - 0.5, 0.0))
    _plant(b, (-half_x + 0.5, -half_y + 0.5, 0.0), 1.4)
    _plant(b, (half_x - 0.5, -half_y + 0.5, 0.0), 1.1)
    _ball(b, (-1.6 + b.uniform(-0.3, 0.3), -1.5, 0.0), 0.15, (0.9, 0.55, 0.1))

    rig = InwardRig(
        center=(0.2, 0.0, 0.8),
        radii=(2.9, 1.8),
        heights=(1.0, 2.1),
        target_spread=(1.2, 0.8, 0.35),
        fov_x_degrees=75.0,
        seed=seed,
    )
    return World("room", seed, tuple(b.primitives), rig, ambient=0.45)


def _tabletop(seed: int) -> World:
    b = _Builder(seed, 1)
    ground = Texture(b.tint((0.55, 0.52, 0.46)), "noise", scale=1.5, contrast=0.35, seed=seed)
    b.object("floor", (0.0, 0.0, 0.0)).add(Rectangle, (0, 0, 0), ground, half_size=(15.0, 15.0))
    top = 0.75
    _table(b, (0.0, 0.0, 0.0), b.uniform(-0.1, 0.1), (1.4, 0.9), top)
    _mug(b, (-0.35, -0.2, top), b.uniform(0, 6.3), (0.85, 0.25, 0.2))
    _mug(b, (0.25, 0.25, top), b.uniform(0, 6.3), (0.2, 0.5, 0.8))
    _book(b, (0.35, -0.15, top), b.uniform(-0.4, 0.4), (0.2, 0.55, 0.35), 0.04)
    _book(b, (0.35, -0.15, top + 0.04), b.uniform(-0.4, 0.4), (0.8, 0.7, 0.3), 0.04)
    _desk_lamp(b, (-0.5, 0.25, top), (0.9, 0.8, 0.2))
    _plant(b, (0.0, 0.05, top), 0.5)
    _ball(b, (-0.1, -0.28, top), 0.07, (0.2, 0.6, 0.9))
    _chair(b, (-1.1, 0.1, 0.0), b.uniform(-0.3, 0.3), (0.6, 0.35, 0.25))
    _chair(b, (1.0, -0.2, 0.0), math.pi + b.uniform(-0.3, 0.3), (0.6, 0.35, 0.25))
    rig = OrbitRig(
        target=(0.0, 0.0, 0.8),
        radius=2.6,
        elevations_degrees=(20.0, 50.0),
        fov_x_degrees=55.0,
        seed=seed,
    )
    return World("tabletop", seed, tuple(b.primitives), rig)


def _street(seed: int) -> World:
    b = _Builder(seed, 2)
    length, road_half = 48.0, 3.5
    asphalt = Texture((0.30, 0.30, 0.32), "noise", scale=2.0, contrast=0.3, seed=seed)
    road = b.object("road", (0.0, 0.0, 0.0))
    road.add(Rectangle, (0, 0, 0), asphalt, half_size=(length, road_half))
    road.add(Rectangle, (0, 0, 0.005), Texture((0.9, 0.8, 0.3)), half_size=(length, 0.08))
    paving = Texture((0.68, 0.66, 0.62), "checker", scale=1.2, contrast=0.2)
    for side in (-1, 1):
        b.object("sidewalk", (0.0, side * 5.0, 0.0)).add(
            Box, (0.0, 0.0, 0.075), paving, half_extents=(length, 1.5, 0.075)
        )
        x = -length
        while x < length:  # a row of facades, back to back, with varied widths and heights
            width = min(b.uniform(8.0, 14.0), length - x)
            _building(b, (x + width / 2, side * 11.5), (width, 10.0, b.uniform(6.0, 20.0)))
            x += width
        for x in np.arange(-length + 6.0, length - 4.0, 10.0):
            _tree(
                b,
                (x + b.uniform(-1.5, 1.5), side * 5.6, 0.15),
                b.uniform(4.0, 6.5),
                b.uniform(0, 1) < 0.4,
            )
        for x in np.arange(-length + 11.0, length - 4.0, 20.0):
            _street_lamp(b, (x, side * 4.0, 0.15), -side)
    for side in (-1, 1):  # facades closing both ends of the street
        _building(b, (side * (length + 5.0), 0.0), (10.0, 33.0, b.uniform(8.0, 14.0)))

    car_colors = [
        (0.7, 0.1, 0.1),
        (0.1, 0.25, 0.6),
        (0.85, 0.85, 0.85),
        (0.15, 0.15, 0.15),
        (0.9, 0.7, 0.1),
    ]
    for i, x in enumerate(np.arange(-length + 8.0, length - 6.0, 11.0)):  # parked, +y side
        _car(b, (x + b.uniform(-2.0, 2.0), 2.45, 0.0), b.uniform(-0.05, 0.05), car_colors[i % 5])
    for i, x in enumerate(
        (-34.0, -24.0, 25.0, 36.0)
    ):  # driving in the rig's lane, ahead and behind
        _car(b, (x + b.uniform(-1.0, 1.0), -1.75, 0.0), 0.0, car_colors[(i + 2) % 5])
    for i in range(12):
        side = 1 if i % 2 else -1
        x = -30.0 + 5.0 * i + b.uniform(-1.5, 1.5)
        _person(b, (x, side * b.uniform(4.2, 6.2), 0.15), b.uniform(0.0, 2 * math.pi))
    rig = StreetRig(
        start_x=-15.0,
        end_x=15.0,
        lane_y=-1.75,
        camera_height=1.6,
        pitch_degrees=5.0,
        fov_x_degrees=65.0,
    )
    return World("street", seed, tuple(b.primitives), rig, light_direction=(0.3, -0.4, 0.85))


_BUILDERS: dict[str, Callable[[int], World]] = {
    "room": _room,
    "tabletop": _tabletop,
    "street": _street,
}


def build_world(name: str, seed: int = 0) -> World | MeshWorld:
    """The built-in world ``name`` (one of :data:`WORLD_NAMES`); ``seed`` varies layout details.

    Procedural names give a :class:`World`, :data:`MESH_WORLD_NAMES` a
    :class:`~feature_splat.data.synthetic.mesh_worlds.MeshWorld` (same interface).
    """
    if name in MESH_WORLD_NAMES:
        # Imported here: mesh_worlds builds on this module's rigs.
        from feature_splat.data.synthetic.mesh_worlds import build_mesh_world

        return build_mesh_world(name, seed)
    if name not in _BUILDERS:
        raise DatasetError(
            f"name: unknown synthetic world {name!r}; expected one of {list(WORLD_NAMES)}"
        )
    return _BUILDERS[name](int(seed))
