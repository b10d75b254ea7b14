"""Read and write nerfstudio ``transforms.json`` datasets with distortion-free pinhole cameras.

``dataparser_transforms.json`` (written by nerfstudio's trainer beside a run's ``config.yml``)
records how its data parser moved the dataset's frame: ``x_ns = scale * (R x + t)``;
:func:`read_dataparser_transform` reads it and :func:`gaussians_to_dataset_frame` maps a field
trained in nerfstudio's frame back to the dataset's cameras.

Image names: each view is named by its image's path relative to the dataset folder, without the
extension (``images/frame_0001``); exporters write a view under a safe, unique file name made from
the last part of that name.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.dataset import Dataset
from feature_splat.data.files import (
    as_number,
    as_pixels,
    background_color,
    check_rotation,
    dataset_path,
    holdout_split,
    opengl_camtoworlds,
    path_field,
    pinhole_intrinsics,
    prepare_export,
    read_camtoworld,
    read_json,
    read_mask,
    read_rgb,
    refuse_repeated_views,
    shown,
    stack_images,
    view_name,
    write_mask_png,
)
from feature_splat.errors import DatasetError
from feature_splat.gaussians import GaussianField
from feature_splat.io.files import write_json, write_png
from feature_splat.io.names import view_file_names
from feature_splat.io.ply import read_ply_points, write_ply_points

_log = logging.getLogger(__name__)
_PINHOLE_MODELS = ("PINHOLE", "OPENCV")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# How far the rotation block of dataparser_transforms.json may be from orthonormal, max |R^T R - I|
# (as strict as GaussianField.transformed, which applies it; nerfstudio writes float32 values).
_FRAME_ROTATION_TOLERANCE = 1e-4


def load_nerfstudio(
    path: str | Path,
    *,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    holdout_every: int = 8,
    allow_outside_paths: bool = False,
) -> Dataset:
    """Load a nerfstudio dataset from its ``transforms.json`` or the folder holding it.

    Intrinsics ``fl_x, fl_y, cx, cy, w, h`` may be given per frame or at the top level (per frame
    wins); focal lengths must be > 0 and distortion absent or zero; ``transform_matrix`` must be
    a rigid camera -> world pose (no scale, shear or reflection). Views keep the order of
    ``frames``. The split comes from ``train_filenames`` and ``test_filenames`` (or
    ``val_filenames``) when given (no view twice, none in both), else every ``holdout_every``-th
    view (0, 8, 16, ...) is a test view; a split without test views logs a warning. RGBA images
    are composited over ``background``, greyscale (8- or 16-bit) replicated to RGB;
    ``mask_path`` masks are grey images (> half the full scale = valid); ``ply_file_path``
    points are read when given.

    ``file_path``, ``mask_path`` and ``ply_file_path`` are read relative to the folder of
    ``transforms.json``. Absolute paths and paths that leave that folder (``..``) raise a
    DatasetError unless ``allow_outside_paths`` (nerfstudio itself reads them).
    """
    json_path = Path(path)
    if json_path.is_dir():
        json_path = json_path / "transforms.json"
    meta = read_json(json_path)
    source, root = json_path.name, json_path.parent
    color = background_color(background)

    def inside(value: str, where: str) -> Path:
        return dataset_path(root, value, where, allow_outside_paths)

    model = meta.get("camera_model", "PINHOLE")
    if model not in _PINHOLE_MODELS:
        raise DatasetError(
            f"{source}: camera_model: {repr(model)[:80]} is not supported; only distortion-free "
            f"pinhole cameras are (PINHOLE, or OPENCV with zero distortion)"
        )
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{source}: frames: expected a non-empty list, got {shown(frames)}")
    views = [_parse_frame(meta, frame, index, source) for index, frame in enumerate(frames)]
    train, test = _split(meta, [view.file_path for view in views], source, holdout_every)
    ply_file = None
    if "ply_file_path" in meta:
        ply_path = meta["ply_file_path"]
        if not isinstance(ply_path, str) or not ply_path:
            raise DatasetError(
                f"{source}: ply_file_path: expected a file path, got {shown(ply_path)}"
            )
        ply_file = (inside(ply_path, f"{source}: ply_file_path"), ply_path)

    images, masks, wheres = [], [], []
    for view in views:
        field = f"{source}: frames[{view.index}].file_path"
        where = f"{field}: {view.file_path}"
        image = read_rgb(inside(view.file_path, field), color, where)
        if image.shape[:2] != (view.height, view.width):
            raise DatasetError(
                f"{where} is {image.shape[1]}x{image.shape[0]}, but its w, h say "
                f"{view.width}x{view.height}"
            )
        images.append(image)
        wheres.append(where)
        if view.mask_path is not None:
            mask_field = f"{source}: frames[{view.index}].mask_path"
            mask_where = f"{mask_field}: {view.mask_path}"
            mask = read_mask(inside(view.mask_path, mask_field), mask_where)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"{mask_where} is {mask.shape[1]}x{mask.shape[0]}, but its image is "
                    f"{image.shape[1]}x{image.shape[0]}"
                )
            masks.append(mask)
        else:
            masks.append(torch.ones(image.shape[:2], dtype=torch.bool))
    stacked = stack_images(images, wheres)
    height, width = stacked.shape[1:3]

    cameras = Cameras.from_camtoworlds(
        torch.stack([view.camtoworld for view in views]),
        torch.stack([view.K for view in views]),
        width,
        height,
        convention="opengl",
    )
    points, point_colors = None, None
    if ply_file is not None:
        points, point_colors = read_ply_points(
            ply_file[0], f"{source}: ply_file_path: {ply_file[1]}"
        )
    if not test:
        _log.warning(
            "%s has no held-out views: evaluation will have nothing to score; add "
            "test_filenames or use holdout_every",
            json_path,
        )
    return Dataset(
        images=stacked,
        cameras=Cameras(cameras.viewmats.float(), cameras.Ks.float(), width, height),
        image_names=[view_name(view.file_path) for view in views],
        train_indices=train,
        test_indices=test,
        masks=torch.stack(masks) if any(view.mask_path for view in views) else None,
        points=points,
        point_colors=point_colors,
        root=root,
    )


def export_nerfstudio(dataset: Dataset, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a nerfstudio folder and return the folder.

    Writes ``images/<name>.png``, ``masks/<name>.png`` (when the dataset has masks),
    ``points3D.ply`` (when it has points) and ``transforms.json`` with per-frame intrinsics,
    OpenGL camera-to-world matrices and ``train_filenames`` / ``test_filenames`` (and the same
    held-out list as ``val_filenames``, which nerfstudio's trainer evaluates on). ``<name>`` is
    a safe, unique file name made from the view's name, so nothing lands outside ``out_dir``.
    Refuses a folder that already holds a ``transforms.json`` unless ``overwrite``.
    """
    out = Path(out_dir)
    prepare_export(dataset, out, "transforms.json", overwrite)
    names = view_file_names(dataset.image_names)
    camtoworlds = opengl_camtoworlds(dataset.cameras)
    Ks = dataset.cameras.Ks.double()
    frames = []
    for i, name in enumerate(names):
        frame = {
            "file_path": f"images/{name}.png",
            "transform_matrix": camtoworlds[i].tolist(),
            "fl_x": Ks[i, 0, 0].item(),
            "fl_y": Ks[i, 1, 1].item(),
            "cx": Ks[i, 0, 2].item(),
            "cy": Ks[i, 1, 2].item(),
            "w": dataset.width,
            "h": dataset.height,
        }
        write_png(out / frame["file_path"], dataset.images[i])
        if dataset.masks is not None:
            frame["mask_path"] = f"masks/{name}.png"
            write_mask_png(out / frame["mask_path"], dataset.masks[i])
        frames.append(frame)
    meta: dict[str, Any] = {
        "camera_model": "PINHOLE",
        "frames": frames,
        "train_filenames": [frames[i]["file_path"] for i in dataset.train_indices],
        "test_filenames": [frames[i]["file_path"] for i in dataset.test_indices],
    }
    meta["val_filenames"] = meta["test_filenames"]  # nerfstudio evaluates on its "val" split
    if dataset.points is not None:
        write_ply_points(out / "points3D.ply", dataset.points, dataset.point_colors)
        meta["ply_file_path"] = "points3D.ply"
    write_json(out / "transforms.json", meta)
    return out


@dataclass
class _Frame:
    """One parsed entry of ``frames``, before its image is read."""

    index: int  # position in the JSON ``frames`` list, for error messages
    file_path: str
    mask_path: str | None
    camtoworld: Tensor  # [4, 4] float64, OpenGL axes
    K: Tensor  # [3, 3] float64
    width: int
    height: int


def _parse_frame(meta: dict[str, Any], frame: Any, index: int, source: str) -> _Frame:
    where = f"{source}: frames[{index}]"
    if not isinstance(frame, dict):
        raise DatasetError(f"{where}: expected an object, got {shown(frame)}")

    def lookup(key: str) -> tuple[Any, str]:
        # The frame's own value wins over the top-level one; errors name whichever was used.
        if key in frame:
            return frame[key], f"{where}.{key}"
        return meta.get(key), (f"{source}: {key}" if key in meta else f"{where}.{key}")

    for key in _DISTORTION_KEYS:
        value, field = lookup(key)
        if value is not None and as_number(value, field) != 0.0:
            raise DatasetError(
                f"{field}: is {value}, but only distortion-free pinhole cameras are supported "
                f"({', '.join(_DISTORTION_KEYS)} must be absent or 0)"
            )
    fields = [lookup(key) for key in ("fl_x", "fl_y", "cx", "cy")]
    fx, fy, cx, cy = (as_number(*value_field) for value_field in fields)
    K = pinhole_intrinsics(fx, fy, cx, cy, [field for _, field in fields])
    width, height = (as_pixels(*lookup(key)) for key in ("w", "h"))
    mask_path = frame.get("mask_path")
    if mask_path is not None and (not isinstance(mask_path, str) or not mask_path):
        raise DatasetError(f"{where}.mask_path: expected a file path, got {shown(mask_path)}")
    return _Frame(
        index=index,
        file_path=path_field(frame, "file_path", where),
        mask_path=mask_path,
        camtoworld=read_camtoworld(frame.get("transform_matrix"), f"{where}.transform_matrix"),
        K=K,
        width=width,
        height=height,
    )


def _split(
    meta: dict[str, Any], file_paths: list[str], source: str, holdout_every: int
) -> tuple[list[int], list[int]]:
    """Train and test indices from the ``*_filenames`` lists (each view at most once, none in
    both), else every ``holdout_every``-th view."""
    if not any(f"{split}_filenames" in meta for split in ("train", "val", "test")):
        return holdout_split(len(file_paths), holdout_every)
    position = {posixpath.normpath(p): i for i, p in enumerate(file_paths)}
    has_val_only = "val_filenames" in meta and "test_filenames" not in meta
    test_key = "val_filenames" if has_val_only else "test_filenames"
    lists = []
    for key in ("train_filenames", test_key):
        names = meta.get(key)
        if not isinstance(names, list):
            raise DatasetError(
                f"{source}: {key}: expected a list of file paths (train_filenames and "
                f"test_filenames or val_filenames go together), got {shown(names)}"
            )
        entries = []
        for k, name in enumerate(names):
            entry = posixpath.normpath(name) if isinstance(name, str) else None
            if entry not in position:
                raise DatasetError(
                    f"{source}: {key}[{k}]: {shown(name)} is not the file_path of any frame"
                )
            entries.append(entry)
        lists.append((f"{source}: {key}", entries))
    refuse_repeated_views(lists)
    train, test = ([position[entry] for entry in entries] for _, entries in lists)
    return train, test


def read_dataparser_transform(path: str | Path) -> tuple[Tensor, Tensor, float]:
    """(R [3, 3], t [3], s) float64 from nerfstudio's ``dataparser_transforms.json``, which maps a
    dataset point x to nerfstudio's frame as ``x_ns = s * (R x + t)``.

    ``transform`` must be 3 rows of 4 finite numbers ``[R | t]`` with R a proper rotation
    (max |R^T R - I| <= 1e-4, det > 0), ``scale`` a positive finite number; otherwise a
    DatasetError names the file and the field.
    """
    path = Path(path)
    try:
        record = read_json(path)
    except DatasetError as error:  # read_json names the file by its name only: give the path
        message = str(error)
        if not message.startswith(str(path)):
            message = f"{path}: {message.removeprefix(f'{path.name}: ')}"
        raise DatasetError(message) from None
    where = f"{path}: transform"
    value = record.get("transform")
    expected = "expected 3 rows of 4 numbers [R | t]"
    if value is None:
        raise DatasetError(f"{where}: missing, {expected}")
    if not isinstance(value, list) or len(value) != 3:
        raise DatasetError(f"{where}: {expected}, got {shown(value)}")
    for r, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 4:
            raise DatasetError(f"{where}: {expected}, but row {r} is {shown(row)}")
        for x in row:
            as_number(x, f"{where}[{r}]")
    matrix = torch.tensor([[float(x) for x in row] for row in value], dtype=torch.float64)
    rotation, translation = matrix[:, :3], matrix[:, 3]
    check_rotation(
        rotation, where, "a rotation (the scale goes in 'scale')", _FRAME_ROTATION_TOLERANCE
    )
    scale = as_number(record.get("scale"), f"{path}: scale")
    if scale <= 0:
        raise DatasetError(f"{path}: scale: expected a positive number, got {scale:g}")
    if not math.isfinite(1.0 / scale):  # a subnormal scale cannot be inverted
        raise DatasetError(f"{path}: scale: {scale:g} is too small to invert")
    return rotation, translation, scale


def gaussians_to_dataset_frame(gaussians: GaussianField, path: str | Path) -> GaussianField:
    """``gaussians`` trained in nerfstudio's frame, moved back to the dataset's frame (where its
    cameras are) by inverting the map in ``dataparser_transforms.json`` at ``path``:
    ``x = R^T (x_ns / s - t)``. Orientations and SH colours turn with R^T."""
    rotation, translation, scale = read_dataparser_transform(path)
    inverse = rotation.T
    return gaussians.transformed(inverse, -(inverse @ translation), 1.0 / scale)
