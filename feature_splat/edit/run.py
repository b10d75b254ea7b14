"""``feature-splat query`` and ``feature-splat edit``: text prompts on a run folder, and edits of
what they select, written as new files (the run folder's own files are never rewritten)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from feature_splat.edit.ops import delete, extract, recolour
from feature_splat.errors import CheckpointError
from feature_splat.field import FeatureField
from feature_splat.io import write_json, write_png
from feature_splat.prompts import gaussian_scores, relevancy, segment_labels
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


@torch.no_grad()
def sam_prompt_run(
    run_dir: Path,
    views: list[int],
    points: list[tuple[int, int]],
    point_labels: list[int],
    box: tuple[float, float, float, float] | None,
    out: Path | None = None,
) -> dict[str, object]:
    """SAM point / box prompts on the rendered SAM features of a SAM-distilled run: the best of
    SAM's masks per view, as PNG overlays and ``sam.json``."""
    from feature_splat.prompts.sam import sam_masks
    from feature_splat.teachers import to_teacher_cells

    config, dataset, teacher, field = _load_run(run_dir)
    if config.teacher != "sam":
        raise CheckpointError(f"{run_dir}: point and box prompts need a field distilled from SAM")
    out = out or run_dir / "queries" / "sam"
    prompt_points = torch.tensor(points, dtype=torch.float32) if points else None
    prompt_labels = torch.tensor(point_labels or [1] * len(points)) if points else None
    prompt_box = torch.tensor(box, dtype=torch.float32) if box is not None else None
    rows = []
    for view in views or dataset.test_indices:
        render = field.render(dataset.cameras[view])
        cells = teacher.geometry(dataset.height, dataset.width).valid_cells
        pooled = to_teacher_cells(render.features[0].permute(2, 0, 1)[None], cells, None)[0]
        embedding = field.decode(pooled.permute(1, 2, 0)).permute(2, 0, 1)
        masks, scores, _ = sam_masks(
            teacher,
            embedding,
            (dataset.height, dataset.width),
            prompt_points,
            prompt_labels,
            prompt_box,
        )
        best = int(scores.argmax())
        image = dataset.images[view]
        overlay = torch.where(
            masks[best][..., None], 0.5 * image + 0.5 * torch.tensor([0.2, 0.5, 1.0]), 0.6 * image
        )
        name = dataset.image_names[view]
        write_png(out / f"{name}.png", torch.cat([image, overlay], dim=1))
        rows.append(
            {"view": name, "score": float(scores[best]), "mask_pixels": int(masks[best].sum())}
        )
    summary = {"points": points, "point_labels": point_labels, "box": box, "views": rows}
    write_json(out / "sam.json", summary)
    return summary


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
    text: str,
    op: str,
    out: Path,
    threshold: float = 0.5,
    mode: str = "cosine",
    rgb: tuple[float, float, float] = (0.1, 0.8, 0.1),
) -> dict[str, object]:
    """Select Gaussians whose ``mode`` score for ``text`` exceeds ``threshold``, apply ``op``
    (delete, extract or recolour) and write the edited field, renders and ``edit.json`` to ``out``."""
    if out.resolve() == run_dir.resolve() or (out.exists() and any(out.iterdir())):
        raise CheckpointError(
            f"{out}: edits go to a new, empty folder (never over a run or its input)"
        )
    _, dataset, teacher, field = _load_run(run_dir)
    selection = gaussian_scores(field, teacher, text, mode=mode) > threshold
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
        "op": op,
        "mode": mode,
        "threshold": threshold,
        "selected": int(selection.sum()),
        "gaussians_before": len(field.gaussians),
        "gaussians_after": len(edited.gaussians),
    }
    write_json(out / "edit.json", summary)
    return summary
