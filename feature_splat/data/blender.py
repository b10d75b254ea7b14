"""Read and write the NeRF Blender synthetic layout: ``transforms_{train,val,test}.json`` + PNGs.

Each JSON file holds one ``camera_angle_x`` (horizontal field of view, radians) and frames with an
extension-less ``file_path`` and an OpenGL camera -> world ``transform_matrix``. The focal length
is ``0.5 * W / tan(0.5 * camera_angle_x)`` in both axes, the principal point the image centre.
``file_path`` is read relative to the folder of the JSON files; absolute paths and paths that leave
it (``..``) are refused unless the loader is given ``allow_outside_paths=True``.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.dataset import Dataset
from feature_splat.data.files import (
    as_number,
    background_color,
    dataset_path,
    opengl_camtoworlds,
    path_field,
    pinhole_intrinsics,
    prepare_export,
    read_camtoworld,
    read_json,
    read_rgb,
    refuse_repeated_views,
    shown,
    stack_images,
    view_name,
)
from feature_splat.errors import DatasetError
from feature_splat.io.files import write_json, write_png
from feature_splat.io.names import view_file_names

_log = logging.getLogger(__name__)

# How far (pixels) intrinsics may be from Blender's single square-pixel, centred camera on export.
_PIXEL_TOLERANCE = 1e-3


def load_blender(
    path: str | Path,
    *,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    allow_outside_paths: bool = False,
) -> Dataset:
    """Load a NeRF Blender synthetic scene from its folder (or one of its JSON files).

    Views are the train frames, then the test frames; without ``transforms_test.json`` the val
    frames are the test views. No image may appear twice, in one split or in both; no test
    frames logs a warning. Poses must be rigid (no scale, shear or reflection). RGBA images are
    composited over ``background``, greyscale (8- or 16-bit) replicated to RGB. A ``file_path``
    that is absolute or leaves the folder (``..``) raises a DatasetError unless
    ``allow_outside_paths``.
    """
    root = Path(path)
    if root.is_file():
        root = root.parent
    color = background_color(background)
    test_split = "test" if (root / "transforms_test.json").is_file() else "val"
    if not (root / f"transforms_{test_split}.json").is_file():
        raise DatasetError(
            f"{root}: expected transforms_test.json (or transforms_val.json) beside "
            f"transforms_train.json"
        )
    train = _read_split(root, "train", color, allow_outside_paths)
    test = _read_split(root, test_split, color, allow_outside_paths)
    if not train.names:
        raise DatasetError("transforms_train.json: frames: expected at least one frame")
    refuse_repeated_views([(f"{s.source}: frames", s.files) for s in (train, test)])
    if not test.names:
        _log.warning(
            "%s has no held-out views: evaluation will have nothing to score; add frames to it",
            root / test.source,
        )

    images = stack_images(train.images + test.images, train.wheres + test.wheres)
    height, width = images.shape[1:3]
    Ks = [_intrinsics(s, width, height) for s in (train, test) for _ in s.names]
    cameras = Cameras.from_camtoworlds(
        torch.stack(train.camtoworlds + test.camtoworlds),
        torch.stack(Ks),
        width,
        height,
        convention="opengl",
    )
    return Dataset(
        images=images,
        cameras=Cameras(cameras.viewmats.float(), cameras.Ks.float(), width, height),
        image_names=train.names + test.names,
        train_indices=list(range(len(train.names))),
        test_indices=list(range(len(train.names), len(train.names) + len(test.names))),
        root=root,
    )


def export_blender(dataset: Dataset, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the train and test views of ``dataset`` in the Blender layout and return the folder.

    Writes ``train/<name>.png``, ``test/<name>.png``, ``transforms_train.json`` and
    ``transforms_test.json``. Blender has a single field of view, so every view must share one
    focal length with fx == fy and the principal point at the image centre. Masks, points and
    views in neither split are not exported. Refuses a folder that already holds a
    ``transforms_train.json`` unless ``overwrite``.
    """
    out = Path(out_dir)
    prepare_export(dataset, out, "transforms_train.json", overwrite)
    if not dataset.train_indices:
        raise DatasetError(
            "export_blender: Dataset.train_indices: the Blender format needs train views"
        )
    camera_angle_x = _camera_angle_x(dataset.cameras)
    names = view_file_names(dataset.image_names)
    camtoworlds = opengl_camtoworlds(dataset.cameras)
    # transforms_train.json last: its presence marks a complete export.
    for split, indices in (("test", dataset.test_indices), ("train", dataset.train_indices)):
        frames = []
        for i in indices:
            write_png(out / split / f"{names[i]}.png", dataset.images[i])
            frames.append(
                {"file_path": f"./{split}/{names[i]}", "transform_matrix": camtoworlds[i].tolist()}
            )
        write_json(
            out / f"transforms_{split}.json", {"camera_angle_x": camera_angle_x, "frames": frames}
        )
    return out


@dataclass
class _Split:
    """The frames of one ``transforms_<split>.json``, images read."""

    source: str  # the JSON file's name
    camera_angle_x: float
    files: list[str] = field(default_factory=list)  # image paths, normalised
    names: list[str] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)  # each image's "file: field: value", for errors
    camtoworlds: list[Tensor] = field(default_factory=list)


def _read_split(root: Path, split: str, background: Tensor, allow_outside_paths: bool) -> _Split:
    json_path = root / f"transforms_{split}.json"
    meta = read_json(json_path)
    source = json_path.name
    angle = as_number(meta.get("camera_angle_x"), f"{source}: camera_angle_x")
    if not 0.0 < angle < math.pi:
        raise DatasetError(
            f"{source}: camera_angle_x: expected a field of view in radians between 0 and pi, "
            f"got {angle}"
        )
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{source}: frames: expected a list of frames, got {shown(frames)}")
    result = _Split(source, angle)
    for index, frame in enumerate(frames):
        where = f"{source}: frames[{index}]"
        if not isinstance(frame, dict):
            raise DatasetError(f"{where}: expected an object, got {shown(frame)}")
        file_path = path_field(frame, "file_path", where)
        relative = file_path
        image = dataset_path(root, relative, f"{where}.file_path", allow_outside_paths)
        if not os.path.isfile(image):
            relative = f"{file_path}.png"
            image = dataset_path(root, relative, f"{where}.file_path", allow_outside_paths)
            if not os.path.isfile(image):
                raise DatasetError(f"{where}.file_path: neither {file_path} nor {relative} exists")
        image_where = f"{where}.file_path: {relative}"
        result.images.append(read_rgb(image, background, image_where))
        result.wheres.append(image_where)
        result.files.append(posixpath.normpath(relative))
        result.names.append(view_name(relative))
        result.camtoworlds.append(
            read_camtoworld(frame.get("transform_matrix"), f"{where}.transform_matrix")
        )
    return result


def _intrinsics(split: _Split, width: int, height: int) -> Tensor:
    focal = 0.5 * width / math.tan(0.5 * split.camera_angle_x)
    where = f"{split.source}: camera_angle_x: {split.camera_angle_x} gives the focal length"
    return pinhole_intrinsics(focal, focal, width / 2.0, height / 2.0, [where] * 4)


def _camera_angle_x(cameras: Cameras) -> float:
    """The single horizontal field of view of ``cameras``, which must be square-pixel and centred."""
    Ks = cameras.Ks.double()
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    off = torch.stack(
        [fx - fy, fx - fx[0], cx - cameras.width / 2.0, cy - cameras.height / 2.0]
    ).abs()
    bad = (off > _PIXEL_TOLERANCE).any(dim=0).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"export_blender: Dataset.cameras.Ks[{i}]: the Blender format needs one focal length "
            f"({fx[0].item():g}, as view 0) with fx == fy and the principal point at the image "
            f"centre ({cameras.width / 2.0:g}, {cameras.height / 2.0:g}); got fx={fx[i].item():g}, "
            f"fy={fy[i].item():g}, cx={cx[i].item():g}, cy={cy[i].item():g}"
        )
    return 2.0 * math.atan(0.5 * cameras.width / fx[0].item())
