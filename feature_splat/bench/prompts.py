"""``feature-splat bench prompts RUN``: text prompts, 3D selection and deletion against the truth
of the built-in world a run was trained on (synthetic teacher; never run as a test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.io import write_json


@dataclass
class PromptBenchConfig:
    """Options of ``feature-splat bench prompts``."""

    run: Path
    """A run folder trained on a built-in world (room, tabletop, street)."""
    classes: tuple[str, ...] = ("chair", "table", "sofa")
    threshold: float = 0.5
    """Relevancy threshold for 2D masks and cosine threshold for 3D selection and deletion."""


@torch.no_grad()
def run_prompt_bench(
    config: PromptBenchConfig, console: Console | None = None
) -> dict[str, object]:
    """Measure every class; prints a table and writes ``RUN/bench_prompts.json``."""
    from feature_splat.data.synthetic import build_world
    from feature_splat.edit.run import _load_run
    from feature_splat.eval.prompts import (
        deletion_psnr,
        extraction_psnr,
        selection_scores,
        surface_labels,
        text_iou,
    )
    from feature_splat.prompts import gaussian_scores

    console = console or Console()
    train_config, dataset, teacher, field = _load_run(config.run)
    world = build_world(train_config.data, seed=train_config.seed)
    labels = surface_labels(field, dataset)
    rows = []
    for name in config.classes:
        class_id = dataset.class_names.index(name)
        test_cameras = dataset.cameras[torch.tensor(dataset.test_indices)]
        without = world.without([name]).render(test_cameras)["rgb"]
        truth = {view: without[i] for i, view in enumerate(dataset.test_indices)}
        alone = world.only([name]).render(test_cameras)
        truth_alone = {
            view: (alone["rgb"][i], alone["labels"][i])
            for i, view in enumerate(dataset.test_indices)
        }
        selection = gaussian_scores(field, teacher, name, mode="cosine") > config.threshold
        rows.append(
            {
                "class": name,
                "text_iou_2d": text_iou(field, dataset, teacher, name, config.threshold),
                "text_iou_2d_cosine": text_iou(
                    field, dataset, teacher, name, config.threshold, score="cosine"
                ),
                **selection_scores(selection, labels, class_id),
                **deletion_psnr(field, dataset, teacher, name, truth, config.threshold),
                "extract_psnr_inside_class": extraction_psnr(
                    field, dataset, teacher, name, truth_alone, config.threshold
                ),
            }
        )
    report = {
        "benchmark": "prompts",
        "command": f"feature-splat bench prompts {config.run}",
        "teacher": "synthetic oracle",
        "threshold": config.threshold,
        "gaussians_with_surface_label": int((labels >= 0).sum()),
        "gaussians": len(labels),
        "results": rows,
    }
    write_json(config.run / "bench_prompts.json", report)
    table = Table(
        title=f"prompts and deletion vs the world's truth ({config.run}, synthetic teacher)"
    )
    columns = ["class", "2D IoU relevancy", "2D IoU cosine", "3D precision", "3D recall"]
    for column in [*columns, "selected", "PSNR in", "PSNR out", "extract PSNR"]:
        table.add_column(column, justify="right")
    for r in rows:
        scores = [r["text_iou_2d"], r["text_iou_2d_cosine"], r["precision"], r["recall"]]
        table.add_row(
            r["class"],
            *(f"{x:.3f}" for x in scores),
            f"{r['selected']:,}",
            f"{r['psnr_inside_removed_region']:.2f}",
            f"{r['psnr_outside']:.2f}",
            f"{r['extract_psnr_inside_class']:.2f}",
        )
    console.print(table)
    return report
