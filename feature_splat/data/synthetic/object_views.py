"""Multi-view renders of procedural objects with parts and keypoints, cached on disk.

:func:`load_objects` gives, for ``n_instances`` instances of a category
(:mod:`~feature_splat.data.synthetic.objects`), an :class:`ObjectViews`: ``n_views`` ray-cast views
from the instance's own cameras (:meth:`ObjectInstance.cameras`) with RGB, depth, normals, part ids
and the projected keypoints with their visibility. The ``train`` split holds instances
``0 .. n - 1``, the ``test`` split instances ``100000 .. 100000 + n - 1``, so the two never share
an instance. :func:`render_object_views` renders one instance from any cameras, without the cache.

Each instance is cached as one compressed ``.npz`` (RGB as 8-bit, depth float32, normals float16,
part ids 8-bit) under ``default_cache_dir().parent / "objects"``, named by a hash of the
instance's repr, its cameras, the render options and :data:`CACHE_FORMAT`, and written atomically.
A file that cannot be read or does not match is rendered again (with a warning) and replaced. A
fresh render goes through the same quantisation as the cache, so both give identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.load import default_cache_dir
from feature_splat.data.synthetic.objects import CATEGORY_NAMES, ObjectInstance, build_object
from feature_splat.errors import DatasetError
from feature_splat.io.files import write_npz
from feature_splat.io.npz_cache import ArraySpec, read_cached

SPLITS = ("train", "test")
TEST_OFFSET = 100_000  # instance index of the first test instance
CACHE_FORMAT = 1  # bump whenever the arrays change for the same instance and cameras
OCCLUSION_TOLERANCE = 0.02  # a keypoint is occluded if the surface is this many diagonals nearer

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class ObjectViews:
    """``V`` rendered views of one object instance, with ground truth."""

    instance: ObjectInstance
    cameras: Cameras  # V views, float32
    rgb: Tensor  # [V, H, W, 3] float32 in [0, 1]
    depth: Tensor  # [V, H, W] float32 camera z, 0 on the background
    normals: Tensor  # [V, H, W, 3] float32 world normals facing the camera, 0 on the background
    parts: Tensor  # [V, H, W] int64 part id, 0 on the background
    keypoints_2d: Tensor  # [V, K, 2] float32 pixel coordinates (x = column, y = row)
    keypoints_visible: Tensor  # [V, K] bool

    def masks(self) -> Tensor:
        """Foreground masks [V, H, W] (bool): pixels on the object."""
        return self.parts > 0

    def visible(self, points: Tensor, parts: Tensor, views: Sequence[int]) -> Tensor:
        """Whether each world point [N, 3] of part ``parts`` [N] is seen by each of ``views``:
        [len(views), N] bool (the keypoints' visibility test applied to any surface points)."""
        cameras = self.cameras[torch.as_tensor(list(views), dtype=torch.int64)]
        uv, z = cameras.project(points.double())
        tolerance = OCCLUSION_TOLERANCE * self.instance.size
        index = torch.as_tensor(list(views), dtype=torch.int64)
        return _visible(uv, z, self.depth[index], self.parts[index], parts, tolerance)

    def surface_points(self, views: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """World points [N, 3] (float32), part ids [N] and view indices [N] of the foreground pixels
        of ``views`` (all by default), back-projected from the depth at the pixel centres."""
        selected = (
            torch.arange(len(self.cameras))
            if views is None
            else torch.as_tensor(list(views), dtype=torch.int64)
        )
        v, row, col = torch.nonzero(self.masks()[selected], as_tuple=True)
        view = selected[v]
        z = self.depth[view, row, col].double()
        K = self.cameras.Ks[view].double()
        x = (col.double() + 0.5 - K[:, 0, 2]) / K[:, 0, 0] * z
        y = (row.double() + 0.5 - K[:, 1, 2]) / K[:, 1, 1] * z
        viewmat = self.cameras.viewmats[view].double()
        camera_points = torch.stack([x, y, z], dim=1) - viewmat[:, :3, 3]
        points = (viewmat[:, :3, :3].transpose(1, 2) @ camera_points[..., None])[..., 0]
        return points.float(), self.parts[view, row, col], view


def instance_indices(split: str, n_instances: int, first: int = 0) -> list[int]:
    """The instance indices of instances ``first .. first + n_instances - 1`` of ``split``."""
    if split not in SPLITS:
        raise DatasetError(f"split: unknown split {split!r}; expected one of {list(SPLITS)}")
    if not (first >= 0 and n_instances >= 0 and first + n_instances <= TEST_OFFSET):
        raise DatasetError(
            f"first, n_instances: expected instances within 0..{TEST_OFFSET - 1}, got "
            f"{first}..{first + n_instances - 1}"
        )
    start = first if split == "train" else TEST_OFFSET + first
    return list(range(start, start + n_instances))


def render_object_views(
    instance: ObjectInstance, cameras: Cameras, *, supersample: int = 2
) -> ObjectViews:
    """Ray-cast ``instance`` from ``cameras`` into an :class:`ObjectViews` (no cache)."""
    return _assemble(instance, cameras, _render_arrays(instance, cameras, supersample))


def load_objects(
    category: str,
    split: str = "train",
    *,
    n_instances: int = 32,
    n_views: int = 12,
    size: int = 64,
    seed: int = 0,
    supersample: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    first: int = 0,
) -> list[ObjectViews]:
    """``n_instances`` instances of ``category`` in ``split`` (from the ``first``-th on),
    ``n_views`` views of ``size`` px each.

    ``seed`` seeds both the shapes and the cameras. Renders are cached under ``cache_dir`` (default
    ``default_cache_dir().parent / "objects"``); a progress bar shows while more than one instance
    has to be rendered and ``progress`` is True.
    """
    if category not in CATEGORY_NAMES:
        raise DatasetError(
            f"category: unknown object category {category!r}; expected one of {list(CATEGORY_NAMES)}"
        )
    indices = instance_indices(split, n_instances, first)
    if n_views < 1 or size < 1 or supersample < 1:
        raise DatasetError(
            f"n_views, size, supersample: expected >= 1, got {n_views}, {size}, {supersample}"
        )
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "objects"
    jobs = []  # (instance, cameras, cache path, key)
    for index in indices:
        instance = build_object(category, index, seed)
        cameras = instance.cameras(n_views, size, seed)
        key = _cache_key(instance, cameras, split, seed, supersample)
        path = folder / f"{category}-{split}-{index:06d}-{n_views}x{size}px-{key[:16]}.npz"
        jobs.append((instance, cameras, path, key))

    arrays: dict[Path, dict[str, np.ndarray]] = {}
    for _, cameras, path, key in jobs:
        cached = _read_cache(path, key, (len(cameras), size, size)) if path.exists() else None
        if cached is not None:
            arrays[path] = cached
    missing = [job for job in jobs if job[2] not in arrays]
    with Progress(transient=True, disable=not progress or len(missing) < 2) as bar:
        task = bar.add_task(f"render {category} ({split})", total=len(missing))
        for instance, cameras, path, key in missing:
            arrays[path] = _render_arrays(instance, cameras, supersample)
            write_npz(path, {"key": np.array(key), **arrays[path]})
            bar.advance(task)
    return [_assemble(instance, cameras, arrays[path]) for instance, cameras, path, _ in jobs]


# ----------------------------------------------------------------------------------------------
# Rendering and assembling


def _render_arrays(
    instance: ObjectInstance, cameras: Cameras, supersample: int
) -> dict[str, np.ndarray]:
    """The views' arrays as the cache stores them (quantised)."""
    rendered = instance.render(cameras, supersample=supersample)
    hit = rendered["labels"] > 0
    return {
        "rgb": (rendered["rgb"].clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
        "depth": torch.where(hit, rendered["depth"], 0.0).numpy(),
        "normals": rendered["normals"].to(torch.float16).numpy(),
        "parts": rendered["labels"].to(torch.uint8).numpy(),
    }


def _assemble(
    instance: ObjectInstance, cameras: Cameras, arrays: dict[str, np.ndarray]
) -> ObjectViews:
    depth = torch.from_numpy(arrays["depth"]).float()
    parts = torch.from_numpy(arrays["parts"]).to(torch.int64)
    uv, z = cameras.project(torch.from_numpy(instance.keypoints).double())
    tolerance = OCCLUSION_TOLERANCE * instance.size
    return ObjectViews(
        instance=instance,
        cameras=cameras,
        rgb=torch.from_numpy(arrays["rgb"]).float() / 255.0,
        depth=depth,
        normals=torch.from_numpy(arrays["normals"]).float(),
        parts=parts,
        keypoints_2d=uv.float(),
        keypoints_visible=_visible(
            uv, z, depth, parts, torch.from_numpy(instance.keypoint_parts), tolerance
        ),
    )


def _visible(
    uv: Tensor, z: Tensor, depth: Tensor, parts: Tensor, keypoint_parts: Tensor, tolerance: float
) -> Tensor:
    """[V, K] bool: in front of the camera, inside the image and not occluded.

    Not occluded: the pixel that holds the keypoint, or one of its 8 neighbours (a keypoint on a
    silhouette edge may fall on a background pixel or on the surface behind), shows the keypoint's
    part at the keypoint's depth (within ``tolerance``).
    """
    height, width = depth.shape[1:]
    u, v = uv[..., 0], uv[..., 1]
    inside = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    col, row = u.floor().nan_to_num().long(), v.floor().nan_to_num().long()
    view = torch.arange(depth.shape[0])[:, None].expand_as(col)
    visible = torch.zeros_like(inside)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = row + dr, col + dc
            on_image = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            r, c = r.clamp(0, height - 1), c.clamp(0, width - 1)
            surface = depth[view, r, c].double()
            same_part = parts[view, r, c] == keypoint_parts
            visible |= on_image & same_part & ((surface - z).abs() < tolerance)
    return inside & visible


# ----------------------------------------------------------------------------------------------
# The cache


def _cache_key(
    instance: ObjectInstance, cameras: Cameras, split: str, seed: int, supersample: int
) -> str:
    params = {
        "format": CACHE_FORMAT,
        "category": instance.category,
        "split": split,
        "index": instance.index,
        "seed": seed,
        "supersample": supersample,
        "size": [cameras.width, cameras.height],
        "instance": hashlib.sha256(repr(instance).encode()).hexdigest(),
        "cameras": hashlib.sha256(
            cameras.viewmats.numpy().tobytes() + cameras.Ks.numpy().tobytes()
        ).hexdigest(),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, key: str, shape: tuple[int, int, int]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) if the file is unreadable or does not match."""
    specs = {
        "rgb": ArraySpec((*shape, 3), np.uint8),
        "depth": ArraySpec(shape, np.float32),
        "normals": ArraySpec((*shape, 3), np.float16),
        "parts": ArraySpec(shape, np.uint8),
    }
    arrays, problem = read_cached(path, {"key": key}, specs)
    if arrays is None:
        _log.warning("object views cache %s cannot be used (%s); rendering again", path, problem)
    return arrays
