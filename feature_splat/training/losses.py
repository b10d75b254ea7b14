"""Losses shared by the per-scene and the feed-forward trainers."""

from __future__ import annotations

from typing import Literal

import torch
from pytorch_msssim import ssim
from torch import Tensor

from feature_splat.decoders import SpeedUpDecoder
from feature_splat.teachers import to_teacher_cells


def photometric_loss(rendered: Tensor, target: Tensor) -> Tensor:
    """3DGS's image loss ``0.8 * L1 + 0.2 * (1 - SSIM)`` of RGB images [..., H, W, 3] in [0, 1]."""
    l1 = (rendered - target).abs().mean()
    as_batch = [
        image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2) for image in (rendered, target)
    ]
    return 0.8 * l1 + 0.2 * (1.0 - ssim(*as_batch, data_range=1.0))


def decode_at_cells(
    features: Tensor, cells: tuple[int, int], decoder: SpeedUpDecoder, stride: int | None
) -> Tensor:
    """Rendered features [H, W, F] averaged over a teacher's ``cells`` (h, w) (exactly when its
    ``stride`` grid tiles the image, else by area) and decoded: [h, w, M]."""
    pooled = to_teacher_cells(features.permute(2, 0, 1)[None], cells, stride)[0]
    return decoder(pooled.permute(1, 2, 0))


def distillation_loss(
    features: Tensor,
    target: Tensor,
    decoder: SpeedUpDecoder,
    stride: int | None,
    kind: Literal["l1", "cosine"] = "l1",
) -> Tensor:
    """The feature loss of one view: rendered features [H, W, F] decoded at the teacher's cells
    (:func:`decode_at_cells`) against the teacher's map ``target`` [h, w, M], by L1 or by
    1 - cosine."""
    target = target.float()
    decoded = decode_at_cells(features, target.shape[:2], decoder, stride)
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(decoded, target, dim=-1).mean()
    return (decoded - target).abs().mean()
