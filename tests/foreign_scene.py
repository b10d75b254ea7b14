"""A "foreign" nerfstudio scene: rendered by a small numpy ray caster, not by feature_splat.

Tests and benchmarks use it as a stand-in for a user's own capture: a nerfstudio folder with
``transforms.json`` and 8-bit PNGs, and nothing else (no point cloud, no split lists). Nothing
here imports ``feature_splat``, so the scene shares no code or conventions with the renderer
under test beyond the published nerfstudio format.

The world (Z up, metres) is a textured ground square (``GROUND_HALF_EXTENT`` each side of the
origin; beyond it rays see sky) with six textured objects on it (``SCENE_OBJECTS``): two boxes,
two spheres and two cylinders. Shading is Lambertian with one directional light, ambient light and
hard shadows cast by the objects. Textures are ``sharp`` (hard edges, strong contrast, fine
grout lines: harder than anything in the built-in worlds) or ``soft`` (the same patterns as
sinusoids at half the contrast, the smoothness of the built-in worlds' textures). The scene is
the same for every seed; the seed draws the cameras (and the feature noise).

Ground truth comes back in a :class:`ForeignScene`: the images as written, per-pixel class
labels and camera-space depths (from the pixel-centre ray) and the cameras. With a
:class:`FeatureSpec`, low-resolution per-image feature maps whose truth is known (noisy cell
means of fixed class embeddings) are written beside the dataset folder, as if a foundation
model had produced them elsewhere.

Script use::

    python tests/foreign_scene.py OUT [--views 40] [--size 128] [--sky plain|gradient]
        [--textures sharp|soft] [--seed 0] [--features] [--feature-dim 32] [--stride 8] [--noise 0.3]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES: tuple[str, ...] = ("sky", "ground", "box", "sphere", "cylinder")
"""Label ids are indices into this tuple; objects of the same kind share a class."""

SKY, GROUND = 0, 1
GROUND_HALF_EXTENT = 5.0
"""The ground is the square |x|, |y| <= this (metres) on z = 0."""

FOV_DEGREES = 60.0
LOOK_AT = (0.0, 0.0, 0.5)
SKY_COLOUR = np.array([0.70, 0.77, 0.84])
_SKY_ZENITH = np.array([0.33, 0.52, 0.82])
_SKY_HORIZON = np.array([0.84, 0.86, 0.89])
_SKY_BELOW = np.array([0.58, 0.58, 0.60])
_LIGHT = np.array([-0.45, -0.3, 0.84]) / np.linalg.norm([-0.45, -0.3, 0.84])
_AMBIENT, _DIFFUSE = 0.38, 0.7
_EPS = 1e-6


@dataclass(frozen=True)
class SceneObject:
    """One object standing on the ground.

    ``centre`` is the geometric centre (world). ``size`` is the half extents (box, in its own
    frame before ``yaw``), ``(r, r, r)`` (sphere) or ``(r, r, half_height)`` (cylinder), so the
    object spans z in ``[0, 2 * size[2]]``. ``yaw`` turns the object about world Z (radians).
    """

    kind: str
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    colour: tuple[float, float, float]
    pattern: str
    yaw: float = 0.0

    @property
    def label(self) -> int:
        """The class id of this object's pixels."""
        return CLASS_NAMES.index(self.kind)

    @property
    def top_centre(self) -> np.ndarray:
        """The highest point on the object's axis (world), handy for projection checks."""
        x, y, z = self.centre
        return np.array([x, y, z + self.size[2]])


SCENE_OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("box", (1.3, -0.9, 0.5), (0.5, 0.5, 0.5), (0.80, 0.26, 0.20), "stripes", 0.4),
    SceneObject("box", (-1.5, 1.2, 0.7), (0.4, 0.6, 0.7), (0.20, 0.40, 0.80), "checks", -0.3),
    SceneObject("sphere", (-1.2, -1.2, 0.65), (0.65, 0.65, 0.65), (0.30, 0.68, 0.30), "marble"),
    SceneObject("sphere", (1.5, 1.4, 0.5), (0.5, 0.5, 0.5), (0.95, 0.70, 0.20), "bands"),
    SceneObject("cylinder", (0.1, 0.3, 0.9), (0.45, 0.45, 0.9), (0.62, 0.36, 0.72), "rings"),
    SceneObject("cylinder", (0.3, -2.0, 0.3), (0.3, 0.3, 0.3), (0.15, 0.62, 0.62), "stripes"),
)


@dataclass(frozen=True)
class FeatureSpec:
    """How to write per-image feature maps whose truth is known.

    Each map holds, per ``stride x stride`` cell, the mean class embedding of the cell's pixels
    plus gaussian noise of std ``noise / sqrt(dim)`` per channel (class embeddings, then noise,
    drawn from ``default_rng(seed + 1000)``). ``layout`` is ``"hwc"`` or
    ``"chw"``; ``file_format`` is ``"npy"``, ``"npz"`` (key ``"features"``) or ``"pt"`` (a
    tensor saved by ``torch.save``); ``dtype`` is ``"float16"`` or ``"float32"``.
    """

    dim: int = 32
    stride: int = 8
    noise: float = 0.3
    layout: str = "hwc"
    file_format: str = "npy"
    dtype: str = "float16"
    folder_name: str = "features"
    write_labels: bool = True

    def validate(self) -> None:
        """Raise ValueError for a spec that cannot be written."""
        if self.dim < 1 or self.stride < 1 or not self.noise >= 0:
            raise ValueError(f"dim and stride must be >= 1 and noise >= 0, got {self}")
        if self.layout not in ("hwc", "chw"):
            raise ValueError(f"layout must be 'hwc' or 'chw', got {self.layout!r}")
        if self.file_format not in ("npy", "npz", "pt"):
            raise ValueError(f"file_format must be 'npy', 'npz' or 'pt', got {self.file_format!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")
        if not self.folder_name or "/" in self.folder_name:
            raise ValueError(f"folder_name must be a plain name, got {self.folder_name!r}")


@dataclass
class ForeignScene:
    """What :func:`write_foreign_scene` wrote, with its ground truth.

    ``images`` are exactly the PNGs' values (after 8-bit rounding). ``labels`` index
    ``class_names``. ``depths`` are camera-space z distances along the optical axis (inf for
    sky). ``camtoworlds`` are the OpenGL camera -> world matrices written to
    ``transforms.json``; ``focal`` is fl_x = fl_y in pixels, with the principal point at the
    image centre. ``features`` (when written) are the cell-level maps as written (after the
    spec's dtype rounding), always returned as [V, h, w, dim] float32 whatever the layout.
    """

    folder: Path
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    depths: np.ndarray
    camtoworlds: np.ndarray
    focal: float
    file_names: list[str]
    features_folder: Path | None = None
    class_embeddings: np.ndarray | None = None
    features: np.ndarray | None = None

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.images.shape[2])

    def project(self, points: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [N, 3] into ``view``: (pixel xy [N, 2], camera-space depth [N]).

        Pixel coordinates are continuous (pixel ``(row, col)`` covers ``[col, col + 1)`` x
        ``[row, row + 1)``); depth is positive in front of the camera.
        """
        world_to_cam = np.linalg.inv(self.camtoworlds[view])
        cam = np.asarray(points, dtype=np.float64) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        depth = -cam[:, 2]
        x = self.focal * cam[:, 0] / depth + self.width / 2
        y = -self.focal * cam[:, 1] / depth + self.height / 2
        return np.stack([x, y], axis=1), depth


# --- procedural noise --------------------------------------------------------------------------

_PERM = np.random.default_rng(20240611).permutation(256)
_LATTICE = np.random.default_rng(20240612).random(256)


def _value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points p [..., 3]."""
    cell = np.floor(p)
    frac = p - cell
    i = cell.astype(np.int64)
    u = frac * frac * (3.0 - 2.0 * frac)
    out = np.zeros(p.shape[:-1])
    for dx in (0, 1):
        wx = u[..., 0] if dx else 1.0 - u[..., 0]
        hx = _PERM[(i[..., 0] + dx) & 255]
        for dy in (0, 1):
            wy = u[..., 1] if dy else 1.0 - u[..., 1]
            hy = _PERM[(hx + i[..., 1] + dy) & 255]
            for dz in (0, 1):
                wz = u[..., 2] if dz else 1.0 - u[..., 2]
                out += wx * wy * wz * _LATTICE[(hy + i[..., 2] + dz) & 255]
    return out


def _fbm(p: np.ndarray, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise, in [0, 1]."""
    total, norm, amplitude = np.zeros(p.shape[:-1]), 0.0, 1.0
    for octave in range(octaves):
        total += amplitude * _value_noise(p * 2.0**octave + 17.0 * octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a -> b by t [N] (broadcast over RGB)."""
    return a + (b - a) * t[:, None]


def _square(u: np.ndarray, soft: bool) -> np.ndarray:
    """A square wave of period 2 in [0, 1]: 1 where floor(u) is odd. ``soft``: the sinusoid of the
    same period and phase instead (1 at the middle of the odd cells, 0 at the even ones)."""
    if soft:
        return 0.5 - 0.5 * np.cos(np.pi * (u - 0.5))
    return (np.floor(u).astype(np.int64) % 2).astype(np.float64)


def _xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exclusive or of two waves in [0, 1] (exact on 0/1, smooth between)."""
    return a + b - 2.0 * a * b


# --- textures --------------------------------------------------------------------------------
# Each maps (local point [N, 3], local normal [N, 3], base colour [3], soft) to albedo [N, 3].
# Sharp textures have hard edges and strong contrast (harder than the built-in worlds); soft ones
# are the same patterns as sinusoids at half the contrast, like the built-in worlds' textures.

_SOFT_CONTRAST = 0.5


def _contrast(soft: bool) -> float:
    return _SOFT_CONTRAST if soft else 1.0


def _stripes(p: np.ndarray, n: np.ndarray, base: np.ndarray, soft: bool) -> np.ndarray:
    wave = np.sin(2 * np.pi * (p @ np.array([1.0, 0.6, 0.8])) / 0.24)
    weight = 0.5 + 0.5 * wave if soft else np.clip(wave * 3.0 + 0.5, 0.0, 1.0)
    return _mix(base, np.array([0.95, 0.92, 0.85]), weight * 0.75 * _contrast(soft))


def _checks(p: np.ndarray, n: np.ndarray, base: np.ndarray, soft: bool) -> np.ndarray:
    x, y, z = (_square((p[:, axis] + 0.07) / 0.2, soft) for axis in range(3))
    parity = _xor(_xor(x, y), z)
    return _mix(base, np.array([0.92, 0.93, 0.95]), 0.65 * _contrast(soft) * parity)


def _marble(p: np.ndarray, n: np.ndarray, base: np.ndarray, soft: bool) -> np.ndarray:
    veins = np.abs(np.sin(7.0 * p[:, 2] + 9.0 * _fbm(p * 2.5)))
    vein = np.clip((0.45 - veins) / 0.4, 0.0, 1.0) if soft else (veins < 0.25).astype(np.float64)
    albedo = base * (1.0 + _contrast(soft) * (0.75 * _fbm(p * 5.0) - 0.45))[:, None]
    return _mix(albedo, np.array([0.10, 0.18, 0.08]), 0.8 * _contrast(soft) * vein)


def _bands(p: np.ndarray, n: np.ndarray, base: np.ndarray, soft: bool) -> np.ndarray:
    latitude = np.arcsin(np.clip(n[:, 2], -1.0, 1.0))
    band = _square(latitude / (np.pi / 8), soft)
    longitude = _square(np.arctan2(n[:, 1], n[:, 0]) / (np.pi / 6), soft)
    weight = (0.8 * band * longitude + 0.3 * band) * _contrast(soft)
    return _mix(base, np.array([0.45, 0.12, 0.10]), weight)


def _rings(p: np.ndarray, n: np.ndarray, base: np.ndarray, soft: bool) -> np.ndarray:
    angle = _square(np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi) * 12, soft)
    ring = _square((p[:, 2] + 2.0) / 0.3, soft)
    radial = _square(np.hypot(p[:, 0], p[:, 1]) / 0.1, soft)
    cap = np.abs(n[:, 2]) > 0.5
    pattern = np.where(cap, radial, _xor(angle, ring))
    return _mix(base, np.array([0.98, 0.90, 0.55]), 0.7 * _contrast(soft) * pattern)


_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, bool], np.ndarray]] = {
    "stripes": _stripes,
    "checks": _checks,
    "marble": _marble,
    "bands": _bands,
    "rings": _rings,
}


def _ground_albedo(p: np.ndarray, soft: bool) -> np.ndarray:
    """Stone tiles: a 0.5 m checker of two tones, mottled by noise, with dark grout (sharp only)."""
    parity = _xor(_square(p[:, 0] / 0.5, soft), _square(p[:, 1] / 0.5, soft))
    light, dark = np.array([0.63, 0.58, 0.49]), np.array([0.44, 0.43, 0.41])
    albedo = _mix(light, dark, _contrast(soft) * parity)
    mottle = 0.55 * _fbm(p * np.array([3.0, 3.0, 0.0])) - 0.3
    albedo *= (1.0 + _contrast(soft) * mottle)[:, None]
    if soft:
        return albedo
    edge = np.abs(p[:, :2] / 0.5 - np.round(p[:, :2] / 0.5)).min(axis=1)
    return _mix(albedo, np.array([0.22, 0.21, 0.20]), 0.8 * (edge < 0.035))


# --- ray casting -------------------------------------------------------------------------------


def _rotate_z(v: np.ndarray, angle: float) -> np.ndarray:
    """Rotate vectors [N, 3] about Z by angle (radians)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)


def _to_local(obj: SceneObject, points: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ray origins and directions in the object's frame (centred, yaw undone)."""
    return _rotate_z(points - np.array(obj.centre), -obj.yaw), _rotate_z(dirs, -obj.yaw)


def _hit_distance(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance along unit rays (local frame) to the object's first surface; inf on a miss."""
    half = np.array(obj.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.kind == "box":
            safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
            t1, t2 = (-half - o) / safe, (half - o) / safe
            near = np.minimum(t1, t2).max(axis=1)
            far = np.maximum(t1, t2).min(axis=1)
            return np.where((near <= far) & (near > _EPS), near, np.inf)
        if obj.kind == "sphere":
            b = np.einsum("ij,ij->i", o, d)
            c = np.einsum("ij,ij->i", o, o) - half[0] ** 2
            t = -b - np.sqrt(b * b - c)
            return np.where(t > _EPS, t, np.inf)
        # Cylinder about the local Z axis: the side, then the two caps.
        radius, height = half[0], half[2]
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius**2
        side = (-b - np.sqrt(b * b - a * c)) / a
        side = np.where((side > _EPS) & (np.abs(o[:, 2] + side * d[:, 2]) <= height), side, np.inf)
        best = side
        for z in (height, -height):
            t = (z - o[:, 2]) / d[:, 2]
            x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
            cap = np.where((t > _EPS) & (x * x + y * y <= radius**2), t, np.inf)
            best = np.fmin(best, cap)
        return np.where(np.isnan(best), np.inf, best)


def _local_normal(obj: SceneObject, p: np.ndarray) -> np.ndarray:
    """Outward unit normals [N, 3] at local surface points p [N, 3]."""
    half = np.array(obj.size)
    if obj.kind == "sphere":
        return p / np.linalg.norm(p, axis=1, keepdims=True)
    if obj.kind == "box":
        scaled = p / half
        axis = np.abs(scaled).argmax(axis=1)
        normal = np.zeros_like(p)
        normal[np.arange(len(p)), axis] = np.sign(scaled[np.arange(len(p)), axis])
        return normal
    radial = np.hypot(p[:, 0], p[:, 1])
    cap = np.abs(p[:, 2]) / half[2] > radial / half[0]
    side = (
        np.stack([p[:, 0], p[:, 1], np.zeros(len(p))], axis=1) / np.maximum(radial, 1e-12)[:, None]
    )
    return np.where(cap[:, None], np.array([0.0, 0.0, 1.0]) * np.sign(p[:, 2:3]), side)


def _trace(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hits of unit rays [N, 3] from one origin: (distance [N], surface id [N]).

    Surface ids: -1 sky, 0 ground, k + 1 for ``SCENE_OBJECTS[k]``.
    """
    origins = np.broadcast_to(origin, dirs.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / dirs[:, 2]
    x, y = origin[0] + t * dirs[:, 0], origin[1] + t * dirs[:, 1]
    on_ground = (t > _EPS) & (np.maximum(np.abs(x), np.abs(y)) <= GROUND_HALF_EXTENT)
    best = np.where(on_ground, t, np.inf)
    surface = np.where(on_ground, 0, -1)
    for k, obj in enumerate(SCENE_OBJECTS):
        dist = _hit_distance(obj, *_to_local(obj, origins, dirs))
        closer = dist < best
        best = np.where(closer, dist, best)
        surface = np.where(closer, k + 1, surface)
    return best, surface


def _occluded(points: np.ndarray) -> np.ndarray:
    """Whether the light is blocked by an object, for world points [N, 3] just off a surface."""
    dirs = np.broadcast_to(_LIGHT, points.shape)
    blocked = np.zeros(len(points), dtype=bool)
    for obj in SCENE_OBJECTS:
        blocked |= np.isfinite(_hit_distance(obj, *_to_local(obj, points, dirs)))
    return blocked


def _sky(dirs: np.ndarray, sky: str) -> np.ndarray:
    """Sky colour [N, 3] for unit ray directions [N, 3]."""
    if sky == "plain":
        return np.broadcast_to(SKY_COLOUR, dirs.shape).copy()
    elevation = np.arcsin(np.clip(dirs[:, 2], -1.0, 1.0))
    up = _mix(_SKY_HORIZON, _SKY_ZENITH, (np.clip(elevation, 0, None) / (np.pi / 2)) ** 0.6)
    down = _mix(_SKY_HORIZON, _SKY_BELOW, np.clip(-elevation / 0.35, 0.0, 1.0))
    return np.where((elevation >= 0)[:, None], up, down)


def _shade(origin: np.ndarray, dirs: np.ndarray, sky: str, soft: bool) -> np.ndarray:
    """Colour [N, 3] in [0, 1] seen along unit rays [N, 3] from one origin."""
    dist, surface = _trace(origin, dirs)
    colour = _sky(dirs, sky)
    hit = surface >= 0
    points = origin + dist[hit, None] * dirs[hit]
    normals = np.zeros_like(points)
    albedo = np.zeros_like(points)
    ids = surface[hit]
    ground = ids == 0
    normals[ground] = (0.0, 0.0, 1.0)
    albedo[ground] = _ground_albedo(points[ground], soft)
    for k, obj in enumerate(SCENE_OBJECTS):
        mine = ids == k + 1
        if not mine.any():
            continue
        local = _rotate_z(points[mine] - np.array(obj.centre), -obj.yaw)
        local_normal = _local_normal(obj, local)
        normals[mine] = _rotate_z(local_normal, obj.yaw)
        grain = 0.88 + 0.24 * _fbm(local * 6.0 + 5.0 * k)
        texture = _TEXTURES[obj.pattern](local, local_normal, np.array(obj.colour), soft)
        albedo[mine] = texture * grain[:, None]
    lit = np.clip(normals @ _LIGHT, 0.0, None)
    lit[_occluded(points + 1e-4 * normals)] = 0.0
    colour[hit] = albedo * (_AMBIENT + _DIFFUSE * lit)[:, None]
    return np.clip(colour, 0.0, 1.0)


# --- cameras -----------------------------------------------------------------------------------


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL camera -> world matrix at eye looking at target (-Z forward, +Y up, +X right)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def orbit_cameras(views: int, seed: int) -> np.ndarray:
    """Jittered orbit of OpenGL camera -> world matrices [V, 4, 4] around the origin."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * (np.arange(views) + rng.uniform(-0.3, 0.3, views)) / views
    radii = rng.uniform(4.5, 6.5, views)
    heights = rng.uniform(1.2, 3.0, views)
    targets = np.array(LOOK_AT) + rng.normal(0.0, [0.15, 0.15, 0.08], (views, 3))
    eyes = np.stack([radii * np.cos(angles), radii * np.sin(angles), heights], axis=1)
    return np.stack([_look_at(eye, target) for eye, target in zip(eyes, targets, strict=True)])


def focal_for(size: int) -> float:
    """Focal length in pixels giving a ``FOV_DEGREES`` field of view across ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(FOV_DEGREES) / 2)


def _pixel_rays(c2w: np.ndarray, focal: float, size: int, offsets: np.ndarray) -> np.ndarray:
    """Unit world directions [H, W, S, 3] through pixel sub-positions ``offsets`` [S, 2]."""
    cols = np.arange(size)[None, :, None] + offsets[None, None, :, 0]
    rows = np.arange(size)[:, None, None] + offsets[None, None, :, 1]
    cols, rows = np.broadcast_arrays(cols, rows)
    cam = np.stack(
        [(cols - size / 2) / focal, -(rows - size / 2) / focal, -np.ones(cols.shape)], axis=-1
    )
    world = cam @ c2w[:3, :3].T
    return world / np.linalg.norm(world, axis=-1, keepdims=True)


def _render_view(
    c2w: np.ndarray, focal: float, size: int, sky: str, soft: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view: (image [H, W, 3] in [0, 1], labels [H, W], depths [H, W])."""
    origin = c2w[:3, 3]
    sub = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    dirs = _pixel_rays(c2w, focal, size, sub).reshape(-1, 3)
    image = _shade(origin, dirs, sky, soft).reshape(size, size, 4, 3).mean(axis=2)
    centre = _pixel_rays(c2w, focal, size, np.array([[0.5, 0.5]])).reshape(-1, 3)
    dist, surface = _trace(origin, centre)
    kinds = np.array([SKY, GROUND, *(obj.label for obj in SCENE_OBJECTS)])
    labels = kinds[surface + 1].reshape(size, size)
    depths = (dist * (centre @ -c2w[:3, 2])).reshape(size, size)
    return image, labels, depths


# --- features ----------------------------------------------------------------------------------


def class_embeddings(dim: int, seed: int) -> np.ndarray:
    """Fixed random unit vectors [T, dim] float32, one per class, from rng(seed + 1000)."""
    vectors = np.random.default_rng(seed + 1000).normal(size=(len(CLASS_NAMES), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _cell_features(labels: np.ndarray, spec: FeatureSpec, seed: int) -> tuple[np.ndarray, ...]:
    """(features [V, h, w, dim] float64, class embeddings [T, dim] float32) for labels."""
    views, height, width = labels.shape
    h, w = -(-height // spec.stride), -(-width // spec.stride)
    classes = len(CLASS_NAMES)
    cell = (np.arange(height)[:, None] // spec.stride) * w + np.arange(width)[
        None, :
    ] // spec.stride
    index = (np.arange(views)[:, None, None] * (h * w) + cell) * classes + labels
    counts = np.bincount(index.ravel(), minlength=views * h * w * classes)
    fractions = counts.reshape(views, h, w, classes).astype(np.float64)
    fractions /= fractions.sum(axis=-1, keepdims=True)
    embeddings = class_embeddings(spec.dim, seed)
    rng = np.random.default_rng(seed + 1000)
    rng.normal(size=(classes, spec.dim))  # skip the draws that made the embeddings
    noise = rng.normal(size=(views, h, w, spec.dim)) * (spec.noise / math.sqrt(spec.dim))
    return fractions @ embeddings.astype(np.float64) + noise, embeddings


def _write_feature_map(path: Path, array: np.ndarray, file_format: str) -> None:
    """Save one feature map in the spec's file format."""
    if file_format == "npy":
        np.save(path, array)
    elif file_format == "npz":
        np.savez(path, features=array)
    else:
        import torch  # only this format needs it

        torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)


def _write_features(
    folder: Path, stems: list[str], labels: np.ndarray, spec: FeatureSpec, seed: int
) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write the feature folder beside ``folder``: (its path, embeddings, features as written)."""
    out = folder.parent / f"{folder.name}-{spec.folder_name}"
    out.mkdir(parents=True, exist_ok=True)
    features, embeddings = _cell_features(labels, spec, seed)
    written = features.astype(spec.dtype)
    for stem, cells in zip(stems, written, strict=True):
        array = cells if spec.layout == "hwc" else np.moveaxis(cells, -1, 0)
        _write_feature_map(out / f"{stem}.{spec.file_format}", array, spec.file_format)
    if spec.write_labels:
        np.savez(out / "labels.npz", names=np.array(CLASS_NAMES), embeddings=embeddings)
    return out, embeddings, written.astype(np.float32)


# --- the folder --------------------------------------------------------------------------------


def write_foreign_scene(
    folder: Path,
    *,
    views: int = 40,
    size: int = 128,
    sky: str = "plain",
    textures: str = "sharp",
    seed: int = 0,
    features: FeatureSpec | None = None,
) -> ForeignScene:
    """Render the scene from ``views`` orbit cameras and write a nerfstudio folder at ``folder``.

    Writes ``transforms.json`` (top-level ``camera_model`` OPENCV with zero distortion,
    ``fl_x, fl_y, cx, cy, w, h``; ``frames`` with ``file_path`` and an OpenGL
    ``transform_matrix``) and ``images/frame_00000.png``, ... (8-bit RGB). With ``features``,
    also writes feature maps to the sibling folder ``<folder>-<features.folder_name>``.
    ``folder`` is resolved to an absolute path; existing files of the same names are replaced.
    """
    if views < 1 or size < 2:
        raise ValueError(f"need views >= 1 and size >= 2, got views={views}, size={size}")
    if sky not in ("plain", "gradient"):
        raise ValueError(f"sky must be 'plain' or 'gradient', got {sky!r}")
    if textures not in ("sharp", "soft"):
        raise ValueError(f"textures must be 'sharp' or 'soft', got {textures!r}")
    if features is not None:
        features.validate()
    folder = Path(folder).resolve()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    camtoworlds = orbit_cameras(views, seed)
    focal = focal_for(size)
    file_names = [f"images/frame_{i:05d}.png" for i in range(views)]

    images, labels, depths = [], [], []
    for c2w, name in zip(camtoworlds, file_names, strict=True):
        image, label, depth = _render_view(c2w, focal, size, sky, textures == "soft")
        pixels = np.round(image * 255.0).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / name)
        images.append(pixels.astype(np.float32) / 255.0)
        labels.append(label)
        depths.append(depth)

    meta = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": size / 2,
        "cy": size / 2,
        "w": size,
        "h": size,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": [
            {"file_path": name, "transform_matrix": c2w.tolist()}
            for name, c2w in zip(file_names, camtoworlds, strict=True)
        ],
    }
    (folder / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")

    scene = ForeignScene(
        folder=folder,
        images=np.stack(images),
        labels=np.stack(labels).astype(np.int64),
        class_names=list(CLASS_NAMES),
        depths=np.stack(depths).astype(np.float32),
        camtoworlds=camtoworlds,
        focal=focal,
        file_names=file_names,
    )
    if features is not None:
        stems = [Path(name).stem for name in file_names]
        scene.features_folder, scene.class_embeddings, scene.features = _write_features(
            folder, stems, scene.labels, features, seed
        )
    return scene


def main(argv: list[str] | None = None) -> None:
    """Command line: write a foreign scene (and optionally its features) and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="dataset folder to write")
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--size", type=int, default=128, help="image width = height in pixels")
    parser.add_argument("--sky", choices=("plain", "gradient"), default="plain")
    parser.add_argument("--textures", choices=("sharp", "soft"), default="sharp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", action="store_true", help="also write feature maps")
    parser.add_argument("--feature-dim", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.3)
    args = parser.parse_args(argv)
    spec = None
    if args.features:
        spec = FeatureSpec(dim=args.feature_dim, stride=args.stride, noise=args.noise)
    start = time.perf_counter()
    scene = write_foreign_scene(
        args.out,
        views=args.views,
        size=args.size,
        sky=args.sky,
        textures=args.textures,
        seed=args.seed,
        features=spec,
    )
    seconds = time.perf_counter() - start
    extra = f", features in {scene.features_folder}" if scene.features_folder else ""
    print(
        f"wrote {len(scene.file_names)} views {scene.width}x{scene.height} (sky={args.sky}, "
        f"textures={args.textures}, seed={args.seed}) to {scene.folder}{extra}; "
        f"classes {', '.join(scene.class_names)}; "
        f"{seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
