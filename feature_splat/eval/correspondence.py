"""Object-mode correspondence metrics in the manner of FeatureNeRF.

Keypoint transfer: a query keypoint's feature (from a source view or source object) is matched to
the most cosine-similar pixel of a target feature map, or to the most similar point of a target
point set, and scored by PCK: the fraction of predictions within a threshold of the true keypoint.
2D thresholds are in pixels at a 128 x 128 image and scale with the image; 3D thresholds are
fractions of the object size (its bounding-box diagonal).

Part co-segmentation: each target feature takes the part label of its most cosine-similar source
feature, and the labels are scored by part IoU from a confusion matrix that can be pooled over
many source/target pairs before the IoU is taken (one matrix over all pairs, as in ``heldout``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.eval.metrics import class_iou, confusion_matrix

PCK_2D_THRESHOLDS_PX: tuple[float, ...] = (2.5, 5.0, 7.5, 10.0)  # pixels at a 128 x 128 image
PCK_2D_REFERENCE_SIZE = 128
PCK_3D_THRESHOLDS: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1)  # fractions of the object size


def cosine_nearest(queries: Tensor, candidates: Tensor, *, chunk: int = 4096) -> Tensor:
    """Index [Q] into ``candidates`` [N, D] of each query's [Q, D] most cosine-similar candidate.

    Similarities are computed ``chunk`` queries at a time ([chunk, N] at most in memory). Ties go to
    the lowest index; a zero vector has similarity 0 with everything (no NaN).
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected queries [Q, D] and candidates [N, D], got {tuple(queries.shape)} "
            f"and {tuple(candidates.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if len(candidates) == 0:
        raise ValueError("no candidates to match against")
    dtype = torch.float64 if torch.float64 in (queries.dtype, candidates.dtype) else torch.float32
    # normalize() divides by max(norm, eps): a zero vector stays zero instead of becoming NaN.
    targets = F.normalize(candidates.to(dtype), dim=-1)
    nearest = [
        (F.normalize(part.to(dtype), dim=-1) @ targets.T).argmax(dim=1)
        for part in queries.split(chunk)
    ]
    return torch.cat(nearest)


def transfer_keypoints_2d(
    query_features: Tensor, target_map: Tensor, target_mask: Tensor | None = None
) -> Tensor:
    """Predicted pixel positions [Q, 2] of query features [Q, D] in a target map [H, W, D].

    Each query goes to its most similar pixel among those in ``target_mask`` [H, W] (all pixels if
    None); positions are pixel centres, x = column + 0.5 and y = row + 0.5.
    """
    height, width, depth = target_map.shape
    flat = target_map.reshape(height * width, depth)
    if target_mask is None:
        pixels = torch.arange(height * width, device=target_map.device)
    else:
        if target_mask.shape != (height, width):
            raise ValueError(f"mask {tuple(target_mask.shape)} does not match map {height, width}")
        pixels = torch.nonzero(target_mask.reshape(-1).bool())[:, 0]
    chosen = pixels[cosine_nearest(query_features, flat[pixels])]
    return torch.stack([chosen % width, chosen // width], dim=1).float() + 0.5


def transfer_keypoints_3d(
    query_features: Tensor, candidate_points: Tensor, candidate_features: Tensor
) -> Tensor:
    """Predicted 3D positions [Q, 3]: the point [N, 3] whose feature [N, D] best matches a query."""
    if len(candidate_points) != len(candidate_features):
        raise ValueError(
            f"{len(candidate_points)} candidate points but {len(candidate_features)} features"
        )
    return candidate_points[cosine_nearest(query_features, candidate_features)]


def sample_map(feature_map: Tensor, pixels: Tensor) -> Tensor:
    """Bilinearly sample a map [H, W, D] at pixel positions [Q, 2] -> [Q, D].

    Positions (x, y) are in the map's own pixel units with pixel centres at +0.5 (rescale them first
    when the map is coarser than the image it describes); outside positions clamp to the border.
    """
    height, width, _ = feature_map.shape
    size = torch.tensor([width, height], dtype=feature_map.dtype, device=feature_map.device)
    # With align_corners=False, -1 and 1 are the outer edges of the border pixels: x = 0 and x = W.
    grid = (2 * pixels.to(feature_map.dtype) / size - 1)[None, None]
    sampled = F.grid_sample(
        feature_map.permute(2, 0, 1)[None],
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return sampled[0, :, 0].T


def sample_nearest_in_mask(feature_map: Tensor, mask: Tensor, pixels: Tensor) -> Tensor:
    """Features [Q, D] of the pixels inside ``mask`` [H, W] nearest to positions [Q, 2] of a map
    [H, W, D] (x, y with pixel centres at +0.5).

    A keypoint on a silhouette often falls on a background pixel; this reads the object's feature
    beside it instead of a blend with the background.
    """
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if len(rows) == 0:
        raise ValueError("sample_nearest_in_mask: the mask is empty")
    centres = torch.stack([cols, rows], dim=1).to(pixels.dtype) + 0.5
    nearest = torch.cdist(pixels, centres).argmin(dim=1)
    return feature_map[rows[nearest], cols[nearest]]


def pck(
    errors: Tensor, thresholds: Sequence[float], scale: float | Tensor = 1.0
) -> dict[float, float]:
    """Fraction of ``errors`` [Q] (distances) at most ``threshold * scale``, for each threshold.

    ``scale`` is a number or a [Q] tensor (one scale per error). Empty errors give NaN.
    """
    errors = errors.reshape(-1)
    if len(errors) == 0:
        return {float(t): math.nan for t in thresholds}
    return {float(t): float((errors <= t * scale).double().mean()) for t in thresholds}


def pck_2d(predicted: Tensor, truth: Tensor, image_size: int) -> dict[float, float]:
    """PCK of pixel positions [Q, 2] at ``PCK_2D_THRESHOLDS_PX``, scaled from 128 px to the image."""
    errors = torch.linalg.vector_norm((predicted - truth).double(), dim=-1)
    return pck(errors, PCK_2D_THRESHOLDS_PX, image_size / PCK_2D_REFERENCE_SIZE)


def pck_3d(predicted: Tensor, truth: Tensor, object_size: float | Tensor) -> dict[float, float]:
    """PCK of 3D positions [Q, 3] at ``PCK_3D_THRESHOLDS`` of the object size.

    ``object_size`` is one number, or a [Q] tensor (one size per query when pooling over objects).
    """
    errors = torch.linalg.vector_norm((predicted - truth).double(), dim=-1)
    if isinstance(object_size, Tensor):
        object_size = object_size.double()
    return pck(errors, PCK_3D_THRESHOLDS, object_size)


def transfer_labels(
    source_features: Tensor, source_labels: Tensor, target_features: Tensor, *, chunk: int = 4096
) -> Tensor:
    """Label [M] of each target feature [M, D]: that of its most similar source feature [N, D]."""
    if len(source_features) != len(source_labels):
        raise ValueError(f"{len(source_features)} source features but {len(source_labels)} labels")
    return source_labels[cosine_nearest(target_features, source_features, chunk=chunk)]


@dataclass
class PartIoU:
    """Part co-segmentation scores."""

    miou: float  # mean over the parts present in truth or prediction (nan if none)
    per_part: dict[int, float]  # part id -> IoU, for the parts in the mean
    confusion: Tensor  # [P, P] int64 counts, rows truth and columns prediction


def accumulate_confusion(
    confusion: Tensor, predicted: Tensor, truth: Tensor, *, ignore: int | None = 0
) -> Tensor:
    """``confusion`` [P, P] plus the counts of one pair's labels (any shape; the input is not modified).

    Entries whose truth is ``ignore`` (background) are skipped; labels must lie in 0..P-1.
    """
    if predicted.shape != truth.shape:
        raise ValueError(
            f"predicted {tuple(predicted.shape)} and truth {tuple(truth.shape)} differ"
        )
    n_parts = confusion.shape[0]
    predicted, truth = predicted.reshape(-1).long(), truth.reshape(-1).long()
    if ignore is not None:
        keep = truth != ignore
        predicted, truth = predicted[keep], truth[keep]
    for name, labels in (("predicted", predicted), ("truth", truth)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_parts):
            raise ValueError(f"{name} labels must lie in 0..{n_parts - 1}")
    return confusion + confusion_matrix(predicted, truth, n_parts).to(confusion.device)


def part_iou_from_confusion(confusion: Tensor, *, ignore: int | None = 0) -> PartIoU:
    """Part IoU from a (possibly pooled) confusion matrix [P, P]; part ``ignore`` is left out."""
    iou = class_iou(confusion)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    if ignore is not None:
        present[ignore] = False
    parts = torch.nonzero(present)[:, 0].tolist()
    return PartIoU(
        miou=float(iou[present].mean()) if parts else math.nan,
        per_part={part: float(iou[part]) for part in parts},
        confusion=confusion,
    )


def part_miou(predicted: Tensor, truth: Tensor, n_parts: int, *, ignore: int | None = 0) -> PartIoU:
    """Part co-segmentation IoU of one pair of label arrays (any shape) with parts 0..n_parts-1.

    Entries whose truth is ``ignore`` (background) are skipped and that part is left out of the
    mean. To pool many pairs, sum their matrices with ``accumulate_confusion`` and score the total
    with ``part_iou_from_confusion``.
    """
    empty = torch.zeros(n_parts, n_parts, dtype=torch.long, device=truth.device)
    confusion = accumulate_confusion(empty, predicted, truth, ignore=ignore)
    return part_iou_from_confusion(confusion, ignore=ignore)
