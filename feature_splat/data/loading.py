"""Load a dataset of any supported format, detected from the files it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feature_splat.data.blender import load_blender
from feature_splat.data.colmap import find_colmap_model, load_colmap
from feature_splat.data.dataset import Dataset
from feature_splat.data.nerfstudio import load_nerfstudio
from feature_splat.errors import DatasetError

_BLENDER_FILES = ("transforms_train.json", "transforms_val.json", "transforms_test.json")


def load_dataset(path: str | Path, *, allow_outside_paths: bool = False, **kwargs: Any) -> Dataset:
    """Load the nerfstudio, Blender or COLMAP dataset at ``path`` (a folder or its JSON file).

    ``transforms.json`` means nerfstudio, ``transforms_train.json`` Blender, and ``cameras.txt`` or
    ``cameras.bin`` in the folder, ``sparse/0`` or ``sparse`` COLMAP. ``kwargs`` go to the loader:
    :func:`load_nerfstudio`, :func:`load_blender` or :func:`load_colmap`.

    Paths inside the dataset's files are read relative to the dataset folder (COLMAP image names:
    relative to the image folder); absolute paths and paths that leave the folder (``..``) raise a
    DatasetError unless ``allow_outside_paths``.
    """
    path = Path(path)
    kwargs["allow_outside_paths"] = allow_outside_paths
    if not path.exists():
        raise DatasetError(f"{path}: does not exist")
    if path.is_file():
        if path.name in _BLENDER_FILES:
            return load_blender(path.parent, **kwargs)
        if path.suffix == ".json":
            return load_nerfstudio(path, **kwargs)
    elif (path / "transforms.json").is_file():
        return load_nerfstudio(path, **kwargs)
    elif (path / "transforms_train.json").is_file():
        return load_blender(path, **kwargs)
    elif find_colmap_model(path) is not None:
        return load_colmap(path, **kwargs)
    raise DatasetError(
        f"{path}: no dataset found; looked for transforms.json (nerfstudio), "
        f"transforms_train.json (Blender), and cameras.txt or cameras.bin in the folder, "
        f"sparse/0 or sparse (COLMAP)"
    )
