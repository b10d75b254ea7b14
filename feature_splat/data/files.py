"""What the dataset formats share: reading JSON, images, masks and PLY points, and export checks.

The readers raise a DatasetError that names the file and the field at fault: callers pass
``where`` ("file: field" or "file: field: value", e.g. ``transforms.json: frames[3].file_path:
images/a.png``) and it starts the message. The export preliminaries refuse to write into the
folder a dataset was loaded from or over an existing export, and pick each view's file name.

Image names: each view is named by its image's path relative to the dataset folder, without the
extension (``images/frame_0001``); exporters write a view under the last part of that name.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.dataset import Dataset
from feature_splat.errors import DatasetError, InputShapeError
from feature_splat.io.files import atomic_write_bytes

# PLY property type -> numpy type code (without byte order).
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_PLY_BYTE_ORDERS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}


def holdout_split(count: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """Train and test indices: views 0, n, 2n, ... (n = ``holdout_every``) test; 0 holds none out."""
    if holdout_every < 0:
        raise ValueError(f"holdout_every: expected 0 or more, got {holdout_every}")
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
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path.name}: expected a JSON object at the top level, got {shown(data)}"
        )
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


def read_camtoworld(value: Any, where: str) -> Tensor:
    """A camera -> world matrix [4, 4] float64 from a JSON list of 4 rows of 4 numbers."""
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
    matrix = torch.tensor(value, dtype=torch.float64)
    if abs(torch.linalg.det(matrix[:3, :3]).item()) < 1e-12:
        raise DatasetError(f"{where}: the rotation part is singular (not a camera pose)")
    return matrix


def background_color(background: Sequence[float]) -> Tensor:
    """The compositing colour as a float32 tensor [3]."""
    color = torch.as_tensor(background, dtype=torch.float32)
    if color.shape != (3,):
        raise InputShapeError(f"background: expected 3 numbers (r, g, b), got {list(color.shape)}")
    return color


def read_rgb(path: Path, background: Tensor, where: str) -> Tensor:
    """An image as [H, W, 3] float32 in [0, 1], transparent pixels composited over ``background``.

    ``where`` ("file: field: value") starts the error message when the image is missing or unreadable.
    """
    if not path.is_file():
        raise DatasetError(f"{where} does not exist")
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{where} could not be read as an image ({error})") from None
    pixels = torch.from_numpy(pixels / 255.0)
    if not has_alpha:
        return pixels
    alpha = pixels[..., 3:]
    return pixels[..., :3] * alpha + background * (1.0 - alpha)


def read_mask(path: Path, where: str) -> Tensor:
    """A grey mask image as [H, W] bool, True (valid) where its value is above 0.5."""
    if not path.is_file():
        raise DatasetError(f"{where} does not exist")
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{where} could not be read as an image ({error})") from None
    return torch.from_numpy(grey / 255.0 > 0.5)


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


def read_ply_points(path: Path, where: str) -> tuple[Tensor, Tensor | None]:
    """Vertex positions [P, 3] float32 from a PLY file, with colours [P, 3] in [0, 1] when it has
    ``red``, ``green``, ``blue`` (0-255) properties. The vertex element must come first."""
    if not path.is_file():
        raise DatasetError(f"{where} does not exist")
    data = path.read_bytes()
    end = data.find(b"end_header")
    body = data.find(b"\n", end) + 1
    if not data.startswith(b"ply") or end < 0 or body == 0:
        raise DatasetError(f"{where}: not a PLY file (no 'ply' ... 'end_header' header)")
    byte_order, count, properties = None, None, []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                byte_order = _PLY_BYTE_ORDERS[words[1]]
            elif words[0] == "element" and count is None:
                if words[1] != "vertex":
                    raise DatasetError(f"{where}: expected 'element vertex' first, got {line!r}")
                count = int(words[2])
            elif words[0] == "element":
                break  # elements after the vertices are not needed
            elif words[0] == "property" and count is not None:
                properties.append((words[-1], _PLY_TYPES[words[1]]))
        except (IndexError, KeyError, ValueError):
            raise DatasetError(
                f"{where}: unsupported or malformed PLY header line {line!r}"
            ) from None
    names = [name for name, _ in properties]
    if byte_order is None or count is None or not {"x", "y", "z"} <= set(names):
        raise DatasetError(f"{where}: expected a 'format' line and a vertex element with x, y, z")
    if byte_order == "":
        tokens = data[body:].decode("ascii", errors="replace").split()[: count * len(names)]
        try:
            table = np.array(tokens, dtype=np.float64).reshape(count, len(names))
        except ValueError:
            raise DatasetError(
                f"{where}: expected {count} vertex lines of {len(names)} numbers"
            ) from None
        columns = {name: table[:, k] for k, name in enumerate(names)}
    else:
        dtype = np.dtype([(name, byte_order + code) for name, code in properties])
        if len(data) - body < count * dtype.itemsize:
            raise DatasetError(f"{where}: file is truncated (expected {count} vertices)")
        table = np.frombuffer(data, dtype=dtype, count=count, offset=body)
        columns = {name: table[name] for name in names}
    points = np.stack([columns[axis] for axis in "xyz"], axis=-1).astype(np.float32)
    if not {"red", "green", "blue"} <= set(names):
        return torch.from_numpy(points), None
    colors = np.stack([columns[c] for c in ("red", "green", "blue")], axis=-1).astype(np.float32)
    return torch.from_numpy(points), torch.from_numpy(colors / 255.0)


def ply_bytes(points: Tensor, colors: Tensor | None) -> bytes:
    """A binary little-endian PLY of points [P, 3], with colours [P, 3] in [0, 1] when given."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    table = np.empty(points.shape[0], dtype=fields)
    xyz = points.detach().cpu().float().numpy()
    table["x"], table["y"], table["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        rgb = (colors.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        table["red"], table["green"], table["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = [
        "ply",
        "format binary_little_endian 1.0",
        f"element vertex {points.shape[0]}",
        *(f"property {'float' if code == '<f4' else 'uchar'} {name}" for name, code in fields),
        "end_header",
    ]
    return ("\n".join(header) + "\n").encode("ascii") + table.tobytes()


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


def export_names(dataset: Dataset) -> list[str]:
    """The file name (no extension) each view is exported under: the last part of its name."""
    names = [PurePosixPath(name).name for name in dataset.image_names]
    first_with: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in ("", ".", ".."):
            raise DatasetError(
                f"Dataset.image_names[{i}]: {dataset.image_names[i]!r} cannot name a file"
            )
        if name in first_with:
            raise DatasetError(
                f"Dataset.image_names[{i}]: {dataset.image_names[i]!r} would be exported as "
                f"{name!r} like view {first_with[name]}; exported names must be unique"
            )
        first_with[name] = i
    return names


def opengl_camtoworlds(cameras: Cameras) -> Tensor:
    """Camera -> world matrices [C, 4, 4] float64 in OpenGL axes (computed in double precision)."""
    double = Cameras(cameras.viewmats.double(), cameras.Ks.double(), cameras.width, cameras.height)
    return double.camtoworlds_opengl()
