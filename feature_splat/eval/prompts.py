"""Prompts and edits measured against a synthetic world's truth (DESIGN.md, "Metrics").

- text: per-class IoU on held-out views of ``relevancy(class) > threshold`` (or cosine) against
  the ground-truth mask of that class;
- 3D: precision and recall of the Gaussians selected for a class (decoded-feature cosine above a
  threshold) against the class of the surface each Gaussian sits on (its centre projected into the
  training views where it lies on the true depth, majority label);
- edits: PSNR of the field with a class deleted against the world re-rendered without that class,
  inside the removed region and outside it; and of the class extracted against the world
  re-rendered with that class alone inside the class's region, and against the field's empty
  background outside it; on held-out views.
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.edit import delete, extract
from feature_splat.eval.metrics import psnr
from feature_splat.field import FeatureField
from feature_splat.prompts import gaussian_scores, relevancy, text_similarity
from feature_splat.teachers import Teacher


@torch.no_grad()
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
    class_id = dataset.class_names.index(class_name)
    measure = relevancy if score == "relevancy" else text_similarity
    hits = union = 0
    for view in dataset.test_indices:
        chosen = measure(field, dataset.cameras[view], teacher, class_name)[0] > threshold
        truth = dataset.labels[view] == class_id
        hits += int((chosen & truth).sum())
        union += int((chosen | truth).sum())
    return hits / max(union, 1)


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


def selection_scores(selection: Tensor, labels: Tensor, class_id: int) -> dict[str, float]:
    """Precision and recall of a Gaussian selection against surface labels (unlabelled ignored)."""
    known = labels >= 0
    truth = (labels == class_id) & known
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
