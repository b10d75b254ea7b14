"""Image, feature and segmentation metrics (DESIGN.md, "Metrics")."""

from __future__ import annotations

import math

import torch
from pytorch_msssim import ssim as _ssim
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] ([..., 3]); ``mask`` [...] selects pixels."""
    err = (pred.detach().float() - target.float()) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * torch.log10(1.0 / mse.clamp_min(1e-12)))


def ssim(pred: Tensor, target: Tensor) -> float:
    """Structural similarity (Gaussian window 11, sigma 1.5) of images [H, W, 3] in [0, 1]."""
    to_batch = lambda t: t.detach().float().permute(2, 0, 1)[None]  # noqa: E731
    return float(_ssim(to_batch(pred), to_batch(target), data_range=1.0, size_average=True))


def feature_cosine(pred: Tensor, target: Tensor) -> float:
    """Mean cosine similarity between feature maps [..., M] over all positions."""
    return float(torch.nn.functional.cosine_similarity(pred.float(), target.float(), dim=-1).mean())


def segment_by_text(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """Label per position: argmax over labels of cosine(feature [..., M], text embedding [T, M])."""
    feats = torch.nn.functional.normalize(features.float(), dim=-1)
    texts = torch.nn.functional.normalize(text_embeddings.float(), dim=-1)
    return (feats @ texts.T).argmax(dim=-1)


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int) -> Tensor:
    """Counts [n_classes, n_classes] (int64; rows truth, columns prediction) of integer label maps."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    counts = torch.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def class_iou(confusion: Tensor) -> Tensor:
    """IoU per class [C] (float64) from a confusion matrix [C, C]; 0 for a class seen nowhere."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    return torch.where(union > 0, hits / union.clamp_min(1), torch.zeros_like(hits))


def segmentation_scores(pred: Tensor, target: Tensor, n_classes: int) -> dict[str, object]:
    """Pixel accuracy, mean IoU and per-class IoU of integer label maps.

    The mean runs over the classes present in ``target`` (a class absent from the ground truth
    has no defined IoU); predictions of absent classes still lower the IoU of the class they hide.
    """
    confusion = confusion_matrix(pred, target, n_classes).double()
    present = confusion.sum(1) > 0
    iou = class_iou(confusion)
    return {
        "accuracy": float(confusion.diag().sum() / confusion.sum().clamp_min(1)),
        "miou": float(iou[present].mean()) if bool(present.any()) else math.nan,
        "per_class_iou": {int(k): float(iou[k]) for k in torch.nonzero(present)[:, 0]},
    }


def depth_metrics(pred: Tensor, target: Tensor, max_depth: float = math.inf) -> dict[str, float]:
    """AbsRel, RMSE and the fraction with ``max(d / d*, d* / d) < 1.25`` of depths [...] over the
    pixels whose target is finite, positive and at most ``max_depth``; predictions are clipped to
    ``[1e-3, max_depth]`` first (KITTI's and nuScenes' protocol), so an empty pixel (inf) counts as
    the farthest depth."""
    known = torch.isfinite(target) & (target > 0) & (target <= max_depth)
    if not bool(known.any()):
        return {"absrel": math.nan, "rmse": math.nan, "delta1": math.nan}
    d = pred.detach().float()[known].nan_to_num(posinf=max_depth).clamp(1e-3, max_depth)
    t = target.float()[known]
    ratio = torch.maximum(d / t, t / d)
    return {
        "absrel": float(((d - t).abs() / t).mean()),
        "rmse": float(((d - t) ** 2).mean().sqrt()),
        "delta1": float((ratio < 1.25).float().mean()),
    }
