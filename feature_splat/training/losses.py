"""Losses shared by the per-scene and the feed-forward trainers."""

from __future__ import annotations

from pytorch_msssim import ssim
from torch import Tensor


def photometric_loss(rendered: Tensor, target: Tensor) -> Tensor:
    """3DGS's image loss ``0.8 * L1 + 0.2 * (1 - SSIM)`` of RGB images [..., H, W, 3] in [0, 1]."""
    l1 = (rendered - target).abs().mean()
    as_batch = [
        image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2) for image in (rendered, target)
    ]
    return 0.8 * l1 + 0.2 * (1.0 - ssim(*as_batch, data_range=1.0))
