"""The Teacher protocol: a 2D model whose dense features a field distils."""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Teacher(Protocol):
    """A 2D foundation model (or the synthetic oracle) seen as a dense feature extractor.

    ``encode`` maps images [B, 3, H, W] (float, RGB in [0, 1]) to features [B, dim, h, w] at the
    teacher's own resolution: cell (i, j) describes the pixels around
    ``((j + 0.5) * stride, (i + 0.5) * stride)``. Language-aligned teachers also map text to the same
    space with ``encode_text`` ([T, dim], unit norm); the others raise ``NotImplementedError``.
    ``config_id`` is stable across runs and changes whenever the features would (model, checkpoint
    hash, input size, options): caches are keyed by it.
    """

    name: str
    dim: int
    stride: int
    language_aligned: bool

    @property
    def config_id(self) -> str: ...

    def encode(self, images: Tensor) -> Tensor: ...

    def encode_text(self, texts: list[str]) -> Tensor: ...


def pool_to_cells(maps: Tensor, stride: int) -> Tensor:
    """Average maps [B, C, H, W] over stride x stride cells -> [B, C, ceil(H/s), ceil(W/s)].

    A partial cell at the right or bottom edge averages only the pixels it has, matching how a
    teacher's cell describes the pixels it covers. The cells are summed with the channels last,
    a free view of the renders (which are [B, H, W, C] in memory): forward and backward take
    a quarter of the time of pooling them as channels-first images.
    """
    h, w = maps.shape[-2:]
    rows, cols = -(-h // stride), -(-w // stride)
    last = maps.movedim(-3, -1)
    padded = last
    if (rows * stride, cols * stride) != (h, w):  # (padding by nothing would still copy)
        padded = torch.nn.functional.pad(last, (0, 0, 0, cols * stride - w, 0, rows * stride - h))
    cells = padded.reshape(*last.shape[:-3], rows, stride, cols, stride, last.shape[-1])
    sums = cells.sum(-2).sum(-3)  # two single-axis sums: faster than one over both
    starts = torch.arange(max(rows, cols), device=maps.device) * stride
    count_y = (h - starts[:rows]).clamp_max(stride)
    count_x = (w - starts[:cols]).clamp_max(stride)
    counts = (count_y[:, None] * count_x[None, :]).to(maps.dtype)
    return (sums / counts[..., None]).movedim(-1, -3)


def grid_stride(teacher: Teacher) -> int | None:
    """The teacher's stride if its cells tile the original image exactly (``resizes_input`` is
    False), else None: foundation models resize their input, so their cells are not whole pixels."""
    return None if getattr(teacher, "resizes_input", True) else teacher.stride


def to_teacher_cells(maps: Tensor, cells: tuple[int, int], stride: int | None) -> Tensor:
    """Rendered maps [B, C, H, W] brought to a teacher map's ``cells`` = (h, w) by averaging.

    Exact cell averages (:func:`pool_to_cells`) for a teacher whose grid is the stride grid (see
    :func:`grid_stride`); area resampling to the teacher's grid otherwise.
    """
    h, w = maps.shape[-2:]
    if stride is not None and (-(-h // stride), -(-w // stride)) == tuple(cells):
        return pool_to_cells(maps, stride)
    return torch.nn.functional.adaptive_avg_pool2d(maps, cells)


def seeded_randn(seed_text: str, *shape: int) -> Tensor:
    """Standard normal values (float64) of ``shape`` seeded by a hash of ``seed_text``: the same on
    every run and machine (the oracle teachers' embeddings and noise)."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def seeded_unit_vector(seed_text: str, dim: int) -> Tensor:
    """A unit vector [dim] (float64) in a direction seeded by ``seed_text`` (:func:`seeded_randn`)."""
    vector = seeded_randn(seed_text, dim)
    return vector / vector.norm()


def label_index(names: list[str]) -> dict[str, int]:
    """Position of each label name, keyed without case and surrounding spaces."""
    return {name.strip().lower(): i for i, name in enumerate(names)}


def embeddings_by_name(
    texts: list[str], names: list[str], embeddings: Tensor, source: str
) -> Tensor:
    """Unit rows of ``embeddings`` [T, M] for ``texts`` matched to ``names`` (:func:`label_index`);
    an unknown text is a ConfigError listing the names ``source`` knows."""
    from feature_splat.errors import ConfigError

    index = label_index(names)
    rows = []
    for text in texts:
        row = index.get(text.strip().lower())
        if row is None:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ConfigError(
                f"text {text!r}: {source} holds embeddings only for the labels {shown}"
            )
        rows.append(row)
    if not rows:
        return embeddings.new_zeros(0, embeddings.shape[1])
    return torch.nn.functional.normalize(embeddings[rows].float(), dim=-1)
