"""``feature-splat query`` and ``feature-splat edit``: prompts on a run folder, and edits of what
they select, written as new folders (the run folder's own files are never rewritten).

Output folders follow :func:`~feature_splat.io.outputs.prepare_output`; file names come from
:func:`~feature_splat.io.names.view_file_names` and prompts from
:func:`~feature_splat.io.names.prompt_folder_name`, never from raw input text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from feature_splat.config import SamPrompt
from feature_splat.edit.ops import EDIT_OPS, apply_edit
from feature_splat.errors import ConfigError
from feature_splat.io import write_json, write_png
from feature_splat.io.names import prompt_folder_name, view_file_names
from feature_splat.io.outputs import prepare_output
from feature_splat.options import check_choice, check_float, check_text
from feature_splat.prompts import gaussian_scores, relevancy, segment_labels, select_by_masks
from feature_splat.prompts.text import selection_threshold
from feature_splat.run_folder import EDIT_KIND, Run
from feature_splat.visualize import heat_rgb, label_rgb, overlay_rgb

QUERY_KIND = "query"


def _check_prompt(text: str, threshold: float | None) -> None:
    check_text(text, "text")
    if threshold is not None:
        check_float(threshold, "threshold", -1.0, 1.0)


def _sam_best_mask(run: Run, view: int, prompt: SamPrompt) -> tuple[torch.Tensor, float]:
    """SAM's best-scoring mask [H, W] and its score on the field's rendered features of ``view``."""
    from feature_splat.prompts.sam import rendered_sam_masks

    points = torch.tensor(prompt.points, dtype=torch.float32) if prompt.points else None
    labels = torch.tensor(prompt.labels) if prompt.points else None
    box = torch.tensor(prompt.box, dtype=torch.float32) if prompt.box is not None else None
    masks, scores = rendered_sam_masks(
        run.sam_teacher(), run.field, run.dataset.cameras[view], points, labels, box
    )
    best = int(scores.argmax())
    return masks[best], float(scores[best])


@torch.no_grad()
def sam_prompt_run(
    run_dir: Path,
    views: list[int],
    prompt: SamPrompt,
    out: Path | None = None,
    allow_torchscript: bool = False,
) -> dict[str, object]:
    """SAM point / box prompts on the rendered SAM features of a SAM-distilled run: the best of
    SAM's masks per view, as PNG overlays and ``sam.json`` in ``out`` (default RUN/queries/sam)."""
    run = Run(run_dir, allow_torchscript=allow_torchscript)
    dataset = run.dataset
    chosen = run.views(views)
    out = prepare_output(out or run.path / "queries" / "sam", QUERY_KIND, inputs=[dataset.root])
    file_names = view_file_names(dataset.image_names)
    rows = []
    for view in chosen:
        mask, score = _sam_best_mask(run, view, prompt)
        image = dataset.images[view]
        overlay = overlay_rgb(image, mask, (0.2, 0.5, 1.0))
        write_png(out / f"{file_names[view]}.png", torch.cat([image, overlay], dim=1))
        rows.append(
            {"view": dataset.image_names[view], "score": score, "mask_pixels": int(mask.sum())}
        )
    summary = {
        "points": prompt.points,
        "point_labels": prompt.labels if prompt.points else [],
        "box": prompt.box,
        "views": rows,
        "folder": str(out),
    }
    write_json(out / "sam.json", summary)
    return summary


@torch.no_grad()
def query_run(
    run_dir: Path,
    text: str,
    labels: list[str],
    views: list[int],
    threshold: float | None = None,
    out: Path | None = None,
    allow_torchscript: bool = False,
) -> dict[str, object]:
    """Relevancy of ``text`` on dataset views (default: held-out) and per Gaussian; PNGs and
    ``query.json`` in ``out`` (default RUN/queries/<prompt folder name>). Pixels count as selected
    above ``threshold`` in relevancy, Gaussians in cosine (default: the teacher's own threshold
    of each, :func:`selection_threshold`)."""
    _check_prompt(text, threshold)
    for label in labels:
        check_text(label, "labels")
    run = Run(run_dir, allow_torchscript=allow_torchscript)
    dataset, teacher, field = run.dataset, run.prompt_teacher(), run.field
    chosen = run.views(views)
    default = run.path / "queries" / prompt_folder_name(text)
    out = prepare_output(out or default, QUERY_KIND, inputs=[dataset.root])
    scores = gaussian_scores(field, teacher, text, mode="cosine")
    thresholds = {
        mode: selection_threshold(teacher, mode) if threshold is None else threshold
        for mode in ("relevancy", "cosine")
    }
    file_names = view_file_names(dataset.image_names)
    rows = []
    for view in chosen:
        camera = dataset.cameras[view]
        rel = relevancy(field, camera, teacher, text)[0]
        image = dataset.images[view]
        selected = rel > thresholds["relevancy"]
        panels = [image, heat_rgb(rel, 0.0, 1.0), overlay_rgb(image, selected, (1.0, 0.2, 0.2))]
        if labels:
            panels.append(label_rgb(segment_labels(field, camera, teacher, labels)[1][0]))
        write_png(out / f"{file_names[view]}.png", torch.cat(panels, dim=1))
        rows.append(
            {
                "view": dataset.image_names[view],
                "max_relevancy": float(rel.max()),
                "fraction_selected": float(selected.float().mean()),
            }
        )
    summary = {
        "text": text,
        "labels": labels,
        "thresholds": thresholds,
        "gaussians_selected": int((scores > thresholds["cosine"]).sum()),  # as `edit` selects
        "gaussians": len(scores),
        "views": rows,
        "folder": str(out),
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
    threshold: float | None = None,
    mode: str = "cosine",
    rgb: tuple[float, float, float] = (0.1, 0.8, 0.1),
    allow_torchscript: bool = False,
) -> dict[str, object]:
    """Select Gaussians, apply ``op`` (delete, extract or recolour) and write the edited field,
    renders and ``edit.json`` to ``out``. The selection is either the Gaussians whose ``mode``
    score for ``text`` exceeds ``threshold`` (default: the teacher's,
    :func:`selection_threshold`), or (SAM-distilled runs) SAM's mask for ``sam_prompt`` on dataset
    view ``sam_view`` lifted to 3D (:func:`select_by_masks`). An empty
    selection is a valid result: nothing is deleted, extracted or recoloured."""
    check_choice(op, "op", EDIT_OPS)
    check_choice(mode, "mode", ("relevancy", "cosine"))
    for value in rgb:
        check_float(value, "color", 0.0, 1.0)
    if (text is None) == (sam_prompt is None):
        raise ConfigError("edit: give either --text or a SAM --point / --box prompt")
    if text is not None:
        _check_prompt(text, threshold)
    run = Run(run_dir, allow_torchscript=allow_torchscript)
    dataset, field = run.dataset, run.field
    if sam_prompt is not None:
        (sam_view,) = run.views([sam_view])
    else:
        teacher = run.prompt_teacher()  # refused before any folder is made: RGB-only runs
    out = prepare_output(out, EDIT_KIND, inputs=[dataset.root, run.path])  # fails early
    if text is not None:
        if threshold is None:
            threshold = selection_threshold(teacher, mode)
        selection = gaussian_scores(field, teacher, text, mode=mode) > threshold
    else:
        mask, _ = _sam_best_mask(run, sam_view, sam_prompt)
        selection = select_by_masks(field, dataset.cameras[sam_view], mask[None])
    edited = apply_edit(field, op, selection, rgb)
    run.save_field_as(edited, out)  # the edited field renders and answers as the run did
    file_names = view_file_names(dataset.image_names)
    for view in dataset.test_indices:
        before = field.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        after = edited.render(dataset.cameras[view]).rgb[0].clamp(0, 1)
        write_png(out / "renders" / f"{file_names[view]}.png", torch.cat([before, after], dim=1))
    summary = {
        "source": str(run.path.resolve()),
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
