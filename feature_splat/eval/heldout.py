"""Evaluate a distilled field on held-out views and draw what it sees.

Per held-out view: PSNR and SSIM of RGB; mean cosine between decoded rendered features and the
teacher's map at the teacher's resolution; text segmentation (argmax over a label set of cosine with
the teacher's text embeddings) scored against the ground-truth labels (synthetic worlds, full
resolution) and against the teacher's own argmax (Feature 3DGS's protocol: agreement with the
teacher, not truth). Figures from the synthetic oracle teacher are synthetic and named so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.errors import OutputError
from feature_splat.eval.metrics import (
    feature_cosine,
    psnr,
    segment_by_text,
    segmentation_scores,
    ssim,
)
from feature_splat.field import FeatureField
from feature_splat.io import write_json, write_png
from feature_splat.io.names import view_file_names
from feature_splat.teachers import Teacher, grid_stride, to_teacher_cells
from feature_splat.visualize import depth_rgb, label_rgb, pca_rgb


def label_set(dataset: Dataset) -> tuple[list[str], Tensor]:
    """Names of the classes present in the dataset's labels, and a map class id -> position."""
    if dataset.labels is None or not dataset.class_names:
        return [], torch.empty(0, dtype=torch.long)
    present = torch.unique(dataset.labels).tolist()
    lookup = torch.full((len(dataset.class_names),), -1, dtype=torch.long)
    for position, class_id in enumerate(present):
        lookup[class_id] = position
    return [dataset.class_names[c] for c in present], lookup


@torch.no_grad()
def evaluate_heldout(
    field: FeatureField,
    dataset: Dataset,
    teacher: Teacher,
    teacher_maps: Tensor,
    out_dir: Path | None = None,
) -> dict[str, object]:
    """Metrics averaged over ``dataset.test_indices``; PNG grids per view into ``out_dir/renders``."""
    names, lookup = label_set(dataset)
    text = teacher.encode_text(names) if names and teacher.language_aligned else None
    file_names = view_file_names(dataset.image_names)
    renders = None if out_dir is None else Path(out_dir) / "renders"
    if renders is not None and renders.is_symlink():
        raise OutputError(
            f"{renders}: is a symbolic link; renders are written only inside {out_dir}"
        )
    per_view = []
    pooled: dict[str, list[Tensor]] = {"truth": [], "pred": [], "teacher": [], "pred_cells": []}
    for view in dataset.test_indices:
        render = field.render(dataset.cameras[view])
        rgb = render.rgb[0].clamp(0, 1)
        target = dataset.images[view]
        teacher_cells = teacher_maps[view].float()
        cells = to_teacher_cells(
            render.features[0].permute(2, 0, 1)[None], teacher_cells.shape[:2], grid_stride(teacher)
        )[0]
        decoded_cells = field.decode(cells.permute(1, 2, 0))
        row: dict[str, object] = {
            "view": dataset.image_names[view],
            "psnr": psnr(rgb, target),
            "ssim": ssim(rgb, target),
            "feature_cosine": feature_cosine(decoded_cells, teacher_cells),
        }
        segmentation = None
        if text is not None:
            decoded = field.decode(render.features[0])
            segmentation = segment_by_text(decoded, text)
            truth = lookup[dataset.labels[view]]
            pred_cells = segment_by_text(decoded_cells, text)
            teacher_argmax = segment_by_text(teacher_cells, text)
            for key, value in zip(
                pooled, (truth, segmentation, teacher_argmax, pred_cells), strict=True
            ):
                pooled[key].append(value.reshape(-1))
            vs_truth = segmentation_scores(segmentation, truth, len(names))
            vs_teacher = segmentation_scores(pred_cells, teacher_argmax, len(names))
            row |= {
                "text_accuracy_vs_truth": vs_truth["accuracy"],
                "text_miou_vs_truth": vs_truth["miou"],
                "text_accuracy_vs_teacher": vs_teacher["accuracy"],
                "text_miou_vs_teacher": vs_teacher["miou"],
            }
        per_view.append(row)
        if renders is not None:
            panels = [
                target,
                rgb,
                depth_rgb(render.depth[0], render.alpha[0]),
                pca_rgb(render.features[0]),
            ]
            if segmentation is not None:
                panels.append(label_rgb(segmentation))
            write_png(
                renders / f"{file_names[view]}.png",
                torch.cat(panels, dim=1),
            )
    keys = [k for k in per_view[0] if k != "view"] if per_view else []
    summary: dict[str, object] = {
        k: sum(float(r[k]) for r in per_view) / len(per_view) for k in keys
    }
    if text is not None:
        # Segmentation scored over all held-out pixels at once (one confusion matrix, the usual
        # protocol): a class seen by a few pixels of one view does not weigh as much as a whole class.
        cat = {key: torch.cat(values) for key, values in pooled.items()}
        vs_truth = segmentation_scores(cat["pred"], cat["truth"], len(names))
        vs_teacher = segmentation_scores(cat["pred_cells"], cat["teacher"], len(names))
        summary |= {
            "text_accuracy_vs_truth": vs_truth["accuracy"],
            "text_miou_vs_truth": vs_truth["miou"],
            "text_accuracy_vs_teacher": vs_teacher["accuracy"],
            "text_miou_vs_teacher": vs_teacher["miou"],
            "per_class_iou_vs_truth": {names[k]: v for k, v in vs_truth["per_class_iou"].items()},
        }
    summary["labels"] = names
    summary["teacher"] = teacher.name
    summary["views"] = per_view
    return summary


def evaluate_run(run_dir: Path, allow_torchscript: bool = False) -> dict[str, object]:
    """Re-evaluate a run folder on its held-out views (its config names the data and the
    teacher): rewrites ``metrics.json`` (training figures kept) and ``renders/``."""
    from feature_splat.io.feature_cache import encode_dataset
    from feature_splat.run_folder import METRICS_NAME, Run

    run = Run(run_dir, allow_torchscript=allow_torchscript)
    config, dataset, teacher = run.config, run.dataset, run.teacher
    maps = encode_dataset(
        teacher, dataset.images, config.cache_dir, config.teacher_pca, dataset_root=dataset.root
    )
    metrics = evaluate_heldout(run.field, dataset, teacher, maps, out_dir=run.path)
    path = run.path / METRICS_NAME
    previous = _read_metrics(path)
    kept = {k: previous[k] for k in _TRAINING_FIGURES if k in previous}
    write_json(path, {**metrics, **kept})
    return {**metrics, **kept}


# What training measured (not re-measured by evaluation, so kept in metrics.json by it).
_TRAINING_FIGURES = ("gaussians", "iterations", "train_seconds", "seconds_per_iteration",
                     "total_seconds", "teacher_config_id")  # fmt: skip


def _read_metrics(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
