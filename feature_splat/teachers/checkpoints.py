"""Loading teachers' weights from local files, with errors that say what is expected and where.

No teacher ever downloads anything: users pass checkpoint files they already have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

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


def read_state_dict(
    path: Path, nested_keys: tuple[str, ...] = ("state_dict", "model")
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (a bare state dict, or one nested under ``nested_keys``)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    for key in nested_keys:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def load_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is a CheckpointError
    that lists the first few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} keys with the wrong shape (e.g. {mismatched[:2]})")
    if problems:
        raise CheckpointError(f"{source}: does not match the model: " + "; ".join(problems))
    model.load_state_dict(state)


def build_seeded(build: Callable[[], M], seed: int) -> M:
    """``build()`` with torch's global generator seeded by ``seed`` and restored afterwards: random
    weights that are the same every time, for tests, without disturbing the caller's randomness."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
