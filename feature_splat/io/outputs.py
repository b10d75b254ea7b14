"""Where a command may write: one rule for every command that writes a folder.

An output folder is accepted when

- it does not exist yet, or is empty: it is created and marked as made by feature-splat for this
  *kind* of output (a small ``.feature-splat.json`` marker);
- or its marker says feature-splat made it for the same kind of output: its files may be replaced
  (``render`` twice into one folder, a cache filled again);

and refused otherwise: a symbolic link (a run folder someone sent you could link ``rendered/``
anywhere), a folder feature-splat did not make (a dataset's ``images/``), a folder made
for another kind of output (a run folder given to ``render --out``), or any folder inside a dataset
(a folder holding ``transforms.json``, ``transforms_train.json``, ``sparse/`` or COLMAP's
``cameras.txt`` / ``cameras.bin``, or the root of a dataset given as input). So inputs are never
overwritten and a run's own files change only through the commands whose documented output they
are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from feature_splat.errors import OutputError
from feature_splat.io.files import write_json

MARKER_NAME = ".feature-splat.json"
# Files or folders whose presence makes a folder a dataset (nerfstudio, Blender, COLMAP).
DATASET_SIGNS = ("transforms.json", "transforms_train.json", "sparse", "cameras.txt", "cameras.bin")


def output_kind(folder: Path) -> str | None:
    """The kind of output feature-splat made ``folder`` for, or None (not made by it, or unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = marker.get("kind") if isinstance(marker, dict) else None
    return kind if isinstance(kind, str) else None


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def prepare_output(out: str | Path, kind: str, *, inputs: Iterable[Path | None] = ()) -> Path:
    """Check ``out`` against the rule above, create and mark it, and return it.

    ``inputs`` are folders given to the command as data (dataset roots, the run an edit reads):
    ``out`` may not be one of them nor lie inside one. Creating the folder and writing the
    marker up front also proves the folder writable before any long computation starts.
    """
    out = Path(out)
    if out.is_symlink():
        raise OutputError(
            f"{out}: is a symbolic link; give the folder it points to ({out.resolve()}) if that is "
            f"where outputs should go"
        )
    for folder in inputs:
        if folder is not None and _is_within(out, Path(folder)):
            raise OutputError(
                f"{out}: is inside the input {folder}; write outputs elsewhere "
                f"(inputs are never modified)"
            )
    for parent in out.resolve().parents:
        if any((parent / sign).exists() for sign in DATASET_SIGNS):
            raise OutputError(
                f"{out}: is inside the dataset {parent}; write outputs elsewhere (datasets are "
                f"never modified)"
            )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir():
        found = output_kind(out)
        if found is None and any(out.iterdir()):
            raise OutputError(
                f"{out}: is not empty and was not made by feature-splat; choose a new folder "
                f"(feature-splat writes only into folders it made)"
            )
        if found is not None and found != kind:
            raise OutputError(
                f"{out}: holds feature-splat '{found}' output, not '{kind}' output; choose "
                f"another folder"
            )
        if found == kind:
            return out
    write_json(out / MARKER_NAME, {"tool": "feature-splat", "kind": kind})
    return out
