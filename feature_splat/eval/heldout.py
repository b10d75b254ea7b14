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
from feature_splat.near_field import count_veils
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
    teacher: Teacher | None,
    teacher_maps: Tensor | None,
    out_dir: Path | None = None,
) -> dict[str, object]:
    """Metrics averaged over ``dataset.test_indices``; PNG grids per view into ``out_dir/renders``.

    Without ``teacher`` (an RGB-only field) only RGB is scored; without ``teacher_maps`` (a
    teacher whose features are neither cached nor computable here) the feature cosine and the
    agreement with the teacher are left out, and text segmentation is scored against the truth.
    """
    names, lookup = label_set(dataset)
    text = None
    if names and teacher is not None and teacher.language_aligned and field.gaussians.feature_dim:
        text = teacher.encode_text(names)
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
        row: dict[str, object] = {
            "view": dataset.image_names[view],
            "psnr": psnr(rgb, target),
            "ssim": ssim(rgb, target),
        }
        decoded_cells = teacher_cells = None
        if teacher is not None and teacher_maps is not None:
            teacher_cells = teacher_maps[view].float()
            cells = to_teacher_cells(
                render.features[0].permute(2, 0, 1)[None], teacher_cells.shape[:2],
                grid_stride(teacher),
            )[0]  # fmt: skip
            decoded_cells = field.decode(cells.permute(1, 2, 0))
            row["feature_cosine"] = feature_cosine(decoded_cells, teacher_cells)
        segmentation = None
        if text is not None:
            segmentation = segment_by_text(field.decode(render.features[0]), text)
            truth = lookup[dataset.labels[view]]
            pooled["truth"].append(truth.reshape(-1))
            pooled["pred"].append(segmentation.reshape(-1))
            row |= _text_scores(segmentation_scores(segmentation, truth, len(names)), "truth")
            if decoded_cells is not None:
                pred_cells = segment_by_text(decoded_cells, text)
                teacher_argmax = segment_by_text(teacher_cells, text)
                pooled["pred_cells"].append(pred_cells.reshape(-1))
                pooled["teacher"].append(teacher_argmax.reshape(-1))
                vs_teacher = segmentation_scores(pred_cells, teacher_argmax, len(names))
                row |= _text_scores(vs_teacher, "teacher")
        per_view.append(row)
        if renders is not None:
            panels = [target, rgb, depth_rgb(render.depth[0], render.alpha[0])]
            if field.gaussians.feature_dim:
                panels.append(pca_rgb(render.features[0]))
            if segmentation is not None:
                panels.append(label_rgb(segmentation))
            write_png(renders / f"{file_names[view]}.png", torch.cat(panels, dim=1))
    keys = [k for k in per_view[0] if k != "view"] if per_view else []
    summary: dict[str, object] = {
        k: sum(float(r[k]) for r in per_view) / len(per_view) for k in keys
    }
    if text is not None and per_view:
        # Segmentation scored over all held-out pixels at once (one confusion matrix, the usual
        # protocol): a class seen by a few pixels of one view does not weigh as much as a whole class.
        cat = {key: torch.cat(values) for key, values in pooled.items() if values}
        vs_truth = segmentation_scores(cat["pred"], cat["truth"], len(names))
        summary |= _text_scores(vs_truth, "truth")
        summary["per_class_iou_vs_truth"] = {
            names[k]: v for k, v in vs_truth["per_class_iou"].items()
        }
        if "teacher" in cat:
            vs_teacher = segmentation_scores(cat["pred_cells"], cat["teacher"], len(names))
            summary |= _text_scores(vs_teacher, "teacher")
    train = dataset.cameras[torch.tensor(dataset.train_indices, dtype=torch.long)]
    summary["near_field_veils"] = count_veils(field.gaussians, train) if len(train) else 0
    summary["labels"] = names if text is not None else []
    summary["teacher"] = "none" if teacher is None else teacher.name
    summary["views"] = per_view
    return summary


def _text_scores(scores: dict[str, object], against: str) -> dict[str, object]:
    """:func:`segmentation_scores` as ``text_accuracy_vs_<against>``, ``text_miou_vs_<against>``."""
    return {
        f"text_accuracy_vs_{against}": scores["accuracy"],
        f"text_miou_vs_{against}": scores["miou"],
    }


def evaluate_run(run_dir: Path, allow_torchscript: bool = False) -> dict[str, object]:
    """Re-evaluate a run folder on its held-out views (its config names the data and the
    teacher): rewrites ``metrics.json`` (training figures kept) and ``renders/``. Needs no
    teacher weights when the run's features are in its cache (feature metrics are skipped
    when neither the cache nor the teacher has them)."""
    from feature_splat.run_folder import METRICS_NAME, Run

    run = Run(run_dir, allow_torchscript=allow_torchscript)
    metrics = evaluate_heldout(
        run.field, run.dataset, run.teacher, run.teacher_maps(), out_dir=run.path
    )
    path = run.path / METRICS_NAME
    previous = _read_metrics(path)
    kept = {k: previous[k] for k in _TRAINING_FIGURES if k in previous}
    write_json(path, {**metrics, **kept})
    return {**metrics, **kept}


# What training measured (not re-measured by evaluation, so kept in metrics.json by it).
_TRAINING_FIGURES = ("gaussians", "iterations", "train_seconds", "seconds_per_iteration",
                     "total_seconds", "teacher_config_id", "imported_from")  # fmt: skip


def _read_metrics(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
