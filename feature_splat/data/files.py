"""What the dataset formats share: reading JSON, images and masks; checking the paths, cameras and
splits a dataset file declares; export preliminaries.

The readers raise a DatasetError that names the file and the field at fault: callers pass
``where`` ("file: field" or "file: field: value", e.g. ``transforms.json: frames[3].file_path:
images/a.png``) and it starts the message. The export preliminaries refuse to write into the
folder a dataset was loaded from or over an existing export.

Paths a dataset may read (:func:`dataset_path`): a path written in a dataset file is read
relative to the dataset folder (COLMAP image names: relative to the image folder). An absolute
path, or a relative one that leaves the folder after lexical normalisation (``..``), is refused
unless the caller passes ``allow_outside_paths=True``. The check looks at the text only, before any
file is touched, so symbolic links inside the folder are followed as usual.

Image names: each view is named by its image's path relative to the dataset folder, without the
extension (``images/frame_0001``); exporters write a view under a safe, unique file name made from
the last part of that name (:func:`feature_splat.io.names.view_file_names`).
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics
from feature_splat.data.dataset import Dataset
from feature_splat.errors import ConfigError, DatasetError, InputShapeError
from feature_splat.io.files import atomic_write_bytes

# How far a pose's rotation part may be from orthonormal: max |R^T R - I|.
ROTATION_TOLERANCE = 1e-3
# The largest translation a pose may have: float32 keeps about 7 digits, so a camera 1e10 units
# out is placed to within ~1000 units; geographic coordinates (UTM: ~1e7 m) still fit.
MAX_TRANSLATION = 1e10
# Image modes read as 8-bit (PIL mode -> the mode converted to), and the 16-bit greyscale modes.
_EIGHT_BIT_MODES = {
    "1": "L", "L": "L", "LA": "LA", "P": "RGB", "PA": "RGBA",
    "RGB": "RGB", "RGBA": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB",
}  # fmt: skip
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_SUPPORTED_IMAGES = (
    "8-bit or 16-bit greyscale, greyscale + alpha, palette, RGB, RGBA, CMYK or YCbCr pixels"
)


def holdout_split(count: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """Train and test indices: views 0, n, 2n, ... (n = ``holdout_every``) test; 0 holds none out."""
    if holdout_every < 0:
        raise ConfigError(f"holdout_every: expected 0 or more, got {holdout_every}")
    test = list(range(0, count, holdout_every)) if holdout_every > 0 else []
    held_out = set(test)
    return [i for i in range(count) if i not in held_out], test


def view_name(file_path: str) -> str:
    """A view's name: its image path, normalised, without the extension."""
    return posixpath.splitext(posixpath.normpath(file_path))[0]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything missing or malformed raises a DatasetError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: could not be read ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path.name}: invalid JSON (line {error.lineno}, column {error.colno}): {error.msg}"
        ) from None
    except (ValueError, RecursionError) as error:  # a number too long, nesting too deep
        raise DatasetError(f"{path.name}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path.name}: expected a JSON object at the top level, got {shown(data)}"
        )
    return data


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def shown(value: Any) -> str:
    """How an unexpected JSON value appears in an error message."""
    return "nothing (missing)" if value is None else repr(value)[:80]


def as_number(value: Any, where: str) -> float:
    """``value`` as a float; ``where`` ("file: field") names it in the error if it is not a number."""
    if value is None:
        raise DatasetError(f"{where}: missing, expected a number")
    if not _is_number(value):
        raise DatasetError(f"{where}: expected a finite number, got {shown(value)}")
    return float(value)


def as_pixels(value: Any, where: str) -> int:
    """``value`` as a positive whole number of pixels."""
    number = as_number(value, where)
    if number <= 0 or not number.is_integer():
        raise DatasetError(f"{where}: expected a positive whole number of pixels, got {value!r}")
    return int(number)


def path_field(obj: dict[str, Any], key: str, where: str) -> str:
    """The non-empty file path string ``obj[key]``."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}.{key}: expected a file path, got {shown(value)}")
    return value


def dataset_path(
    folder: Path,
    value: str,
    where: str,
    allow_outside_paths: bool,
    folder_kind: str = "the dataset folder",
) -> Path:
    """``folder / value`` for a path ``value`` that a dataset file names at ``where``.

    An absolute path, or a relative one that leaves ``folder`` after lexical normalisation
    (``..``), raises a DatasetError unless ``allow_outside_paths``. Nothing is looked up on disk
    first, so the message reads the same whether that file exists or not. Backslashes count as
    separators and drive letters as absolute, so the verdict is the same on every system.
    """
    portable = value.replace("\\", "/")
    normal = posixpath.normpath(portable)
    absolute = portable.startswith("/") or bool(PureWindowsPath(value).drive)
    if (absolute or normal == ".." or normal.startswith("../")) and not allow_outside_paths:
        raise DatasetError(
            f"{where}: {value!r} is outside {folder_kind} {folder} (absolute paths and '..' are "
            f"refused; pass allow_outside_paths=True / --allow-outside-paths to read it)"
        )
    return folder / value


def refuse_repeated_views(lists: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse a view listed twice in one split list, or in two (trained on and held out).

    ``lists`` holds (where, entries): ``where`` names the list (``transforms.json:
    train_filenames``), the entries are normalised file paths.
    """
    first: dict[str, tuple[int, int]] = {}
    for n, (where, entries) in enumerate(lists):
        for k, entry in enumerate(entries):
            if entry not in first:
                first[entry] = (n, k)
                continue
            m, j = first[entry]
            if m == n:
                raise DatasetError(
                    f"{where}[{k}]: {entry!r} is listed twice (also {where}[{j}]); list each "
                    f"view once"
                )
            raise DatasetError(
                f"{where}[{k}]: {entry!r} is also in {lists[m][0]}[{j}]; a view cannot be both "
                f"trained on and held out"
            )


def pinhole_intrinsics(fx: float, fy: float, cx: float, cy: float, wheres: Sequence[str]) -> Tensor:
    """Intrinsics [3, 3] float64, after checking that the focal lengths are finite and > 0 and
    the principal point is finite; ``wheres`` names fx, fy, cx, cy in the error."""
    for value, where, focal in zip(
        (fx, fy, cx, cy), wheres, (True, True, False, False), strict=True
    ):
        if not math.isfinite(value):
            raise DatasetError(f"{where}: expected a finite number, got {value}")
        if focal and value <= 0:
            raise DatasetError(f"{where}: expected a focal length > 0 (pixels), got {value:g}")
    return intrinsics(fx, fy, cx, cy, dtype=torch.float64)


def check_rotation(
    rotation: Tensor, where: str, expected: str, tolerance: float = ROTATION_TOLERANCE
) -> None:
    """Refuse a [3, 3] block that is not a proper rotation: scaled or sheared (max |R^T R - I|
    above ``tolerance``; NaN fails too) or a reflection. ``expected`` ends the first message."""
    error = (rotation.T @ rotation - torch.eye(3, dtype=rotation.dtype)).abs().max().item()
    if not error <= tolerance:
        raise DatasetError(
            f"{where}: the rotation part is scaled or sheared (R^T R differs from I by "
            f"{error:.2g}); expected {expected}"
        )
    determinant = torch.linalg.det(rotation).item()
    if determinant <= 0:
        raise DatasetError(
            f"{where}: the rotation part is a reflection (determinant {determinant:.3g}); "
            f"expected a proper rotation (determinant +1)"
        )


def check_pose(matrix: Tensor, where: str) -> Tensor:
    """``matrix`` [4, 4] (camera -> world or world -> camera), after checking it is a rigid pose:
    finite, its rotation part orthonormal (max |R^T R - I| <= ROTATION_TOLERANCE, so neither
    scaled nor sheared) with a positive determinant (no reflection), its last row 0 0 0 1, its
    translation within MAX_TRANSLATION."""
    if not torch.isfinite(matrix).all():
        raise DatasetError(f"{where}: expected finite numbers, got {matrix.tolist()}")
    check_rotation(matrix[:3, :3], where, "a rigid camera pose")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=matrix.dtype)
    if not torch.equal(matrix[3], bottom):
        raise DatasetError(f"{where}: the last row is {matrix[3].tolist()}; expected [0, 0, 0, 1]")
    farthest = matrix[:3, 3].abs().max().item()
    if farthest > MAX_TRANSLATION:
        raise DatasetError(
            f"{where}: a translation of {farthest:.3g} is beyond {MAX_TRANSLATION:g} (single "
            f"precision cannot place a camera there); recentre the scene"
        )
    return matrix


def read_camtoworld(value: Any, where: str) -> Tensor:
    """A rigid camera -> world matrix [4, 4] float64 from a JSON list of 4 rows of 4 numbers."""
    expected = "expected a 4x4 list of numbers"
    if value is None:
        raise DatasetError(f"{where}: missing, {expected}")
    if not isinstance(value, list):
        raise DatasetError(f"{where}: {expected}, got {shown(value)}")
    if len(value) != 4:
        raise DatasetError(f"{where}: {expected}, got {len(value)} rows")
    for r, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 4 or not all(_is_number(x) for x in row):
            raise DatasetError(f"{where}: {expected}, but row {r} is {shown(row)}")
    matrix = torch.tensor([[float(x) for x in row] for row in value], dtype=torch.float64)
    return check_pose(matrix, where)


def background_color(background: Sequence[float]) -> Tensor:
    """The compositing colour as a float32 tensor [3]."""
    color = torch.as_tensor(background, dtype=torch.float32)
    if color.shape != (3,):
        raise InputShapeError(f"background: expected 3 numbers (r, g, b), got {list(color.shape)}")
    return color


def _read_pixels(path: Path, where: str) -> np.ndarray:
    """The pixels of an image file as float32 [H, W, C] in [0, 1], C = 1 (grey), 2 (grey, alpha),
    3 (RGB) or 4 (RGBA). 16-bit greyscale is scaled by 1 / 65535, everything else by 1 / 255."""
    if not os.path.isfile(path):
        raise DatasetError(f"{where} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _SIXTEEN_BIT_MODES:
                pixels = np.array(image)
            elif mode in _EIGHT_BIT_MODES:
                # A transparent colour key (PNG tRNS) becomes an alpha channel.
                target = "RGBA" if "transparency" in image.info else _EIGHT_BIT_MODES[mode]
                pixels = np.asarray(image.convert(target))
            else:
                pixels = None
    except Exception as error:  # Pillow raises many types on corrupt files
        raise DatasetError(f"{where} could not be read as an image ({error})") from None
    if pixels is None:
        raise DatasetError(
            f"{where}: image mode {mode!r} is not supported; expected {_SUPPORTED_IMAGES}"
        )
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if mode not in _SIXTEEN_BIT_MODES:
        return pixels.astype(np.float32) / 255.0
    if pixels.size and not 0 <= pixels.min() <= pixels.max() <= 65535:
        raise DatasetError(
            f"{where}: {mode} pixels range from {pixels.min()} to {pixels.max()}; expected "
            f"16-bit values 0..65535"
        )
    return pixels.astype(np.float32) / 65535.0


def read_rgb(path: Path, background: Tensor, where: str) -> Tensor:
    """An image as [H, W, 3] float32 in [0, 1], greyscale replicated to three channels and
    transparent pixels composited over ``background``.

    ``where`` ("file: field: value") starts the error message when the image is missing,
    unreadable or of an unsupported mode (e.g. 32-bit float).
    """
    pixels = torch.from_numpy(_read_pixels(path, where))
    channels = pixels.shape[-1]
    color = pixels[..., : 3 if channels >= 3 else 1].expand(*pixels.shape[:2], 3)
    if channels in (1, 3):
        return color.contiguous()
    alpha = pixels[..., -1:]
    return color * alpha + background * (1.0 - alpha)


def read_mask(path: Path, where: str) -> Tensor:
    """A mask image as [H, W] bool, True (valid) where its grey value (the luma of colour
    images, alpha ignored) is above half the full scale: 0.5 of 255 or of 65535."""
    pixels = torch.from_numpy(_read_pixels(path, where))
    if pixels.shape[-1] < 3:
        return pixels[..., 0] > 0.5
    return pixels[..., :3] @ torch.tensor([0.299, 0.587, 0.114]) > 0.5  # ITU-R 601, as Pillow


def stack_images(images: list[Tensor], wheres: list[str]) -> Tensor:
    """Stack images [H, W, 3] into [V, H, W, 3]; the error names the first one whose size differs."""
    height, width = images[0].shape[:2]
    for image, where in zip(images, wheres, strict=True):
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"{where} is {image.shape[1]}x{image.shape[0]}, but {wheres[0]} is "
                f"{width}x{height}; all images must share one size"
            )
    return torch.stack(images)


def write_mask_png(path: Path, mask: Tensor) -> Path:
    """Write a bool mask [H, W] as a grey PNG (255 = valid), atomically."""
    grey = mask.detach().cpu().numpy().astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def prepare_export(dataset: Dataset, out: Path, marker: str, overwrite: bool) -> None:
    """Refuse to export into the folder ``dataset`` came from, or over an existing export
    (recognised by its ``marker`` file) unless ``overwrite``."""
    if dataset.root is not None and out.resolve() == Path(dataset.root).resolve():
        raise DatasetError(
            f"{out}: is the folder the dataset was loaded from; export somewhere else "
            f"(inputs are never overwritten)"
        )
    if (out / marker).exists() and not overwrite:
        raise DatasetError(f"{out / marker}: already exists; pass overwrite=True to replace it")


def opengl_camtoworlds(cameras: Cameras) -> Tensor:
    """Camera -> world matrices [C, 4, 4] float64 in OpenGL axes (computed in double precision)."""
    double = Cameras(cameras.viewmats.double(), cameras.Ks.double(), cameras.width, cameras.height)
    return double.camtoworlds_opengl()
