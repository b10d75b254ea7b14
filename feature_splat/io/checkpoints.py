"""Reading PyTorch checkpoint files without running code and without trusting their sizes.

Every ``.pt`` file feature-splat reads goes through :func:`read_checkpoint` (``torch.load`` with
``weights_only=True``: tensors and plain containers only, never pickled code). Models are rebuilt
from a stored config with :func:`build_checked`, which first builds the model on the ``meta``
device (no memory) and compares its parameter names and shapes with the stored tensors, so a tiny
file whose config asks for an enormous layer is refused before anything is allocated.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from feature_splat.errors import CheckpointError, FeatureSplatError
from feature_splat.io.files import atomic_write_bytes

M = TypeVar("M", bound=nn.Module)


def read_checkpoint(path: str | Path, what: str = "PyTorch checkpoint") -> Any:
    """The contents of a ``torch.save`` file, loaded with ``weights_only=True`` on the CPU. Every
    tensor in it must be an ordinary CPU tensor (a ``meta`` tensor declares any size at no cost
    in the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols, then fails
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types on corrupt or code-carrying files
        raise CheckpointError(f"{path}: not a readable {what} ({load_error(err)})") from None
    try:
        odd = next(_unusual_tensors(data), None)
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a {what}") from None
    if odd is not None:
        raise CheckpointError(
            f"{path}: holds a {odd.layout} tensor on {odd.device}; a {what} holds plain CPU tensors"
        )
    return data


def _unusual_tensors(value: Any):
    """The tensors nested in ``value`` that are not dense CPU tensors."""
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or value.layout != torch.strided:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _unusual_tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _unusual_tensors(item)


def load_error(err: Exception) -> str:
    """A short reason why ``torch.load(..., weights_only=True)`` refused a file."""
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err):
        return "it holds pickled objects other than tensors, which may run code; refused"
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def read_state_dict(
    path: Path, nested_keys: tuple[str, ...] = ("state_dict", "model")
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (a bare state dict, or one nested under ``nested_keys``)."""
    data = read_checkpoint(path)
    for key in nested_keys:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return data


def check_state(model: nn.Module, state: Any, source: str) -> None:
    """Raise a CheckpointError unless ``state`` holds exactly ``model``'s tensors, with their
    shapes; the message lists the first few missing, unexpected or mis-shaped keys."""
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a dict of tensors (a state dict)")
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


def load_strict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after :func:`check_state`."""
    check_state(model, state, source)
    model.load_state_dict(state)


def build_checked(build: Callable[[], M], state: Any, source: str) -> M:
    """``build()`` with ``state`` loaded, after checking ``state`` against a ``meta``-device
    build (no memory): a config that does not match its stored tensors never allocates. The
    state's tensors must also be finite."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except FeatureSplatError as err:
        raise CheckpointError(f"{source}: {err}") from None
    except Exception as err:  # the stored config does not describe a model torch can build
        raise CheckpointError(f"{source}: its config describes no valid model ({err})") from None
    check_state(skeleton, state, source)
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {key} holds NaN or infinite values")
    model = build()
    model.load_state_dict(state)
    return model


def write_checkpoint(path: str | Path, data: Any) -> Path:
    """``torch.save`` ``data`` (tensors and plain containers, so that :func:`read_checkpoint` can
    read it back) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
