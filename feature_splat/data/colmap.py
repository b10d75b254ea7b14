"""Read COLMAP sparse models (text or binary) with pinhole cameras, and write the text format.

A model is ``cameras``, ``images`` and (optionally) ``points3D`` as ``.txt`` or ``.bin`` files,
binary ones in COLMAP's little-endian layout. ``images`` holds world -> camera poses in OpenCV
axes (quaternion QW QX QY QZ, translation TX TY TZ), which are our view matrices as they are.
COLMAP's pixel centres sit at integer + 0.5, as ours do, so intrinsics carry over unchanged.

Image ``NAME``s are read relative to the image folder; an absolute name or one that leaves the
folder (``..``) is refused unless the loader is given ``allow_outside_paths=True``.
"""

from __future__ import annotations

import logging
import math
import posixpath
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.dataset import Dataset
from feature_splat.data.files import (
    background_color,
    check_pose,
    dataset_path,
    holdout_split,
    pinhole_intrinsics,
    prepare_export,
    read_rgb,
    stack_images,
    view_name,
)
from feature_splat.errors import DatasetError
from feature_splat.io.files import atomic_write_bytes, write_png
from feature_splat.io.names import view_file_names

_log = logging.getLogger(__name__)

# Supported camera models: name -> (binary model id, parameter names). Any parameter other than
# the focal lengths and principal point is a distortion coefficient and must be zero.
_MODELS = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
}
_MODEL_BY_ID = {model_id: name for name, (model_id, _) in _MODELS.items()}
_PINHOLE_PARAMETERS = ("f", "fx", "fy", "cx", "cy")
_POSE_FIELDS = ("QW", "QX", "QY", "QZ", "TX", "TY", "TZ")
_FLOAT32_MAX = torch.finfo(torch.float32).max
_SUPPORTED = "SIMPLE_PINHOLE, PINHOLE, or SIMPLE_RADIAL / RADIAL / OPENCV with zero distortion"


def find_colmap_model(path: Path) -> Path | None:
    """The COLMAP model folder at ``path``, ``path/sparse/0`` or ``path/sparse``, if any."""
    for folder in (path, path / "sparse" / "0", path / "sparse"):
        if (folder / "cameras.txt").is_file() or (folder / "cameras.bin").is_file():
            return folder
    return None


def load_colmap(
    path: str | Path,
    *,
    images_dir: str | Path | None = None,
    holdout_every: int = 8,
    allow_outside_paths: bool = False,
) -> Dataset:
    """Load a COLMAP model and its images.

    ``path`` is the scene folder holding ``sparse/0`` or ``sparse``, or the model folder itself;
    binary files are read when ``cameras.bin`` exists, else text. Images come from ``images_dir``
    (default ``<scene>/images``; any folder the caller names is allowed). Views are sorted by image
    name; every ``holdout_every``-th view (0, 8, 16, ...) is a test view (0: none, with a logged
    warning). 3D points and their colours become ``points`` and ``point_colors`` (None when the
    model has none). Every number must be finite, focal lengths > 0, image ids and names unique.
    An image ``NAME`` that is absolute or leaves the image folder (``..``) raises a DatasetError
    unless ``allow_outside_paths``.
    """
    path = Path(path)
    model = find_colmap_model(path)
    if model is None:
        raise DatasetError(
            f"{path}: no COLMAP model; looked for cameras.txt or cameras.bin in it, "
            f"in sparse/0 and in sparse"
        )
    if model.name == "sparse":
        scene = model.parent
    elif model.parent.name == "sparse":
        scene = model.parent.parent
    else:
        scene = model
    image_folder = Path(images_dir) if images_dir is not None else scene / "images"
    if not image_folder.is_dir():
        raise DatasetError(f"{image_folder}: image folder does not exist (pass images_dir=...)")

    binary = (model / "cameras.bin").is_file()
    ext = ".bin" if binary else ".txt"
    cameras = (_read_cameras_binary if binary else _read_cameras_text)(model / f"cameras{ext}")
    images_file = model / f"images{ext}"
    views = (_read_images_binary if binary else _read_images_text)(images_file)
    if not views:
        raise DatasetError(f"images{ext}: expected at least one image, found none")
    _refuse_repeated_images(views)
    views.sort(key=lambda view: view.name)
    files = [
        dataset_path(
            image_folder, view.name, f"{view.where}: NAME", allow_outside_paths, "the image folder"
        )
        for view in views
    ]
    points_file = model / f"points3D{ext}"
    points, colors = None, None
    if points_file.is_file():
        points, colors = (_read_points_binary if binary else _read_points_text)(points_file)

    images, wheres, Ks = [], [], []
    background = background_color((1.0, 1.0, 1.0))
    for view, file in zip(views, files, strict=True):
        camera = cameras.get(view.camera_id)
        if camera is None:
            raise DatasetError(f"{view.where}: CAMERA_ID {view.camera_id} is not in cameras{ext}")
        where = f"{view.where}: {file}"
        image = read_rgb(file, background, where)
        if image.shape[:2] != (camera.height, camera.width):
            raise DatasetError(
                f"{where} is {image.shape[1]}x{image.shape[0]}, but camera {view.camera_id} is "
                f"{camera.width}x{camera.height}"
            )
        images.append(image)
        wheres.append(where)
        Ks.append(camera.K)
    stacked = stack_images(images, wheres)
    train, test = holdout_split(len(views), holdout_every)
    if not test:
        _log.warning(
            "%s has no held-out views: evaluation will have nothing to score; use holdout_every",
            images_file,
        )
    return Dataset(
        images=stacked,
        cameras=Cameras(
            torch.stack([view.viewmat for view in views]).float(),
            torch.stack(Ks).float(),
            stacked.shape[2],
            stacked.shape[1],
        ),
        image_names=[view_name(view.name) for view in views],
        train_indices=train,
        test_indices=test,
        points=points,
        point_colors=colors,
        root=scene,
    )


def write_colmap_text(dataset: Dataset, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a COLMAP text model and return the scene folder.

    Writes ``images/<name>.png`` and ``sparse/0/{cameras,images,points3D}.txt`` with one PINHOLE
    camera per view. Points without colours are written grey. COLMAP has no split or masks, so
    those are not written. Refuses a folder that already holds ``sparse/0/cameras.txt`` unless
    ``overwrite``.
    """
    out = Path(out_dir)
    model = out / "sparse" / "0"
    prepare_export(dataset, out, "sparse/0/cameras.txt", overwrite)
    names = view_file_names(dataset.image_names)
    viewmats, Ks = dataset.cameras.viewmats.double(), dataset.cameras.Ks.double()
    camera_lines = ["# CAMERA_ID MODEL WIDTH HEIGHT fx fy cx cy"]
    image_lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then a line of 2D points"]
    for i, name in enumerate(names):
        write_png(out / "images" / f"{name}.png", dataset.images[i])
        K = Ks[i]
        fx, fy, cx, cy = (K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item())
        camera_lines.append(f"{i + 1} PINHOLE {dataset.width} {dataset.height} {fx} {fy} {cx} {cy}")
        pose = (*_quaternion(viewmats[i, :3, :3]), *viewmats[i, :3, 3].tolist())
        image_lines += [f"{i + 1} {' '.join(str(v) for v in pose)} {i + 1} {name}.png", ""]
    point_lines = ["# POINT3D_ID X Y Z R G B ERROR TRACK[]"]
    if dataset.points is not None:
        xyz = dataset.points.detach().double().cpu().tolist()
        if dataset.point_colors is None:
            rgb = [[128, 128, 128]] * len(xyz)
        else:
            rgb = (dataset.point_colors.detach().cpu().clamp(0, 1) * 255).round().int().tolist()
        for k, (p, c) in enumerate(zip(xyz, rgb, strict=True)):
            point_lines.append(f"{k + 1} {p[0]} {p[1]} {p[2]} {c[0]} {c[1]} {c[2]} 0")
    # cameras.txt last: its presence marks a complete export.
    for filename, lines in (
        ("points3D.txt", point_lines),
        ("images.txt", image_lines),
        ("cameras.txt", camera_lines),
    ):
        atomic_write_bytes(model / filename, ("\n".join(lines) + "\n").encode())
    return out


@dataclass
class _Camera:
    width: int
    height: int
    K: Tensor  # [3, 3] float64


@dataclass
class _View:
    image_id: int
    name: str  # image file name, relative to the image folder
    camera_id: int
    viewmat: Tensor  # [4, 4] float64, world -> camera, OpenCV axes
    where: str  # "images.txt: image 3 (name)", for error messages
    record: str  # "images.txt: line 7" or "images.bin: record 2": where the record starts


def _camera(model: str, width: int, height: int, params: list[float], where: str) -> _Camera:
    if model not in _MODELS:
        raise DatasetError(f"{where}: camera model {model} is not supported; expected {_SUPPORTED}")
    names = _MODELS[model][1]
    if len(params) != len(names):
        raise DatasetError(
            f"{where}: {model} takes {len(names)} parameters ({' '.join(names)}), got {len(params)}"
        )
    if width <= 0 or height <= 0:
        raise DatasetError(f"{where}: WIDTH, HEIGHT: expected positive sizes, got {width}x{height}")
    if not all(math.isfinite(v) for v in params):
        raise DatasetError(f"{where}: PARAMS: expected finite numbers, got {params}")
    values = dict(zip(names, params, strict=True))
    distortion = [f"{k}={v}" for k, v in values.items() if k not in _PINHOLE_PARAMETERS and v != 0]
    if distortion:
        raise DatasetError(
            f"{where}: {model} distortion {', '.join(distortion)} is not zero; only "
            f"distortion-free pinhole cameras are supported"
        )
    fx, fy = ("fx", "fy") if "fx" in values else ("f", "f")
    wheres = [f"{where}: {name}" for name in (fx, fy, "cx", "cy")]
    K = pinhole_intrinsics(values[fx], values[fy], values["cx"], values["cy"], wheres)
    return _Camera(width, height, K)


def _viewmat(quaternion: tuple[float, ...], translation: tuple[float, ...], where: str) -> Tensor:
    """World -> camera matrix [4, 4] from a rotation quaternion (w, x, y, z) and a translation."""
    if not all(math.isfinite(v) for v in (*quaternion, *translation)):
        raise DatasetError(
            f"{where}: {' '.join(_POSE_FIELDS)}: expected finite numbers, "
            f"got {' '.join(str(v) for v in (*quaternion, *translation))}"
        )
    largest = max(abs(q) for q in quaternion)  # scaled first, so that squaring cannot overflow
    if largest == 0:
        raise DatasetError(f"{where}: QW QX QY QZ: expected a rotation quaternion, got all zeros")
    scaled = [q / largest for q in quaternion]
    norm = math.sqrt(sum(q * q for q in scaled))
    w, x, y, z = (q / norm for q in scaled)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )
    viewmat[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return check_pose(viewmat, where)


def _refuse_repeated_images(views: list[_View]) -> None:
    """Refuse two image records with one IMAGE_ID, or with one NAME (after normalisation)."""
    by_id: dict[int, _View] = {}
    by_name: dict[str, _View] = {}
    for view in views:
        name = posixpath.normpath(view.name)
        for key, seen, field in ((view.image_id, by_id, "IMAGE_ID"), (name, by_name, "NAME")):
            if key in seen:
                raise DatasetError(
                    f"{view.record}: {field} {key!r} repeats {seen[key].record}; each image must "
                    f"have its own IMAGE_ID and NAME"
                )
            seen[key] = view


def _quaternion(rotation: Tensor) -> tuple[float, float, float, float]:
    """The unit quaternion (w, x, y, z), w >= 0, of a rotation matrix [3, 3] (inverse of _viewmat)."""
    m = rotation.tolist()
    trace = m[0][0] + m[1][1] + m[2][2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (s / 4, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s)
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = 2.0 * math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2])
        q = ((m[2][1] - m[1][2]) / s, s / 4, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s)
    elif m[1][1] > m[2][2]:
        s = 2.0 * math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2])
        q = ((m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, s / 4, (m[1][2] + m[2][1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1])
        q = ((m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, s / 4)
    norm = math.copysign(math.sqrt(sum(v * v for v in q)), q[0])
    w, x, y, z = (v / norm for v in q)
    return w, x, y, z


# ---- text format ----


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: could not be read ({error})") from None


def _data_lines(path: Path) -> list[tuple[str, list[str]]]:
    """("file: line N", words) for each line that is neither blank nor a comment."""
    return [
        (f"{path.name}: line {number}", line.split())
        for number, line in enumerate(_text_lines(path), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _parse(word: str, kind: type[int] | type[float], where: str, field: str) -> float:
    try:
        value = kind(word)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise DatasetError(f"{where}: {field}: expected {expected}, got {word!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {field}: expected a finite number, got {word!r}")
    return value


def _read_cameras_text(path: Path) -> dict[int, _Camera]:
    cameras = {}
    for where, words in _data_lines(path):
        if len(words) < 4:
            raise DatasetError(
                f"{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got {' '.join(words)!r}"
            )
        camera_id = int(_parse(words[0], int, where, "CAMERA_ID"))
        width = int(_parse(words[2], int, where, "WIDTH"))
        height = int(_parse(words[3], int, where, "HEIGHT"))
        params = [_parse(w, float, where, "PARAMS") for w in words[4:]]
        camera_where = f"{path.name}: camera {camera_id}"
        cameras[camera_id] = _camera(words[1], width, height, params, camera_where)
    return cameras


def _is_points_line(words: list[str]) -> bool:
    """Whether ``words`` are a (possibly empty) line of 2D points: X Y POINT3D_ID triples."""
    if len(words) % 3:
        return False
    try:
        for k, word in enumerate(words):
            (int if k % 3 == 2 else float)(word)
    except ValueError:
        return False
    return True


def _read_images_text(path: Path) -> list[_View]:
    """Image records. COLMAP follows each with a line of 2D points, often blank; some writers
    leave those lines out, so a line after a record is its points line only if it is blank or
    holds X Y POINT3D_ID triples, and is the next record otherwise."""
    views: list[_View] = []
    after_record = False
    for number, raw in enumerate(_text_lines(path), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if after_record:
            after_record = False
            if _is_points_line(line.split()):
                continue
        if not line:
            continue
        views.append(_image_record(line, f"{path.name}: line {number}", path.name))
        after_record = True
    return views


def _image_record(line: str, record: str, filename: str) -> _View:
    """One ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` line of ``images.txt``."""
    words = line.split()
    if len(words) < 10:
        raise DatasetError(
            f"{record}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line!r}"
        )
    image_id = int(_parse(words[0], int, record, "IMAGE_ID"))
    pose = [_parse(w, float, record, f) for w, f in zip(words[1:8], _POSE_FIELDS, strict=True)]
    camera_id = int(_parse(words[8], int, record, "CAMERA_ID"))
    name = " ".join(words[9:])
    where = f"{filename}: image {image_id} ({name})"
    viewmat = _viewmat(tuple(pose[:4]), tuple(pose[4:]), where)
    return _View(image_id, name, camera_id, viewmat, where, record)


def _read_points_text(path: Path) -> tuple[Tensor | None, Tensor | None]:
    xyz, rgb = [], []
    for where, words in _data_lines(path):
        if len(words) < 8:
            raise DatasetError(
                f"{where}: expected POINT3D_ID X Y Z R G B ERROR TRACK[], got {' '.join(words)!r}"
            )
        point = [_parse(w, float, where, f) for w, f in zip(words[1:4], "XYZ", strict=True)]
        xyz.append(_point(point, where))
        color = [_parse(w, int, where, f) for w, f in zip(words[4:7], "RGB", strict=True)]
        rgb.append([min(max(c, 0), 255) for c in color])
    return _points(xyz, rgb)


def _point(xyz: list[float], where: str) -> list[float]:
    """``xyz``, after checking that float32 holds it (finite, no overflow)."""
    if not all(abs(v) <= _FLOAT32_MAX for v in xyz):  # NaN fails too
        raise DatasetError(
            f"{where}: X Y Z: expected finite numbers within float32 range, got "
            f"{' '.join(str(v) for v in xyz)}"
        )
    return xyz


def _points(xyz: list, rgb: list) -> tuple[Tensor | None, Tensor | None]:
    if not xyz:
        return None, None
    return torch.tensor(xyz, dtype=torch.float32), torch.tensor(rgb, dtype=torch.float32) / 255.0


# ---- binary format ----


class _BinaryFile:
    """Reads little-endian records from a COLMAP binary file, naming the file if it runs short."""

    def __init__(self, path: Path) -> None:
        try:
            self.data = path.read_bytes()
        except OSError as error:
            raise DatasetError(f"{path}: could not be read ({error})") from None
        self.name = path.name
        self.offset = 0

    def read(self, layout: str, what: str) -> tuple:
        size = struct.calcsize("<" + layout)
        self.skip(size, what)
        return struct.unpack_from("<" + layout, self.data, self.offset - size)

    def skip(self, size: int, what: str) -> None:
        if self.offset + size > len(self.data):
            raise DatasetError(
                f"{self.name}: {what}: the file ends at byte {len(self.data)} (truncated or not "
                f"a COLMAP binary file)"
            )
        self.offset += size

    def string(self, what: str) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise DatasetError(f"{self.name}: {what}: no terminating NUL byte (truncated?)")
        text = self.data[self.offset : end].decode("utf-8", errors="replace")
        self.offset = end + 1
        return text


def _read_cameras_binary(path: Path) -> dict[int, _Camera]:
    file = _BinaryFile(path)
    (count,) = file.read("Q", "number of cameras")
    cameras = {}
    for _ in range(count):
        camera_id, model_id, width, height = file.read("iiQQ", "camera record")
        where = f"{path.name}: camera {camera_id}"
        model = _MODEL_BY_ID.get(model_id)
        if model is None:
            raise DatasetError(
                f"{where}: model id {model_id} is not supported; expected "
                f"{', '.join(f'{i} ({name})' for i, name in _MODEL_BY_ID.items())}"
            )
        params = file.read("d" * len(_MODELS[model][1]), f"camera {camera_id} parameters")
        cameras[camera_id] = _camera(model, width, height, list(params), where)
    return cameras


def _read_images_binary(path: Path) -> list[_View]:
    file = _BinaryFile(path)
    (count,) = file.read("Q", "number of images")
    views = []
    for k in range(count):
        image_id, *pose, camera_id = file.read("i7di", "image record")
        name = file.string(f"image {image_id} name")
        (num_points,) = file.read("Q", f"image {image_id} number of 2D points")
        file.skip(24 * num_points, f"image {image_id} 2D points")  # x, y: double; id: int64
        where = f"{path.name}: image {image_id} ({name})"
        viewmat = _viewmat(tuple(pose[:4]), tuple(pose[4:]), where)
        views.append(_View(image_id, name, camera_id, viewmat, where, f"{path.name}: record {k}"))
    return views


def _read_points_binary(path: Path) -> tuple[Tensor | None, Tensor | None]:
    file = _BinaryFile(path)
    (count,) = file.read("Q", "number of points")
    xyz, rgb = [], []
    for _ in range(count):
        point_id, x, y, z, r, g, b, _error, track_length = file.read("Q3d3BdQ", "point record")
        file.skip(8 * track_length, f"point {point_id} track")  # image id, 2D point index: int32
        xyz.append(_point([x, y, z], f"{path.name}: point {point_id}"))
        rgb.append([r, g, b])
    return _points(xyz, rgb)
