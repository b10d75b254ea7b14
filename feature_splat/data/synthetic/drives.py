"""Driving sequences ("drives") through the procedural ``street`` world, for feed-forward models.

A drive is an ego vehicle moving along +x in the street's right lane (y = -1.75), ``n_frames`` frames
``frame_spacing`` metres apart, carrying a nuScenes-like ring of six level cameras
(:data:`RIG_CAMERAS`) 1.6 m above the road. Each seed gives its own street layout (the ``street``
builder's facades, trees, cars and people), its own daylight (sun direction, ambient light, sky
tint) and its own start position, chosen so that every frame stays on the road, within x = +-30 m
and clear of the cars driving in the ego lane. Training, validation and test drives use disjoint seeds
(:func:`drive_seeds`). :meth:`Drive.virtual_cameras` gives DistillNeRF-style novel views where no
rig camera looks (between adjacent cameras, and beside and above the rig).

:func:`render_drive` ray-casts every frame's six cameras (:class:`DriveViews`: RGB, depth, labels,
instances) and caches them as one ``.npz`` per drive under ``default_cache_dir().parent /
"drives"``, named by a hash of the world's fingerprint, the frames' cameras, the image size, the
supersampling and :data:`CACHE_FORMAT`, and written atomically; a file that cannot be read or does
not match is rendered again (with a warning) and replaced. :func:`load_drives` does the same for
the first ``count`` drives of a split::

    views = load_drives("train", 4, 96, 56)  # 4 drives, 8 frames x 6 cameras of 96 x 56 px each
    dataset = views[0].dataset()  # all 48 views; one frame's 6: views[0].dataset([3])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.dataset import Dataset
from feature_splat.data.synthetic.classes import CLASS_NAMES
from feature_splat.data.synthetic.load import default_cache_dir
from feature_splat.data.synthetic.worlds import SKY_COLOR, World, build_world
from feature_splat.errors import DatasetError
from feature_splat.io.files import write_npz
from feature_splat.io.npz_cache import ArraySpec, read_cached

CACHE_FORMAT = 1  # bump whenever the cached arrays change for the same drive and size
DRIVE_SPLITS = ("train", "val", "test")
SPLIT_SEEDS = {"train": 1000, "val": 2000, "test": 3000}  # first seed of each split
SEEDS_PER_SPLIT = 1000
LANE_Y = -1.75  # the ego lane (the street's right-hand lane, driving towards +x)
CAMERA_HEIGHT = 1.6
MOUNT_OFFSET = 1.0  # front cameras sit this far ahead of the ego origin, back cameras behind it
EGO_X_LIMIT = 30.0  # ego positions stay within +-EGO_X_LIMIT (the end facades stand at +-48)
LANE_CLEARANCE = 4.0  # metres kept free between a camera and a car in the ego lane
VIRTUAL_FOV = 70.0
BEYOND_SHIFT = (1.0, 0.5)  # sideways (alternating left, right) and upward shift of "beyond" views
_LONG_RENDER = 200_000  # traced rays above which rendering shows a progress bar

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigCamera:
    """One camera of the ego rig: ``yaw_degrees`` from the ego heading (counter-clockwise seen from
    above, so positive yaws look left) and the horizontal field of view."""

    name: str
    yaw_degrees: float
    fov_x_degrees: float

    @property
    def mount(self) -> tuple[float, float, float]:
        """The camera centre in ego coordinates (x forward, y left, z up; ego origin on the road)."""
        forward = MOUNT_OFFSET if math.cos(math.radians(self.yaw_degrees)) > 0 else -MOUNT_OFFSET
        return (forward, 0.0, CAMERA_HEIGHT)


RIG_CAMERAS: tuple[RigCamera, ...] = (
    RigCamera("CAM_FRONT", 0.0, 70.0),
    RigCamera("CAM_FRONT_RIGHT", -55.0, 70.0),
    RigCamera("CAM_BACK_RIGHT", -110.0, 70.0),
    RigCamera("CAM_BACK", 180.0, 110.0),
    RigCamera("CAM_BACK_LEFT", 110.0, 70.0),
    RigCamera("CAM_FRONT_LEFT", 55.0, 70.0),
)


def _wrap(degrees: float) -> float:
    """An angle in degrees wrapped into [-180, 180)."""
    return (degrees + 180.0) % 360.0 - 180.0


def _mid_yaw(a: float, b: float) -> float:
    """The yaw halfway along the shorter arc from ``a`` to ``b`` (degrees, in [-180, 180))."""
    return _wrap(a + _wrap(b - a) / 2.0)


def _virtual_rig() -> tuple[list[str], list[float], list[tuple[float, float, float]]]:
    """Names, yaws and ego-frame centres of the 12 virtual cameras (6 between, 6 beyond)."""
    names: list[str] = []
    yaws: list[float] = []
    mounts: list[tuple[float, float, float]] = []
    for camera, after in zip(RIG_CAMERAS, RIG_CAMERAS[1:] + RIG_CAMERAS[:1], strict=True):
        (ax, ay, az), (bx, by, bz) = camera.mount, after.mount
        names.append(f"MID_{camera.name}_{after.name}")
        yaws.append(_mid_yaw(camera.yaw_degrees, after.yaw_degrees))
        mounts.append(((ax + bx) / 2, (ay + by) / 2, (az + bz) / 2))
    side, up = BEYOND_SHIFT
    for k, camera in enumerate(RIG_CAMERAS):
        x, y, z = camera.mount
        names.append(f"BEYOND_{camera.name}")
        yaws.append(camera.yaw_degrees)
        mounts.append((x, y + (side if k % 2 == 0 else -side), z + up))
    return names, yaws, mounts


VIRTUAL_CAMERA_NAMES: tuple[str, ...] = tuple(_virtual_rig()[0])


# ----------------------------------------------------------------------------------------------
# Worlds and drives


def drive_seeds(split: str, count: int) -> list[int]:
    """The seeds of the first ``count`` drives of ``split`` (train 1000+i, val 2000+i, test 3000+i)."""
    if split not in DRIVE_SPLITS:
        raise DatasetError(f"split: unknown split {split!r}; expected one of {list(DRIVE_SPLITS)}")
    if not 0 <= count <= SEEDS_PER_SPLIT:
        raise DatasetError(f"count: expected 0..{SEEDS_PER_SPLIT} drives per split, got {count}")
    return [SPLIT_SEEDS[split] + i for i in range(count)]


def build_drive_world(seed: int) -> World:
    """The ``street`` layout of ``seed`` under daylight drawn from ``seed``: sun elevation 30-70
    degrees at any azimuth, ambient 0.3-0.5, and a sky tinted around :data:`SKY_COLOR`."""
    world = build_world("street", seed)
    rng = np.random.default_rng([seed, 7, 1])
    elevation = math.radians(rng.uniform(30.0, 70.0))
    azimuth = rng.uniform(0.0, 2.0 * math.pi)
    light = (
        math.cos(elevation) * math.cos(azimuth),
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
    )
    brightness = rng.uniform(0.9, 1.05)
    sky = tuple(
        float(np.clip(c * brightness + j, 0.0, 1.0))
        for c, j in zip(SKY_COLOR, rng.uniform(-0.06, 0.06, 3), strict=True)
    )
    return replace(
        world, light_direction=light, ambient=float(rng.uniform(0.3, 0.5)), sky_color=sky
    )


def _cameras(
    origins: list[tuple[float, float, float]],
    yaws: list[float],
    fovs: list[float],
    width: int,
    height: int,
) -> Cameras:
    """Level cameras at world ``origins`` looking along the world yaws (degrees from +x)."""
    eyes = torch.tensor(origins, dtype=torch.float64)
    radians = torch.tensor(yaws, dtype=torch.float64).deg2rad()
    forward = torch.stack([radians.cos(), radians.sin(), torch.zeros_like(radians)], dim=1)
    viewmats = look_at(eyes.float(), (eyes + forward).float())
    Ks = torch.stack([intrinsics_from_fov(fov, width, height) for fov in fovs])
    return Cameras(viewmats, Ks, width, height)


@dataclass(frozen=True)
class Drive:
    """An ego vehicle driving along +x in the lane y = :data:`LANE_Y` of ``world``: frame ``t`` puts
    the ego origin (on the road, between the front and back cameras) at x = ``start_x + t *
    frame_spacing``."""

    seed: int
    world: World
    n_frames: int
    frame_spacing: float
    start_x: float

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.n_frames:
            raise DatasetError(f"frame: expected 0..{self.n_frames - 1}, got {frame}")

    def ego_x(self, frame: int) -> float:
        """The ego origin's x at ``frame``."""
        self._check_frame(frame)
        return self.start_x + frame * self.frame_spacing

    def ego_to_world(self, frame: int) -> Tensor:
        """The ego -> world transform [4, 4] float32 at ``frame`` (heading +x, z up)."""
        pose = torch.eye(4)
        pose[:3, 3] = torch.tensor([self.ego_x(frame), LANE_Y, 0.0])
        return pose

    def _place(
        self, frame: int, mounts: Sequence[tuple[float, float, float]]
    ) -> list[tuple[float, float, float]]:
        x = self.ego_x(frame)
        return [(x + mx, LANE_Y + my, mz) for mx, my, mz in mounts]

    def cameras(self, frame: int, width: int, height: int) -> Cameras:
        """The 6 :data:`RIG_CAMERAS` at ``frame`` (in that order) for ``width`` x ``height`` images."""
        _check_size(width, height)
        return _cameras(
            self._place(frame, [c.mount for c in RIG_CAMERAS]),
            [c.yaw_degrees for c in RIG_CAMERAS],
            [c.fov_x_degrees for c in RIG_CAMERAS],
            width,
            height,
        )

    def virtual_cameras(self, frame: int, width: int, height: int) -> Cameras:
        """12 views at ``frame`` where no rig camera looks (:data:`VIRTUAL_CAMERA_NAMES`), all with a
        70-degree field of view: 6 whose yaws lie midway between adjacent rig cameras (centred
        between their two mounts), then the 6 rig cameras moved 1.0 m sideways (left for even
        indices, right for odd ones) and 0.5 m up."""
        _check_size(width, height)
        _, yaws, mounts = _virtual_rig()
        return _cameras(self._place(frame, mounts), yaws, [VIRTUAL_FOV] * len(yaws), width, height)


def _lane_gap(world: World) -> tuple[float, float]:
    """The free stretch of the ego lane around x = 0 between the cars driving in it (bounding
    spheres), narrowed by the camera mounts and :data:`LANE_CLEARANCE`, within the ego x limits."""
    low, high = -EGO_X_LIMIT, EGO_X_LIMIT
    car = CLASS_NAMES.index("car")
    for p in world.primitives:
        if p.class_id == car and abs(p.center[1] - LANE_Y) < 1.5:
            if p.center[0] < 0:
                low = max(low, p.center[0] + p.bounding_radius + MOUNT_OFFSET + LANE_CLEARANCE)
            else:
                high = min(high, p.center[0] - p.bounding_radius - MOUNT_OFFSET - LANE_CLEARANCE)
    return low, high


def build_drive(seed: int, n_frames: int = 8, frame_spacing: float = 2.0) -> Drive:
    """The drive of ``seed``: :func:`build_drive_world` and a start drawn from ``seed`` such that all
    ``n_frames`` frames stay in the ego lane, clear of the cars in it and within x = +-30 m."""
    if n_frames < 2:
        raise DatasetError(f"n_frames: expected at least 2 frames, got {n_frames}")
    if not frame_spacing > 0:
        raise DatasetError(f"frame_spacing: expected a positive distance, got {frame_spacing}")
    world = build_drive_world(seed)
    low, high = _lane_gap(world)
    span = (n_frames - 1) * frame_spacing
    if span > high - low:
        raise DatasetError(
            f"n_frames, frame_spacing: a drive of {n_frames} frames {frame_spacing} m apart "
            f"spans {span:.1f} m; the free lane of seed {seed} is {high - low:.1f} m long"
        )
    start = float(np.random.default_rng([seed, 7, 2]).uniform(low, high - span))
    return Drive(seed, world, n_frames, float(frame_spacing), start)


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass(eq=False)
class DriveViews:
    """The rendered frames of a drive: ``T`` frames of the 6 :data:`RIG_CAMERAS`, with ground truth."""

    drive: Drive
    rgb: Tensor  # [T, 6, H, W, 3] float32 in [0, 1]
    depth: Tensor  # [T, 6, H, W] float32 camera-space z, inf where the ray hits nothing (sky)
    labels: Tensor  # [T, 6, H, W] int64 class ids (CLASS_NAMES; sky = 0)
    instances: Tensor  # [T, 6, H, W] int64 instance ids, -1 on sky
    cameras: list[Cameras]  # T Cameras of 6 views each

    @property
    def width(self) -> int:
        return self.rgb.shape[3]

    @property
    def height(self) -> int:
        return self.rgb.shape[2]

    @property
    def n_frames(self) -> int:
        return self.rgb.shape[0]

    def dataset(self, frames: Sequence[int] | None = None) -> Dataset:
        """The views of ``frames`` (default: all) as one Dataset, frame by frame in rig order,
        named ``frame_003_CAM_FRONT``; every view is a training view and there are no points
        (train with ``--init rays``)."""
        frames = list(range(self.n_frames)) if frames is None else list(frames)
        bad = [t for t in frames if not 0 <= t < self.n_frames]
        if bad or not frames:
            raise DatasetError(
                f"frames: expected frames within 0..{self.n_frames - 1}, got {frames}"
            )
        index = torch.tensor(frames, dtype=torch.long)
        cameras = [self.cameras[t] for t in frames]

        def flat(t: Tensor) -> Tensor:
            return t[index].flatten(0, 1)

        return Dataset(
            images=flat(self.rgb),
            cameras=Cameras(
                torch.cat([c.viewmats for c in cameras]),
                torch.cat([c.Ks for c in cameras]),
                self.width,
                self.height,
            ),
            image_names=[f"frame_{t:03d}_{c.name}" for t in frames for c in RIG_CAMERAS],
            train_indices=list(range(len(frames) * len(RIG_CAMERAS))),
            test_indices=[],
            labels=flat(self.labels),
            instances=flat(self.instances),
            depths=flat(self.depth),
            class_names=self.drive.world.class_names,
        )


def _check_size(width: int, height: int) -> None:
    if width <= 0:
        raise DatasetError(f"width: expected a positive image width, got {width}")
    if height <= 0:
        raise DatasetError(f"height: expected a positive image height, got {height}")


def render_drive(
    drive: Drive,
    width: int,
    height: int,
    *,
    cache_dir: str | Path | None = None,
    supersample: int = 2,
    progress: bool = True,
) -> DriveViews:
    """Ray-cast every frame's 6 cameras of ``drive`` at ``width`` x ``height`` px (with
    ``supersample**2`` rays per pixel for RGB), or load them from the cache under ``cache_dir``
    (default ``default_cache_dir().parent / "drives"``). A progress bar shows while a long render
    runs and ``progress`` is True."""
    return _render_drives([drive], width, height, cache_dir, supersample, progress)[0]


def load_drives(
    split: str,
    count: int,
    width: int,
    height: int,
    *,
    n_frames: int = 8,
    frame_spacing: float = 2.0,
    cache_dir: str | Path | None = None,
    supersample: int = 2,
    progress: bool = True,
) -> list[DriveViews]:
    """The first ``count`` drives of ``split`` (:func:`drive_seeds`), ``n_frames`` frames each
    ``frame_spacing`` metres apart, rendered at ``width`` x ``height`` px (cached like
    :func:`render_drive`)."""
    drives = [build_drive(seed, n_frames, frame_spacing) for seed in drive_seeds(split, count)]
    return _render_drives(drives, width, height, cache_dir, supersample, progress)


def _render_drives(
    drives: list[Drive],
    width: int,
    height: int,
    cache_dir: str | Path | None,
    supersample: int,
    progress: bool,
) -> list[DriveViews]:
    _check_size(width, height)
    if supersample < 1:
        raise DatasetError(f"supersample: expected >= 1, got {supersample}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "drives"
    jobs = []  # (drive, cameras per frame, cache path, key)
    for drive in drives:
        cameras = [drive.cameras(t, width, height) for t in range(drive.n_frames)]
        key = _cache_key(drive, cameras, supersample)
        name = f"drive-{drive.seed}-{drive.n_frames}f-{width}x{height}-{key[:16]}.npz"
        jobs.append((drive, cameras, folder / name, key))

    arrays: dict[Path, dict[str, np.ndarray]] = {}
    for drive, _, path, key in jobs:
        shape = (drive.n_frames, len(RIG_CAMERAS), height, width)
        cached = _read_cache(path, key, shape) if path.exists() else None
        if cached is not None:
            arrays[path] = cached
    missing = [job for job in jobs if job[2] not in arrays]
    frames = sum(drive.n_frames for drive, *_ in missing)
    rays = frames * len(RIG_CAMERAS) * width * height * (supersample**2 + 1)
    with Progress(transient=True, disable=not progress or rays < _LONG_RENDER) as bar:
        task = bar.add_task(f"render {len(missing)} drive(s)", total=frames)
        for drive, cameras, path, key in missing:
            rendered = []
            for frame_cameras in cameras:
                rendered.append(drive.world.render(frame_cameras, supersample=supersample))
                bar.advance(task)
            arrays[path] = {
                "rgb": torch.stack([r["rgb"] for r in rendered]).numpy(),
                "depth": torch.stack([r["depth"] for r in rendered]).numpy(),
                "labels": torch.stack([r["labels"] for r in rendered]).to(torch.int16).numpy(),
                "instances": torch.stack([r["instances"] for r in rendered])
                .to(torch.int32)
                .numpy(),
            }
            write_npz(path, {"key": np.array(key), **arrays[path]})
    return [
        DriveViews(
            drive=drive,
            rgb=torch.from_numpy(arrays[path]["rgb"]),
            depth=torch.from_numpy(arrays[path]["depth"]),
            labels=torch.from_numpy(arrays[path]["labels"].astype(np.int64)),
            instances=torch.from_numpy(arrays[path]["instances"].astype(np.int64)),
            cameras=cameras,
        )
        for drive, cameras, path, _ in jobs
    ]


def _cache_key(drive: Drive, cameras: list[Cameras], supersample: int) -> str:
    camera_bytes = b"".join(c.viewmats.numpy().tobytes() + c.Ks.numpy().tobytes() for c in cameras)
    params = {
        "format": CACHE_FORMAT,
        "seed": drive.seed,
        "world": drive.world.fingerprint(),
        "frames": [drive.n_frames, drive.frame_spacing, drive.start_x],
        "size": [cameras[0].width, cameras[0].height],
        "supersample": supersample,
        "cameras": hashlib.sha256(camera_bytes).hexdigest(),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, key: str, shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) if the file is unreadable or does not match."""
    specs = {
        "rgb": ArraySpec((*shape, 3), np.float32),
        "depth": ArraySpec(shape, np.float32),
        "labels": ArraySpec(shape, np.int16),
        "instances": ArraySpec(shape, np.int32),
    }
    arrays, problem = read_cached(path, {"key": key}, specs)
    if arrays is None:
        _log.warning("drive cache %s cannot be used (%s); regenerating", path, problem)
    return arrays
