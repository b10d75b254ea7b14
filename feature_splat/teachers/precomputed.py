"""Feature maps computed elsewhere (another script, another machine) seen as a teacher.

A features folder holds one map per image, matched to the dataset's views by name:

- ``index.json`` (optional): an object from image (its ``file_path``, with or without extension,
  or its file name) to a feature file, relative to the folder;
- otherwise ``<view name>.<ext>`` (the image's path inside the dataset, without its extension,
  such as ``images/frame_001.npy``) or ``<image stem>.<ext>`` (``frame_001.npy``);

with ``ext`` one of ``.npy``, ``.npz`` (one array, or the one named ``features``) and ``.pt`` (a
tensor, or a dict with ``features``; read with ``weights_only=True``). A map is ``[h, w, M]`` or
``[M, h, w]`` (``layout``; ``auto`` decides from the shape and the image's aspect), float16 or
float32, every map of one shape. When the image is exactly ``s h x s w`` pixels for a whole
stride ``s``, rendered features are averaged over exactly those ``s x s`` cells; otherwise they
are area-resampled to the map's grid (``adaptive_avg_pool2d``).

An optional ``labels.npz`` (``names``: a string array, ``embeddings``: ``[T, M]``) gives the
text side: the embeddings of named labels in the maps' space, so label-set segmentation and text
prompts work with those names.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.errors import ConfigError, DatasetError
from feature_splat.io.feature_cache import image_hash
from feature_splat.io.files import read_json_object
from feature_splat.teachers.base import embeddings_by_name

_VERSION = 1
EXTENSIONS = (".npy", ".npz", ".pt")
INDEX_NAME = "index.json"
LABELS_NAME = "labels.npz"
_FLOAT_TYPES = (np.float16, np.float32)


class PrecomputedTeacher:
    """The maps in a features folder for the views of ``dataset`` (module docstring)."""

    name = "precomputed"

    def __init__(self, folder: str | Path, dataset: Dataset, layout: str = "auto") -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: --features folder does not exist")
        self.files = _match_files(self.folder, dataset.image_names)
        self._view_of_image: dict[str, int] = {}
        for view, image in enumerate(dataset.images):
            key = image_hash(image.permute(2, 0, 1))  # as encode() sees it
            if key in self._view_of_image:
                first = dataset.image_names[self._view_of_image[key]]
                raise DatasetError(
                    f"{dataset.root}: images {first} and {dataset.image_names[view]} are "
                    f"identical; precomputed features are matched to images by their content"
                )
            self._view_of_image[key] = view
        digest = hashlib.sha256()
        shapes = {}
        for view, path in enumerate(self.files):
            data = path.read_bytes()
            digest.update(dataset.image_names[view].encode() + hashlib.sha256(data).digest())
            shapes[path] = _read_map(path, data).shape
        first = self.files[0]
        shape = shapes[first]
        for path, other in shapes.items():
            if other != shape:
                raise DatasetError(
                    f"{path}: shape {list(other)}, but {first} has {list(shape)}; every map of "
                    f"one dataset must have the same shape"
                )
        self.layout = _layout(shape, (dataset.height, dataset.width), layout, first)
        h, w, self.dim = shape if self.layout == "hwc" else (*shape[1:], shape[0])
        self.grid = (h, w)
        self.resizes_input, self.stride = _stride((dataset.height, dataset.width), self.grid)
        self._content_id = digest.hexdigest()
        self.label_names, self._label_embeddings = _read_labels(self.folder, self.dim)
        self.language_aligned = self.label_names is not None

    @property
    def config_id(self) -> str:
        """Changes with the files' content and the layout."""
        options = {"version": _VERSION, "content": self._content_id, "layout": self.layout}
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"precomputed-{digest[:16]}"

    def encode(self, images: Tensor) -> Tensor:
        """The stored maps [B, M, h, w] (float32) of dataset views [B, 3, H, W]."""
        maps = []
        for image in images:
            view = self._view_of_image.get(image_hash(image))
            if view is None:
                raise DatasetError(
                    f"{self.folder}: precomputed features exist only for the dataset's own images"
                )
            path = self.files[view]
            values = torch.from_numpy(_read_map(path, path.read_bytes()).astype(np.float32))
            maps.append(values.permute(2, 0, 1) if self.layout == "hwc" else values)
        return torch.stack(maps).to(images.device)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Unit embeddings [T, M] of label names in ``labels.npz`` (case and spaces ignored)."""
        if self.label_names is None:
            raise ConfigError(
                f"text: {self.folder} has no {LABELS_NAME}, so its features have no text side"
            )
        return embeddings_by_name(texts, self.label_names, self._label_embeddings, str(self.folder))


def _match_files(folder: Path, view_names: list[str]) -> list[Path]:
    """The feature file of each view (module docstring), every one inside ``folder``."""
    index = _read_index(folder) if (folder / INDEX_NAME).is_file() else None
    files = []
    for name in view_names:
        stem = name.rsplit("/", 1)[-1]
        if index is not None:
            keys = [key for key in index if _image_key(key) in (name, stem)]
            if len(keys) != 1:
                raise DatasetError(
                    f"{folder / INDEX_NAME}: {'no entry' if not keys else 'several entries'} "
                    f"for image {name}"
                )
            path = _inside(folder, index[keys[0]], f"{folder / INDEX_NAME}: {keys[0]}")
            if not path.is_file():
                raise DatasetError(f"{folder / INDEX_NAME}: {keys[0]}: {path} does not exist")
        else:
            found = {
                folder / f"{base}{ext}"
                for base in (name, stem)
                for ext in EXTENSIONS
                if (folder / f"{base}{ext}").is_file()
            }
            if len(found) != 1:
                raise DatasetError(
                    f"{folder}: no feature map for image {name} (looked for {stem}.npy, .npz or "
                    f".pt, also under {name.rsplit('/', 1)[0] + '/' if '/' in name else 'the folder'})"
                    if not found
                    else f"{folder}: several feature maps for image {name}: "
                    f"{', '.join(sorted(p.name for p in found))}"
                )
            path = _inside(folder, str(found.pop().relative_to(folder)), str(folder))
        files.append(path)
    return files


def _image_key(key: str) -> str:
    """An index key without its extension (``images/a.png`` -> ``images/a``)."""
    key = key.removeprefix("./")
    base, dot, ext = key.rpartition(".")
    return base if dot and "/" not in ext else key


def _read_index(folder: Path) -> dict[str, str]:
    index = read_json_object(folder / INDEX_NAME)
    for key, value in index.items():
        if not isinstance(value, str):
            raise DatasetError(f"{folder / INDEX_NAME}: {key}: expected a file name, got {value!r}")
    return index


def _inside(folder: Path, relative: str, where: str) -> Path:
    """``folder / relative``, refused when it leaves the folder (even through a link)."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DatasetError(f"{where}: {relative} lies outside the features folder")
    return path


def _read_map(path: Path, data: bytes) -> np.ndarray:
    """The array in one feature file (3 axes, float16/32, finite), or a DatasetError naming it."""
    try:
        if path.suffix == ".npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = "features" if "features" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise DatasetError(
                        f"{path}: holds arrays {keys}; expected one, or one named 'features'"
                    )
                array = archive[key]
        else:
            array = _tensor_array(path)
    except DatasetError:
        raise
    except Exception as err:  # numpy raises several types on damaged files
        raise DatasetError(f"{path}: not a readable feature map ({err})") from None
    if array.ndim != 3:
        raise DatasetError(
            f"{path}: shape {list(array.shape)}; expected a map [h, w, M] or [M, h, w]"
        )
    if array.dtype.type not in _FLOAT_TYPES:
        raise DatasetError(f"{path}: dtype {array.dtype}; expected float16 or float32")
    if array.size == 0 or not np.isfinite(array).all():
        raise DatasetError(f"{path}: holds NaN or infinite values" if array.size else
                           f"{path}: is empty")  # fmt: skip
    return array


def _tensor_array(path: Path) -> np.ndarray:
    from feature_splat.io.checkpoints import read_checkpoint

    value: Any = read_checkpoint(path, "feature map")
    if isinstance(value, dict):
        value = value.get("features")
    if not isinstance(value, Tensor):
        raise DatasetError(f"{path}: expected a tensor, or a dict with a 'features' tensor")
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def _layout(shape: tuple[int, ...], image: tuple[int, int], layout: str, path: Path) -> str:
    """``hwc`` or ``chw``: as given, or the one whose grid fits the image (auto)."""
    grids = {"hwc": shape[:2], "chw": shape[1:]}
    fitting = [name for name, grid in grids.items() if _fits(grid, image)]
    if layout != "auto":
        if layout not in fitting:
            raise DatasetError(
                f"{path}: shape {list(shape)} read as {layout} gives a {grids[layout][0]}x"
                f"{grids[layout][1]} grid, which does not cover a {image[0]}x{image[1]} image "
                f"(at most the image's size, with its aspect)"
            )
        return layout
    exact = [name for name in fitting if not _stride(image, grids[name])[0]]
    if len(fitting) == 1 or len(exact) == 1:
        return (exact or fitting)[0]
    if not fitting:
        raise DatasetError(
            f"{path}: shape {list(shape)}: neither [h, w, M] nor [M, h, w] gives a grid with "
            f"the {image[1]}x{image[0]} images' aspect and at most their size"
        )
    raise DatasetError(
        f"{path}: shape {list(shape)} reads both as [h, w, M] and as [M, h, w]; say which "
        f"with --features-layout hwc or chw"
    )


def _fits(grid: tuple[int, ...], image: tuple[int, int]) -> bool:
    """Whether a grid of cells can describe an image: no finer than its pixels, and each cell
    close to square (aspect within 10 %, or an exact tiling by square cells)."""
    (h, w), (height, width) = grid, image
    if not (0 < h <= height and 0 < w <= width):
        return False
    resampled, _ = _stride(image, (h, w))
    return not resampled or abs((height / h) / (width / w) - 1) <= 0.1


def _stride(image: tuple[int, int], grid: tuple[int, int]) -> tuple[bool, int]:
    """(whether cells are resampled, stride): a whole stride ``s`` with the image exactly
    ``s h x s w`` pixels means exact cells; otherwise the rounded mean pixel size of a cell."""
    (height, width), (h, w) = image, grid
    if height % h == 0 and height // h * w == width:
        return False, height // h
    return True, max(1, round((height / h + width / w) / 2))


def _read_labels(folder: Path, dim: int) -> tuple[list[str] | None, Tensor | None]:
    """The names and embeddings [T, dim] of ``labels.npz``, or (None, None) without one."""
    path = folder / LABELS_NAME
    if not path.is_file():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            names, embeddings = archive["names"], archive["embeddings"]
    except KeyError as err:
        raise DatasetError(f"{path}: missing array {err}; expected names and embeddings") from None
    except Exception as err:
        raise DatasetError(f"{path}: not readable ({err}); expected names and embeddings") from None
    if names.dtype.kind != "U" or names.ndim != 1:
        raise DatasetError(f"{path}: names: expected a 1-D string array, got {names.dtype}")
    if embeddings.shape != (len(names), dim) or embeddings.dtype.kind != "f":
        raise DatasetError(
            f"{path}: embeddings: expected float [{len(names)}, {dim}] (one row per name, the "
            f"maps' width), got {embeddings.dtype} {list(embeddings.shape)}"
        )
    if not np.isfinite(embeddings).all():
        raise DatasetError(f"{path}: embeddings hold NaN or infinite values")
    lowered = [str(name).strip().lower() for name in names]
    if len(set(lowered)) != len(lowered) or not all(lowered):
        raise DatasetError(f"{path}: names: expected distinct, non-empty label names")
    return [str(name) for name in names], torch.from_numpy(embeddings.astype(np.float32))
