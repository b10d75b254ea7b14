"""Prompts and edits measured against a synthetic world's truth (DESIGN.md, "Metrics").

- text: IoU on held-out views of ``relevancy(prompt) > threshold`` (or cosine) against the
  ground-truth mask of the class (or classes) the prompt means; :func:`best_threshold` picks the
  threshold that serves a set of prompts best (calibrated on training views);
- 3D: precision and recall of the Gaussians selected for a class (decoded-feature cosine above a
  threshold) against the class of the surface each Gaussian sits on (its centre projected into the
  training views where it lies on the true depth, majority label);
- edits: PSNR of the field with a class deleted against the world re-rendered without that class,
  inside the removed region and outside it; and of the class extracted against the world
  re-rendered with that class alone inside the class's region, and against the field's empty
  background outside it; on held-out views.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.edit import delete, extract
from feature_splat.eval.metrics import psnr
from feature_splat.field import FeatureField
from feature_splat.options import check_choice
from feature_splat.prompts import gaussian_scores
from feature_splat.prompts.text import cosine_scores, relevancy_scores
from feature_splat.teachers import Teacher


@torch.no_grad()
def prompt_score_maps(
    field: FeatureField,
    dataset: Dataset,
    teacher: Teacher,
    prompts: list[str],
    views: list[int],
    score: str = "relevancy",
) -> Tensor:
    """Scores [P, V, H, W] of each prompt on each of ``views``: LERF ``relevancy`` against the
    canonical negatives, or raw ``cosine``. Each view is rendered once for all prompts."""
    check_choice(score, "score", ("relevancy", "cosine"))
    measure = relevancy_scores if score == "relevancy" else cosine_scores
    maps = torch.empty(len(prompts), len(views), dataset.height, dataset.width)
    for i, view in enumerate(views):
        features = field.render(dataset.cameras[view]).features[0]
        for p, prompt in enumerate(prompts):
            maps[p, i] = measure(features, teacher, prompt, decoder=field.decoder)
    return maps


def mask_iou(scores: Tensor, truth: Tensor, threshold: float) -> float:
    """IoU of ``scores > threshold`` against the boolean mask ``truth`` (same shape), pooled over
    every pixel: one intersection and one union."""
    chosen = scores > threshold
    return int((chosen & truth).sum()) / max(int((chosen | truth).sum()), 1)


def best_threshold(scores: Tensor, truths: Tensor, grid: Tensor) -> tuple[float, float]:
    """The threshold of ``grid`` with the highest mean :func:`mask_iou` over prompts (``scores``
    and boolean ``truths`` [P, ...]), and that mean."""
    means = [
        sum(mask_iou(s, t, float(g)) for s, t in zip(scores, truths, strict=True)) / len(scores)
        for g in grid
    ]
    best = max(range(len(grid)), key=means.__getitem__)
    return float(grid[best]), means[best]


def class_masks(dataset: Dataset, classes: list[str], views: list[int]) -> Tensor:
    """Ground-truth mask [V, H, W] of pixels labelled any of ``classes`` in ``views``."""
    ids = torch.tensor([dataset.class_names.index(name) for name in classes])
    return torch.isin(dataset.labels[views], ids)


def text_iou(
    field: FeatureField,
    dataset: Dataset,
    teacher: Teacher,
    class_name: str,
    threshold: float = 0.5,
    score: str = "relevancy",
) -> float:
    """IoU over all held-out pixels of ``score(class_name) > threshold`` vs the true mask;
    ``score`` is LERF ``relevancy`` or the raw ``cosine`` similarity."""
    views = dataset.test_indices
    maps = prompt_score_maps(field, dataset, teacher, [class_name], views, score)[0]
    return mask_iou(maps, class_masks(dataset, [class_name], views), threshold)


@torch.no_grad()
def surface_labels(field: FeatureField, dataset: Dataset, depth_tolerance: float = 0.03) -> Tensor:
    """Class id [N] of the surface each Gaussian sits on (-1 if never seen on a true surface)."""
    means = field.gaussians.means
    votes = torch.zeros(len(means), len(dataset.class_names), dtype=torch.long)
    for view in dataset.train_indices:
        cams = dataset.cameras[view]
        cam = means @ cams.viewmats[0, :3, :3].T + cams.viewmats[0, :3, 3]
        z = cam[:, 2]
        uv = cam @ cams.Ks[0].T
        u = torch.floor(uv[:, 0] / z.clamp_min(1e-6)).long()
        v = torch.floor(uv[:, 1] / z.clamp_min(1e-6)).long()
        inside = (z > 0) & (u >= 0) & (u < dataset.width) & (v >= 0) & (v < dataset.height)
        idx = inside.nonzero()[:, 0]
        true_depth = dataset.depths[view, v[idx], u[idx]]
        on_surface = (z[idx] - true_depth).abs() <= depth_tolerance * true_depth
        idx = idx[on_surface]
        votes[idx, dataset.labels[view, v[idx], u[idx]]] += 1
    return torch.where(votes.sum(1) > 0, votes.argmax(1), torch.full_like(votes[:, 0], -1))


def selection_scores(
    selection: Tensor, labels: Tensor, class_id: int | Collection[int]
) -> dict[str, float]:
    """Precision and recall of a Gaussian selection against surface labels of ``class_id`` (one
    class id, or several that together are the truth); unlabelled Gaussians are ignored."""
    known = labels >= 0
    ids = torch.tensor([class_id] if isinstance(class_id, int) else list(class_id))
    truth = torch.isin(labels, ids) & known
    chosen = selection & known
    true_positive = int((chosen & truth).sum())
    return {
        "precision": true_positive / max(int(chosen.sum()), 1),
        "recall": true_positive / max(int(truth.sum()), 1),
        "selected": int(selection.sum()),
    }


@torch.no_grad()
def deletion_psnr(
    field: FeatureField,
    dataset: Dataset,
    teacher: Teacher,
    class_name: str,
    truth_without: dict[int, Tensor],
    threshold: float = 0.5,
) -> dict[str, float]:
    """PSNR of the field with ``class_name`` deleted (cosine > threshold) against the world
    re-rendered without it (``truth_without``: view -> RGB [H, W, 3]), inside the region the class
    covered and outside it, over the held-out views."""
    class_id = dataset.class_names.index(class_name)
    edited = delete(field, gaussian_scores(field, teacher, class_name, mode="cosine") > threshold)
    inside, outside, truth_in, truth_out = [], [], [], []
    for view in dataset.test_indices:
        rendered = edited.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        region = dataset.labels[view] == class_id
        inside.append(rendered[region])
        outside.append(rendered[~region])
        truth_in.append(truth_without[view][region])
        truth_out.append(truth_without[view][~region])
    return {
        "psnr_inside_removed_region": psnr(torch.cat(inside), torch.cat(truth_in)),
        "psnr_outside": psnr(torch.cat(outside), torch.cat(truth_out)),
        "removed_pixels": sum(len(x) for x in inside),
    }


@torch.no_grad()
def extraction_psnr(
    field: FeatureField,
    dataset: Dataset,
    teacher: Teacher,
    class_name: str,
    truth_only: dict[int, tuple[Tensor, Tensor]],
    threshold: float = 0.5,
) -> dict[str, float]:
    """PSNR of the class extracted (cosine > threshold) over the held-out views: inside the class's
    pixels against the world re-rendered with the class alone (``truth_only``: view -> (RGB
    [H, W, 3], labels [H, W])): is all of it there? And outside them against the field's own
    background colour, which is what an empty render shows: is nothing else there? (Extracting
    everything scores well inside, badly outside.)"""
    class_id = dataset.class_names.index(class_name)
    alone = extract(field, gaussian_scores(field, teacher, class_name, mode="cosine") > threshold)
    background = field.background[:3].clamp(0, 1)
    inside, outside, truth_in = [], [], []
    for view in dataset.test_indices:
        rgb, labels = truth_only[view]
        region = labels == class_id
        rendered = alone.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        inside.append(rendered[region])
        outside.append(rendered[~region])
        truth_in.append(rgb[region])
    outside_pixels = torch.cat(outside)
    return {
        "extract_psnr_inside_class": psnr(torch.cat(inside), torch.cat(truth_in)),
        "extract_psnr_outside_class": psnr(outside_pixels, background.expand_as(outside_pixels)),
    }
