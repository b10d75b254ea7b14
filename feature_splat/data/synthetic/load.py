"""Synthetic worlds as :class:`~feature_splat.data.dataset.Dataset` objects, with an on-disk cache.

:func:`load_world` renders a built-in world (or loads it from the cache) and splits every 8th view
(0, 8, 16, ...) into the test set. :func:`render_dataset` does the rendering for any
:class:`~feature_splat.data.synthetic.worlds.World` or
:class:`~feature_splat.data.synthetic.mesh_worlds.MeshWorld`, edited ones included.

Cache files are ``.npz`` archives named by a hash of every generation parameter, the world's
fingerprint (geometry, textures, lighting, rig), the cameras and :data:`CACHE_FORMAT`; they are
written atomically. A file that cannot be read or does not match is regenerated and replaced. Bump
:data:`CACHE_FORMAT` whenever the renderer's output changes for the same world.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from feature_splat.cameras import Cameras
from feature_splat.data.dataset import Dataset
from feature_splat.data.synthetic.worlds import World, build_world
from feature_splat.errors import DatasetError
from feature_splat.io.files import write_npz
from feature_splat.io.npz_cache import ArraySpec, read_cached

if TYPE_CHECKING:
    from feature_splat.data.synthetic.mesh_worlds import MeshWorld

CACHE_FORMAT = 1
TEST_EVERY = 8


def default_cache_dir() -> Path:
    """``$FEATURE_SPLAT_CACHE/worlds`` if set, else ``~/.cache/feature-splat/worlds``."""
    root = os.environ.get("FEATURE_SPLAT_CACHE") or Path.home() / ".cache" / "feature-splat"
    return Path(root) / "worlds"


_log = logging.getLogger(__name__)


def render_dataset(
    world: World | MeshWorld,
    *,
    width: int = 128,
    height: int = 96,
    n_views: int | None = None,
    supersample: int = 2,
    n_points: int = 5000,
    seed: int = 0,
) -> Dataset:
    """Render ``world`` from its rig into a Dataset with full ground truth.

    ``points`` / ``point_colors`` are ``n_points`` pixels drawn at random (``seed``) among the
    training views' pixels that hit a surface, back-projected with their true depth and coloured
    with their rendered RGB.
    """
    cameras = world.cameras(width, height, n_views)
    return _assemble(world, cameras, _render_arrays(world, cameras, supersample, n_points, seed))


def load_world(
    name: str,
    *,
    width: int = 128,
    height: int = 96,
    n_views: int | None = None,
    seed: int = 0,
    supersample: int = 2,
    n_points: int = 5000,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """The built-in world ``name`` (one of :data:`WORLD_NAMES`) rendered as a Dataset.

    ``n_views`` defaults to the world's rig (48 for each built-in world; the street rig needs a
    multiple of 6); the real-mesh worlds ("tabletop-real", "playroom-real") need pybullet. Results
    are cached under ``cache_dir`` (default :func:`default_cache_dir`).
    """
    if width <= 0 or height <= 0:
        raise DatasetError(f"width, height: expected positive image size, got {width}x{height}")
    if n_views is not None and n_views < 1:
        raise DatasetError(f"n_views: expected at least 1 view, got {n_views}")
    if supersample < 1:
        raise DatasetError(f"supersample: expected >= 1, got {supersample}")
    if n_points < 0:
        raise DatasetError(f"n_points: expected >= 0, got {n_points}")
    world = build_world(name, seed)
    n_views = n_views or world.rig.default_views
    cameras = world.cameras(width, height, n_views)
    params = {
        "format": CACHE_FORMAT,
        "name": name,
        "seed": seed,
        "width": width,
        "height": height,
        "n_views": n_views,
        "supersample": supersample,
        "n_points": n_points,
        "world": world.fingerprint(),
        "cameras": hashlib.sha256(
            cameras.viewmats.numpy().tobytes() + cameras.Ks.numpy().tobytes()
        ).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"{name}-{width}x{height}-{key[:20]}.npz"

    arrays = _read_cache(path, key, (n_views, height, width)) if path.exists() else None
    if arrays is None:
        arrays = _render_arrays(world, cameras, supersample, n_points, seed)
        write_npz(path, {"key": np.array(key), **arrays})
    return _assemble(world, cameras, arrays)


def _render_arrays(
    world: World | MeshWorld, cameras: Cameras, supersample: int, n_points: int, seed: int
) -> dict[str, np.ndarray]:
    """Everything a Dataset needs beyond the cameras, as the arrays the cache stores."""
    rendered = world.render(cameras, supersample=supersample)
    points, colors = _sample_points(cameras, rendered, n_points, seed)
    return {
        "images": rendered["rgb"].numpy(),
        "depths": rendered["depth"].numpy(),
        "labels": rendered["labels"].numpy().astype(np.int16),
        "instances": rendered["instances"].numpy().astype(np.int32),
        "points": points.numpy(),
        "point_colors": colors.numpy(),
    }


def _assemble(world: World | MeshWorld, cameras: Cameras, arrays: dict[str, np.ndarray]) -> Dataset:
    n_views = len(cameras)
    return Dataset(
        images=torch.from_numpy(arrays["images"]),
        cameras=cameras,
        image_names=[f"{world.name}_{i:03d}" for i in range(n_views)],
        train_indices=[i for i in range(n_views) if i % TEST_EVERY],
        test_indices=list(range(0, n_views, TEST_EVERY)),
        points=torch.from_numpy(arrays["points"]),
        point_colors=torch.from_numpy(arrays["point_colors"]),
        labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
        instances=torch.from_numpy(arrays["instances"].astype(np.int64)),
        depths=torch.from_numpy(arrays["depths"]),
        class_names=world.class_names,
    )


def _sample_points(
    cameras: Cameras, rendered: dict[str, torch.Tensor], n_points: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n_points`` surface points [P, 3] and colours [P, 3] from the training views."""
    train = torch.tensor([i for i in range(len(cameras)) if i % TEST_EVERY], dtype=torch.long)
    depth = rendered["depth"][train]
    view, row, col = torch.nonzero(depth.isfinite(), as_tuple=True)
    rng = np.random.default_rng([seed, 17])
    pick = torch.from_numpy(rng.permutation(view.shape[0])[:n_points]).sort().values
    view, row, col = view[pick], row[pick], col[pick]
    z = depth[view, row, col].double()
    K = cameras.Ks[train][view].double()
    x = (col.double() + 0.5 - K[:, 0, 2]) / K[:, 0, 0] * z
    y = (row.double() + 0.5 - K[:, 1, 2]) / K[:, 1, 1] * z
    viewmat = cameras.viewmats[train][view].double()
    camera_points = torch.stack([x, y, z], dim=1) - viewmat[:, :3, 3]
    world_points = (viewmat[:, :3, :3].transpose(1, 2) @ camera_points[..., None])[..., 0]
    colors = rendered["rgb"][train][view, row, col]
    return world_points.float(), colors.float()


def _read_cache(path: Path, key: str, shape: tuple[int, int, int]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) if the file is unreadable or does not match."""
    specs = {
        "images": ArraySpec((*shape, 3)), "depths": ArraySpec(shape), "labels": ArraySpec(shape),
        "instances": ArraySpec(shape), "points": ArraySpec((None, 3)),
        "point_colors": ArraySpec((None, 3)),
    }  # fmt: skip
    arrays, problem = read_cached(path, {"key": key}, specs)
    if arrays is not None and arrays["points"].shape != arrays["point_colors"].shape:
        arrays, problem = None, "points and point_colors differ in length"
    if arrays is None:
        _log.warning("synthetic world cache %s cannot be used (%s); regenerating", path, problem)
    return arrays
