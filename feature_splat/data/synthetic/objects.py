"""Procedural object categories with parts and keypoints (FeatureNeRF-style "object mode" data).

:func:`build_object` makes instance ``index`` of a category in :data:`CATEGORY_NAMES`: a handful of
analytic primitives whose shape parameters (sizes, proportions, leg style, optional arms, ...) are
drawn from ``np.random.default_rng([seed, category number, index])`` and whose colours and textures
from a second stream (the same key followed by 1), so every instance is reproducible and instances
differ substantially.

Object frame: z up, the front faces +x, "left" is +y (the object's own left, as for someone sitting
on the chair or driving the car), and the bounding box of the whole object is centred on the
origin. Front and back always look different (the chair's back stands on -x, the table's drawer
hangs on +x, the car's cabin sits towards -x and its head and tail lights differ), left and right
differ only by mirror symmetry.

Each primitive's ``class_id`` is its *part* id: an index into the category's :data:`PART_NAMES`
(0 is ``background``); ``instance_id`` is 0. Every instance of a category has every part except
optional ones (chair arms). Keypoints are named points on the surface with the same meaning on
every instance (:data:`KEYPOINT_NAMES`); none lies on an optional part. ``part_boxes`` and
:meth:`ObjectInstance.canonical_coordinates` give part-normalised coordinates, in which a keypoint
sits at nearly the same place on every instance (the seat's front left corner is (1, 1, 1) of the
seat box): that is what makes correspondences learnable.

- chair: seat, back (on -x), legs (round or square), arms (on about half of the chairs);
- table: top, legs (round or square), a drawer with a knob under the top on the +x side;
- car: body, cabin (towards -x), four wheels, lights (pale head lights on +x, red tail lights on -x).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.synthetic.primitives import (
    IDENTITY,
    Box,
    Cone,
    Cylinder,
    Mat3,
    Primitive,
    Sphere,
    rotation_x,
)
from feature_splat.data.synthetic.raycast import render_views
from feature_splat.data.synthetic.textures import Texture, Vec3
from feature_splat.errors import DatasetError

CATEGORY_NAMES = ("chair", "table", "car")

PART_NAMES: dict[str, tuple[str, ...]] = {
    "chair": ("background", "seat", "back", "legs", "arms"),
    "table": ("background", "top", "legs", "drawer"),
    "car": ("background", "body", "cabin", "wheels", "lights"),
}

# Corners of a rectangle in the x-y plane: name, sign of x (front = +x), sign of y (left = +y).
_CORNERS = (
    ("front_left", 1, 1),
    ("front_right", 1, -1),
    ("back_left", -1, 1),
    ("back_right", -1, -1),
)

KEYPOINT_NAMES: dict[str, tuple[str, ...]] = {
    "chair": (
        *(f"seat_{name}" for name, _, _ in _CORNERS),
        "back_top_left",
        "back_top_right",
        *(f"leg_{name}" for name, _, _ in _CORNERS),
    ),
    "table": (
        *(f"top_{name}" for name, _, _ in _CORNERS),
        *(f"leg_{name}" for name, _, _ in _CORNERS),
        "drawer_front",
    ),
    "car": (
        *(f"wheel_{name}" for name, _, _ in _CORNERS),
        "bumper_front",
        "bumper_back",
        *(f"roof_{name}" for name, _, _ in _CORNERS),
    ),
}

FOV_X_DEGREES = 40.0
ELEVATIONS_DEGREES = (10.0, 55.0)
FRAME_FILL = 1.05  # the image width at the origin's distance spans this many object diagonals

# Local z along world -y: the axis of a wheel.
_Z_TO_Y = rotation_x(math.pi / 2)


@dataclass(frozen=True, eq=False)
class ObjectInstance:
    """One object of a category, in object coordinates (see the module docstring for the frame)."""

    category: str
    index: int
    primitives: tuple[Primitive, ...]
    part_names: tuple[str, ...]
    part_boxes: np.ndarray  # [P + 1, 2, 3] per part: (centre, half extents); row 0 unused
    keypoint_names: tuple[str, ...]
    keypoints: np.ndarray  # [K, 3] on the surface
    keypoint_parts: np.ndarray  # [K] int64 part id of each keypoint
    size: float  # diagonal of the object's bounding box
    sky_color: Vec3 = (1.0, 1.0, 1.0)
    light_direction: Vec3 = (0.4, 0.3, 0.85)
    ambient: float = 0.45

    def canonical_coordinates(self, points: Tensor, parts: Tensor) -> Tensor:
        """Part-normalised coordinates [N, 3] of object points [N, 3] with part ids [N].

        ``(p - centre) / half_extents`` of the part's box: in [-1, 1]^3 for surface points. Rows of
        part 0 (background), or of a part this instance does not have, are zeros.
        """
        boxes = torch.as_tensor(self.part_boxes, dtype=points.dtype, device=points.device)
        parts = parts.to(points.device, torch.int64)
        center, half = boxes[parts, 0], boxes[parts, 1]
        present = (half > 0).all(dim=1) & (parts > 0)
        canonical = (points - center) / torch.where(half > 0, half, torch.ones_like(half))
        return torch.where(present[:, None], canonical, torch.zeros_like(canonical))

    def cameras(self, n_views: int, size: int = 64, seed: int = 0) -> Cameras:
        """``n_views`` cameras looking at the object from random azimuths and elevations.

        Azimuths are uniform in [0, 2 pi), elevations uniform in [10, 55] degrees, the horizontal
        field of view is 40 degrees and the distance makes the image width span 1.6 object
        diagonals; look-at targets are jittered by up to 0.02 diagonals. Images are ``size`` x
        ``size``; the draw is seeded by ``(seed, category, index, n_views)``.
        """
        if n_views < 1 or size < 1:
            raise DatasetError(
                f"n_views, size: expected positive values, got n_views={n_views}, size={size}"
            )
        rng = np.random.default_rng(
            [seed, CATEGORY_NAMES.index(self.category), self.index, n_views, 7]
        )
        azimuths = rng.uniform(0.0, 2.0 * math.pi, n_views)
        elevations = np.radians(rng.uniform(*ELEVATIONS_DEGREES, n_views))
        targets = rng.uniform(-0.02, 0.02, (n_views, 3)) * self.size
        distance = FRAME_FILL * self.size / (2.0 * math.tan(math.radians(FOV_X_DEGREES) / 2.0))
        eyes = distance * np.stack(
            [
                np.cos(elevations) * np.cos(azimuths),
                np.cos(elevations) * np.sin(azimuths),
                np.sin(elevations),
            ],
            axis=1,
        )
        viewmats = look_at(
            torch.tensor(eyes, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
        )
        K = intrinsics_from_fov(FOV_X_DEGREES, size, size)
        return Cameras(viewmats, K.expand(n_views, 3, 3).clone(), size, size)

    def render(self, cameras: Cameras, supersample: int = 2) -> dict[str, Tensor]:
        """Ray-cast ``cameras``; see :func:`~feature_splat.data.synthetic.raycast.render_views`.

        ``labels`` are part ids (0 where a ray misses), ``instances`` are 0 on the object. The
        ray-caster reads only ``primitives``, ``sky_color``, ``light_direction`` and ``ambient``.
        """
        return render_views(self, cameras, supersample=supersample)  # type: ignore[arg-type]


def build_object(category: str, index: int, seed: int = 0) -> ObjectInstance:
    """Instance ``index`` (>= 0) of ``category`` (one of :data:`CATEGORY_NAMES`), seeded by ``seed``."""
    if category not in _BUILDERS:
        raise DatasetError(
            f"category: unknown object category {category!r}; expected one of {list(CATEGORY_NAMES)}"
        )
    if index < 0 or seed < 0:
        raise DatasetError(f"index, seed: expected >= 0, got index={index}, seed={seed}")
    key = [int(seed), CATEGORY_NAMES.index(category), int(index)]
    draft = _Draft(category)
    # Shapes and textures come from separate streams, so each varies independently of the other.
    _BUILDERS[category](draft, np.random.default_rng(key), np.random.default_rng([*key, 1]))
    return draft.finish(int(index))


# ----------------------------------------------------------------------------------------------
# Assembling an instance


@dataclass
class _Draft:
    """Primitives and keypoints of an object being built, before it is centred."""

    category: str
    primitives: list[Primitive] = field(default_factory=list)
    keypoints: dict[str, tuple[Vec3, int]] = field(default_factory=dict)

    def part(self, name: str) -> int:
        return PART_NAMES[self.category].index(name)

    def add(
        self,
        part: str,
        shape: Callable[..., Primitive],
        center: Vec3,
        texture: Texture,
        rotation: Mat3 = IDENTITY,
        **size: float | tuple[float, ...],
    ) -> None:
        """Add a primitive of ``part`` centred at ``center`` (object coordinates)."""
        center = (float(center[0]), float(center[1]), float(center[2]))
        self.primitives.append(
            shape(
                center=center,
                rotation=rotation,
                class_id=self.part(part),
                instance_id=0,
                texture=texture,
                **size,
            )
        )

    def keypoint(self, name: str, part: str, point: Vec3) -> None:
        """Name the surface point ``point`` of ``part``."""
        self.keypoints[name] = (point, self.part(part))

    def finish(self, index: int) -> ObjectInstance:
        """The instance, shifted so that its bounding box is centred on the origin."""
        boxes = np.array([_bounds(p) for p in self.primitives])  # [N, 2, 3] (low, high)
        low, high = boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)
        shift = -(low + high) / 2.0
        primitives = tuple(
            replace(p, center=tuple(float(c) for c in np.asarray(p.center) + shift))
            for p in self.primitives
        )
        part_names = PART_NAMES[self.category]
        part_ids = np.array([p.class_id for p in self.primitives])
        part_boxes = np.zeros((len(part_names), 2, 3))
        for part in range(1, len(part_names)):
            own = boxes[part_ids == part] + shift
            if len(own):
                part_low, part_high = own[:, 0].min(axis=0), own[:, 1].max(axis=0)
                part_boxes[part] = ((part_low + part_high) / 2.0, (part_high - part_low) / 2.0)
        names = KEYPOINT_NAMES[self.category]
        keypoints = np.array([self.keypoints[name][0] for name in names], dtype=np.float64) + shift
        keypoint_parts = np.array([self.keypoints[name][1] for name in names], dtype=np.int64)
        return ObjectInstance(
            category=self.category,
            index=index,
            primitives=primitives,
            part_names=part_names,
            part_boxes=part_boxes,
            keypoint_names=names,
            keypoints=keypoints,
            keypoint_parts=keypoint_parts,
            size=float(np.linalg.norm(high - low)),
        )


def _bounds(primitive: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box (low, high) around a box, cylinder or sphere (exact for the rotations
    the categories use, which only permute axes)."""
    if isinstance(primitive, Box):
        half = primitive.half_extents
    elif isinstance(primitive, Cone):  # cylinders included
        radius = max(primitive.radius_bottom, primitive.radius_top)
        half = (radius, radius, primitive.half_height)
    elif isinstance(primitive, Sphere):
        half = (primitive.radius,) * 3
    else:
        raise TypeError(f"_bounds: unsupported primitive {type(primitive).__name__}")
    extent = np.abs(np.asarray(primitive.rotation)) @ np.asarray(half, dtype=np.float64)
    center = np.asarray(primitive.center)
    return center - extent, center + extent


# ----------------------------------------------------------------------------------------------
# Colours

_FABRICS = [
    (0.62, 0.22, 0.18),
    (0.22, 0.36, 0.62),
    (0.30, 0.52, 0.32),
    (0.78, 0.62, 0.32),
    (0.42, 0.42, 0.46),
    (0.58, 0.40, 0.60),
    (0.20, 0.55, 0.58),
]
_WOODS = [(0.55, 0.38, 0.22), (0.72, 0.56, 0.36), (0.36, 0.23, 0.13), (0.82, 0.70, 0.52)]
_METALS = [(0.35, 0.35, 0.38), (0.14, 0.14, 0.15), (0.68, 0.68, 0.70)]
_PAINTS = [
    (0.72, 0.10, 0.10),
    (0.12, 0.26, 0.62),
    (0.80, 0.80, 0.82),
    (0.16, 0.16, 0.17),
    (0.90, 0.68, 0.10),
    (0.20, 0.50, 0.30),
    (0.45, 0.18, 0.55),
]


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    """A uniform draw in [low, high) as a Python float (keeps reprs and cache keys plain)."""
    return float(rng.uniform(low, high))


def _pick(rng: np.random.Generator, palette: list[Vec3], jitter: float = 0.05) -> Vec3:
    """A colour of ``palette`` with each channel jittered by up to ``jitter``."""
    color = np.asarray(palette[int(rng.integers(len(palette)))])
    return tuple(float(c) for c in np.clip(color + rng.uniform(-jitter, jitter, 3), 0.0, 1.0))


def _pattern(rng: np.random.Generator, color: Vec3, scale: float) -> Texture:
    """``color`` with a random smooth pattern of period about ``scale``."""
    pattern = ("solid", "noise", "stripes", "checker")[int(rng.integers(4))]
    return Texture(
        color,
        pattern,
        scale=scale * _u(rng, 0.7, 1.4),
        contrast=_u(rng, 0.15, 0.35),
        axis=(1.0, _u(rng, -0.5, 0.5), _u(rng, -0.5, 0.5)),
        seed=int(rng.integers(1 << 16)),
    )


def _wood(rng: np.random.Generator) -> Texture:
    """Wood-like stripes along x in a random wood colour."""
    return Texture(
        _pick(rng, _WOODS),
        "stripes",
        scale=_u(rng, 0.06, 0.14),
        contrast=_u(rng, 0.15, 0.3),
        axis=(_u(rng, -0.3, 0.3), 1.0, 0.0),
    )


# ----------------------------------------------------------------------------------------------
# The categories (built standing on z = 0, centred by _Draft.finish)


def _leg(
    draft: _Draft,
    xy: tuple[float, float],
    corner: tuple[str, int, int],
    length: float,
    thickness: float,
    round_legs: bool,
    texture: Texture,
) -> None:
    """A vertical leg from the floor up to ``length``, and its tip keypoint: the bottom point of the
    leg's outer edge (on the cap's rim, facing away from the object so cameras above can see it)."""
    name, fx, fy = corner
    x, y = xy
    if round_legs:
        draft.add(
            "legs", Cylinder, (x, y, length / 2), texture, radius=thickness, half_height=length / 2
        )
        tip = (x + fx * thickness / math.sqrt(2.0), y + fy * thickness / math.sqrt(2.0), 0.0)
    else:
        half = (thickness, thickness, length / 2)
        draft.add("legs", Box, (x, y, length / 2), texture, half_extents=half)
        tip = (x + fx * thickness, y + fy * thickness, 0.0)
    draft.keypoint(f"leg_{name}", "legs", tip)


def _chair(draft: _Draft, rng: np.random.Generator, colors: np.random.Generator) -> None:
    """Seat, a narrower back behind the seat's -x edge, four legs, arms on about half of them."""
    depth, width = _u(rng, 0.19, 0.27), _u(rng, 0.19, 0.28)  # seat half sizes (x, y)
    seat_height, seat_thickness = _u(rng, 0.38, 0.5), _u(rng, 0.03, 0.08)
    back_height, back_thickness = _u(rng, 0.28, 0.55), _u(rng, 0.025, 0.06)
    back_width = _u(rng, 0.75, 0.92) * width  # narrower than the seat: its back corners stay free
    leg, inset, round_legs = _u(rng, 0.02, 0.04), _u(rng, 0.0, 0.04), rng.random() < 0.5
    has_arms, arm_height, arm_half = rng.random() < 0.5, _u(rng, 0.13, 0.22), _u(rng, 0.015, 0.03)
    fabric = _pattern(colors, _pick(colors, _FABRICS), 0.12)
    back = fabric if colors.random() < 0.5 else _pattern(colors, _pick(colors, _FABRICS), 0.12)
    frame = Texture(_pick(colors, _METALS)) if colors.random() < 0.5 else _wood(colors)

    draft.add(
        "seat",
        Box,
        (0.0, 0.0, seat_height - seat_thickness / 2),
        fabric,
        half_extents=(depth, width, seat_thickness / 2),
    )
    bottom, top = seat_height - seat_thickness, seat_height + back_height
    draft.add(
        "back",
        Box,
        (-depth - back_thickness / 2, 0.0, (bottom + top) / 2),
        back,
        half_extents=(back_thickness / 2, back_width, (top - bottom) / 2),
    )
    for corner in _CORNERS:
        name, fx, fy = corner
        draft.keypoint(f"seat_{name}", "seat", (fx * depth, fy * width, seat_height))
        xy = (fx * (depth - inset - leg), fy * (width - inset - leg))
        _leg(draft, xy, corner, seat_height - seat_thickness, leg, round_legs, frame)
    for side, fy in (("left", 1), ("right", -1)):
        draft.keypoint(f"back_top_{side}", "back", (-depth, fy * back_width, top))
    if has_arms:
        front = depth - 0.04  # arms stop short of the seat's front corners
        rest_z = seat_height + arm_height - arm_half / 2
        for fy in (-1, 1):
            y = fy * (width - arm_half)
            draft.add(
                "arms",
                Box,
                ((front - depth) / 2, y, rest_z),
                frame,
                half_extents=((front + depth) / 2, arm_half, arm_half / 2),
            )
            post = (rest_z - arm_half / 2 - seat_height) / 2
            draft.add(
                "arms",
                Box,
                (front - arm_half, y, seat_height + post),
                frame,
                half_extents=(arm_half, arm_half, post),
            )


def _table(draft: _Draft, rng: np.random.Generator, colors: np.random.Generator) -> None:
    """A rectangular top on four legs, a drawer with a knob under the top's +x edge."""
    length, width = _u(rng, 0.4, 0.7), _u(rng, 0.25, 0.45)  # top half sizes (x, y)
    height, thickness = _u(rng, 0.55, 0.8), _u(rng, 0.03, 0.08)
    leg, inset, round_legs = _u(rng, 0.025, 0.05), _u(rng, 0.0, 0.06), rng.random() < 0.5
    drawer_width = _u(rng, 0.45, 0.75) * (width - inset - 2 * leg)  # half, between the legs
    drawer_height, drawer_depth = _u(rng, 0.07, 0.14), _u(rng, 0.15, 0.3)
    margin, knob = _u(rng, 0.0, 0.04), _u(rng, 0.012, 0.022)
    wood = _wood(colors)
    legs = wood if colors.random() < 0.5 else Texture(_pick(colors, _METALS))
    drawer = _pattern(colors, _pick(colors, _FABRICS), 0.08)

    draft.add(
        "top",
        Box,
        (0.0, 0.0, height - thickness / 2),
        wood,
        half_extents=(length, width, thickness / 2),
    )
    for corner in _CORNERS:
        name, fx, fy = corner
        draft.keypoint(f"top_{name}", "top", (fx * length, fy * width, height))
        xy = (fx * (length - inset - leg), fy * (width - inset - leg))
        _leg(draft, xy, corner, height - thickness, leg, round_legs, legs)
    front = length - margin
    drawer_z = height - thickness - drawer_height / 2
    draft.add(
        "drawer",
        Box,
        (front - drawer_depth / 2, 0.0, drawer_z),
        drawer,
        half_extents=(drawer_depth / 2, drawer_width, drawer_height / 2),
    )
    draft.add(
        "drawer", Sphere, (front, 0.0, drawer_z), Texture(_pick(colors, _METALS)), radius=knob
    )
    draft.keypoint("drawer_front", "drawer", (front + knob, 0.0, drawer_z))


def _car(draft: _Draft, rng: np.random.Generator, colors: np.random.Generator) -> None:
    """A body on four wheels, a cabin set back towards -x, head lights (+x) and tail lights (-x)."""
    length, width = _u(rng, 0.45, 0.75), _u(rng, 0.2, 0.32)  # body half sizes (x, y)
    body_height, radius = _u(rng, 0.14, 0.28), _u(rng, 0.08, 0.15)
    clearance, tyre = radius * _u(rng, 0.55, 0.9), _u(rng, 0.03, 0.055)
    overhang = _u(rng, 0.05, 0.15)
    cabin_length, cabin_width = _u(rng, 0.25, 0.4) * length, _u(rng, 0.75, 0.95) * width
    cabin_height, cabin_x = _u(rng, 0.12, 0.24), -_u(rng, 0.1, 0.28) * length
    light_width, light_height = _u(rng, 0.12, 0.22) * width, _u(rng, 0.15, 0.25) * body_height
    paint = _pick(colors, _PAINTS)
    body = Texture(paint, "noise", scale=0.4, contrast=0.15, seed=int(colors.integers(1 << 16)))
    glass = Texture(
        tuple(0.6 * c for c in paint),
        "windows",
        color2=(0.15, 0.18, 0.22),
        scale=_u(colors, 0.15, 0.3),
        contrast=0.8,
    )

    body_top = clearance + body_height
    draft.add(
        "body",
        Box,
        (0.0, 0.0, clearance + body_height / 2),
        body,
        half_extents=(length, width, body_height / 2),
    )
    roof = body_top + cabin_height
    draft.add(
        "cabin",
        Box,
        (cabin_x, 0.0, body_top + cabin_height / 2),
        glass,
        half_extents=(cabin_length, cabin_width, cabin_height / 2),
    )
    axle, outer = length - overhang - radius, width + 0.01  # wheels stick out of the body a little
    for name, fx, fy in _CORNERS:
        center = (fx * axle, fy * (outer - tyre), radius)
        draft.add(
            "wheels",
            Cylinder,
            center,
            Texture((0.1, 0.1, 0.1)),
            _Z_TO_Y,
            radius=radius,
            half_height=tyre,
        )
        draft.keypoint(f"wheel_{name}", "wheels", (fx * axle, fy * outer, radius))
        draft.keypoint(
            f"roof_{name}", "cabin", (cabin_x + fx * cabin_length, fy * cabin_width, roof)
        )
    lamp_z = body_top - 0.3 * body_height
    for fx, color in ((1, (0.98, 0.95, 0.7)), (-1, (0.85, 0.08, 0.08))):
        for fy in (-1, 1):
            draft.add(
                "lights",
                Box,
                (fx * (length + 0.005), fy * 0.6 * width, lamp_z),
                Texture(color),
                half_extents=(0.005, light_width, light_height),
            )
    bumper_z = clearance + body_height / 2
    draft.keypoint("bumper_front", "body", (length, 0.0, bumper_z))
    draft.keypoint("bumper_back", "body", (-length, 0.0, bumper_z))


_Builder = Callable[[_Draft, np.random.Generator, np.random.Generator], None]
_BUILDERS: dict[str, _Builder] = {
    "chair": _chair,
    "table": _table,
    "car": _car,
}
