"""Cache files as ``.npz`` archives that are trusted only when they check out.

Every on-disk cache of feature-splat (teacher features, rendered synthetic worlds, rendered object
instances) stores its arrays with the ids that say what they were made from. :func:`read_cached`
returns the arrays only when the file is readable without pickles, every id matches and every
array has the expected shape and dtype; otherwise it says why, and the caller recomputes the entry
and writes it again (atomically, with :func:`~feature_splat.io.files.write_npz`).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """What a stored array must look like: ``shape`` (None entries match any size; None: any
    shape), ``dtype`` (None: any) and, when ``finite``, no NaN or infinity."""

    shape: tuple[int | None, ...] | None = None
    dtype: type | None = None
    finite: bool = False

    def problem(self, name: str, array: np.ndarray) -> str | None:
        """Why ``array`` does not fit, or None."""
        fits = self.shape is None or (
            array.ndim == len(self.shape)
            and all(
                want is None or want == got
                for want, got in zip(self.shape, array.shape, strict=True)
            )
        )
        if not fits or (self.dtype is not None and array.dtype != self.dtype):
            return f"{name} is {array.dtype}{list(array.shape)}"
        if self.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"{name} holds NaN or infinity"
        return None


def read_cached(
    path: Path, ids: Mapping[str, object], arrays: Mapping[str, ArraySpec]
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The ``arrays`` of the cache file ``path`` and ``""``, or None and the reason it cannot be
    trusted (missing, unreadable, another id, a wrong shape, dtype or value)."""
    if not path.is_file():
        return None, "missing"
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored_ids = {name: archive[name].item() for name in ids}
            loaded = {name: archive[name] for name in arrays}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        return None, f"unreadable ({error})"
    changed = [name for name, value in ids.items() if stored_ids[name] != value]
    if changed:
        return None, f"made from something else ({', '.join(changed)} differ)"
    problems = [p for name, spec in arrays.items() if (p := spec.problem(name, loaded[name]))]
    if problems:
        return None, "; ".join(problems)
    return loaded, ""
