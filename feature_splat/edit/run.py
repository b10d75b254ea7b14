"""``feature-splat query`` and ``feature-splat edit``: text prompts on a run folder, and edits of
what they select, written as new files (the run folder's own files are never rewritten)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from feature_splat.edit.ops import delete, extract, recolour
from feature_splat.errors import CheckpointError
from feature_splat.field import FeatureField
from feature_splat.io import write_json, write_png
from feature_splat.prompts import gaussian_scores, relevancy, segment_labels, select_by_masks
from feature_splat.training.config import TrainConfig
from feature_splat.training.run import CONFIG_NAME, load_scene, make_teacher
from feature_splat.visualize import heat_rgb, label_rgb


def _load_run(run_dir: Path):
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not a run folder (no {CONFIG_NAME})")
    config = TrainConfig.from_dict(json.loads(path.read_text()))
    dataset = load_scene(config)
    return config, dataset, make_teacher(config, dataset), FeatureField.load(run_dir)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "query"


@dataclass
class SamPrompt:
    """SAM point (x, y; label 1 = foreground, 0 = background) and/or box prompts, in pixels."""

    points: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    point_labels: list[int] = dataclasses.field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


def _sam_best_mask(field_: FeatureField, dataset, teacher, view: int, prompt: SamPrompt):
    """SAM's best-scoring mask [H, W] and its score on the field's rendered features of ``view``."""
    from feature_splat.prompts.sam import sam_masks
    from feature_splat.teachers import to_teacher_cells

    render = field_.render(dataset.cameras[view])
    cells = teacher.geometry(dataset.height, dataset.width).valid_cells
    pooled = to_teacher_cells(render.features[0].permute(2, 0, 1)[None], cells, None)[0]
    embedding = field_.decode(pooled.permute(1, 2, 0)).permute(2, 0, 1)
    points = torch.tensor(prompt.points, dtype=torch.float32) if prompt.points else None
    labels = (
        torch.tensor(prompt.point_labels or [1] * len(prompt.points)) if prompt.points else None
    )
    box = torch.tensor(prompt.box, dtype=torch.float32) if prompt.box is not None else None
    masks, scores, _ = sam_masks(
        teacher, embedding, (dataset.height, dataset.width), points, labels, box
    )
    best = int(scores.argmax())
    return masks[best], float(scores[best])


@torch.no_grad()
def sam_prompt_run(
    run_dir: Path, views: list[int], prompt: SamPrompt, out: Path | None = None
) -> dict[str, object]:
    """SAM point / box prompts on the rendered SAM features of a SAM-distilled run: the best of
    SAM's masks per view, as PNG overlays and ``sam.json``."""
    config, dataset, teacher, field_ = _load_run(run_dir)
    _require_sam(config, run_dir)
    out = out or run_dir / "queries" / "sam"
    rows = []
    for view in views or dataset.test_indices:
        mask, score = _sam_best_mask(field_, dataset, teacher, view, prompt)
        image = dataset.images[view]
        overlay = torch.where(
            mask[..., None], 0.5 * image + 0.5 * torch.tensor([0.2, 0.5, 1.0]), 0.6 * image
        )
        name = dataset.image_names[view]
        write_png(out / f"{name}.png", torch.cat([image, overlay], dim=1))
        rows.append({"view": name, "score": score, "mask_pixels": int(mask.sum())})
    summary = {
        "points": prompt.points,
        "point_labels": prompt.point_labels,
        "box": prompt.box,
        "views": rows,
    }
    write_json(out / "sam.json", summary)
    return summary


def _require_sam(config: TrainConfig, run_dir: Path) -> None:
    if config.teacher != "sam":
        raise CheckpointError(f"{run_dir}: point and box prompts need a field distilled from SAM")


@torch.no_grad()
def query_run(
    run_dir: Path,
    text: str,
    labels: list[str],
    views: list[int],
    threshold: float = 0.5,
    out: Path | None = None,
) -> dict[str, object]:
    """Relevancy of ``text`` on dataset views (default: held-out) and per Gaussian; PNGs + JSON."""
    _, dataset, teacher, field = _load_run(run_dir)
    out = out or run_dir / "queries" / _slug(text)
    scores = gaussian_scores(field, teacher, text, mode="cosine")
    rows = []
    for view in views or dataset.test_indices:
        camera = dataset.cameras[view]
        rel = relevancy(field, camera, teacher, text)[0]
        image = dataset.images[view]
        chosen = rel > threshold
        overlay = torch.where(
            chosen[..., None], 0.5 * image + 0.5 * torch.tensor([1.0, 0.2, 0.2]), 0.6 * image
        )
        panels = [image, heat_rgb(rel, 0.0, 1.0), overlay]
        if labels:
            panels.append(label_rgb(segment_labels(field, camera, teacher, labels)[1][0]))
        name = dataset.image_names[view]
        write_png(out / f"{name}.png", torch.cat(panels, dim=1))
        rows.append(
            {
                "view": name,
                "max_relevancy": float(rel.max()),
                "fraction_selected": float(chosen.float().mean()),
            }
        )
    summary = {
        "text": text,
        "labels": labels,
        "threshold": threshold,
        "gaussians_selected": int((scores > threshold).sum()),  # cosine, as `edit` selects
        "gaussians": len(scores),
        "views": rows,
    }
    write_json(out / "query.json", summary)
    return summary


@torch.no_grad()
def edit_run(
    run_dir: Path,
    op: str,
    out: Path,
    text: str | None = None,
    sam_prompt: SamPrompt | None = None,
    sam_view: int = 0,
    threshold: float = 0.5,
    mode: str = "cosine",
    rgb: tuple[float, float, float] = (0.1, 0.8, 0.1),
) -> dict[str, object]:
    """Select Gaussians, apply ``op`` (delete, extract or recolour) and write the edited field,
    renders and ``edit.json`` to ``out``. The selection is either the Gaussians whose ``mode``
    score for ``text`` exceeds ``threshold``, or (SAM-distilled runs) SAM's mask for
    ``sam_prompt`` on dataset view ``sam_view`` lifted to 3D (:func:`select_by_masks`)."""
    if out.resolve() == run_dir.resolve() or (out.exists() and any(out.iterdir())):
        raise CheckpointError(
            f"{out}: edits go to a new, empty folder (never over a run or its input)"
        )
    config, dataset, teacher, field = _load_run(run_dir)
    if text is not None:
        selection = gaussian_scores(field, teacher, text, mode=mode) > threshold
    elif sam_prompt is not None:
        _require_sam(config, run_dir)
        mask, _ = _sam_best_mask(field, dataset, teacher, sam_view, sam_prompt)
        selection = select_by_masks(field, dataset.cameras[sam_view], mask[None])
    else:
        raise CheckpointError("edit: give a text or a SAM point / box prompt to select with")
    if op == "delete":
        edited = delete(field, selection)
    elif op == "extract":
        edited = extract(field, selection)
    elif op == "recolour":
        edited = recolour(field, selection, rgb)
    else:
        raise CheckpointError(f"op: expected delete, extract or recolour, got {op!r}")
    out.mkdir(parents=True, exist_ok=True)
    edited.save(out)
    shutil.copyfile(run_dir / CONFIG_NAME, out / CONFIG_NAME)
    for view in dataset.test_indices:
        before = field.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        after = edited.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        write_png(
            out / "renders" / f"{dataset.image_names[view]}.png", torch.cat([before, after], dim=1)
        )
    summary = {
        "source": str(run_dir),
        "text": text,
        "sam_prompt": None if sam_prompt is None else vars(sam_prompt) | {"view": sam_view},
        "op": op,
        "mode": mode,
        "threshold": threshold,
        "selected": int(selection.sum()),
        "gaussians_before": len(field.gaussians),
        "gaussians_after": len(edited.gaussians),
    }
    write_json(out / "edit.json", summary)
    return summary
