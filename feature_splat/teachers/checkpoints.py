"""Teachers' weights from local files: errors that say what is expected and where it comes from,
file digests for cache keys, and seeded random models for tests. Reading the files themselves is
:mod:`feature_splat.io.checkpoints` (never running code from them).

No teacher ever downloads anything: users pass checkpoint files they already have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from feature_splat.errors import CheckpointError

_DIGESTS: dict[tuple[str, int, int], str] = {}
M = TypeVar("M", bound=nn.Module)


def require_checkpoint(path: str | Path | None, what: str, where: str) -> Path:
    """``path`` as a Path if it is an existing file; else a CheckpointError naming ``what`` is
    expected and ``where`` users usually get it."""
    if path is None:
        raise CheckpointError(
            f"{what}: no checkpoint given (pass a local file; usually from {where})"
        )
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint {path} does not exist (usually from {where})")
    return path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def build_seeded(build: Callable[[], M], seed: int) -> M:
    """``build()`` with torch's global generator seeded by ``seed`` and restored afterwards: random
    weights that are the same every time, for tests, without disturbing the caller's randomness."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
