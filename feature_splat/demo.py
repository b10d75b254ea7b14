"""``feature-splat demo`` (``make demo``): the main job on the built-in default.

Distils the synthetic oracle teacher into a feature field of the ``room`` world, evaluates it on
held-out views, answers a text prompt and a point prompt on one of them, writes PNGs and JSON,
prints a summary.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.config import DemoConfig
from feature_splat.errors import DatasetError
from feature_splat.io import write_json, write_png
from feature_splat.io.names import safe_name
from feature_splat.io.outputs import prepare_output
from feature_splat.prompts import point_similarity, text_similarity
from feature_splat.teachers.text_space import resolve_text_space
from feature_splat.visualize import heat_rgb, overlay_rgb


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, object]:
    """Run the demo; returns the summary written to ``demo.json``."""
    from feature_splat.training.run import train

    console = console or Console()
    start = time.perf_counter()
    demo_dir = prepare_output(config.out, "demo")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = demo_dir / f"{safe_name(Path(config.train.data).name, 'data')}-{stamp}"
    train_config = dataclasses.replace(config.train, out=run_dir)
    teacher_label = (
        f"synthetic oracle (image side from the world's ground truth labels; text space "
        f"{resolve_text_space(train_config.oracle_text, train_config.teacher_dim)})"
        if train_config.teacher == "synthetic"
        else train_config.teacher
    )
    console.print(f"[bold]feature-splat demo[/]: '{train_config.data}', teacher {teacher_label}")
    result = train(train_config, console=console)
    metrics, dataset, teacher = result.metrics, result.dataset, result.teacher
    if not dataset.test_indices:
        raise DatasetError(f"{train_config.data}: the demo prompts a held-out view; it has none")

    view = dataset.test_indices[0]
    image = dataset.images[view]
    similarity = text_similarity(result.field, dataset.cameras[view], teacher, config.text)[0]
    mask = similarity > 0.5 * (similarity.max() + similarity.median())
    overlay = overlay_rgb(image, mask, (1.0, 0.2, 0.2))
    query_png = run_dir / f"query_{safe_name(config.text, 'text', max_length=40)}.png"
    write_png(query_png, torch.cat([image, heat_rgb(similarity), overlay], dim=1))

    x, y = config.point or (dataset.width // 2, dataset.height // 2)
    affinity = point_similarity(result.field, dataset.cameras[view], x, y)[0]
    chosen = affinity > 0.9
    marked = overlay_rgb(image, chosen, (0.2, 0.4, 1.0))
    marked[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = torch.tensor([1.0, 1.0, 0.0])
    point_png = run_dir / f"point_{x}_{y}.png"
    write_png(point_png, torch.cat([image, heat_rgb(affinity, 0.0, 1.0), marked], dim=1))
    point_class = (
        dataset.class_names[int(dataset.labels[view, y, x])] if dataset.labels is not None else None
    )

    summary = {
        "world": train_config.data,
        "teacher": teacher_label,
        "heldout_psnr": metrics["psnr"],
        "heldout_ssim": metrics["ssim"],
        "feature_cosine": metrics["feature_cosine"],
        "text_miou_vs_truth": metrics.get("text_miou_vs_truth"),
        "text_miou_vs_teacher": metrics.get("text_miou_vs_teacher"),
        "gaussians": metrics["gaussians"],
        "train_seconds": metrics["train_seconds"],
        "total_seconds": time.perf_counter() - start,
        "text_query": {"text": config.text, "view": dataset.image_names[view], "png": str(query_png),
                       "pixels_selected": int(mask.sum())},
        "point_query": {"xy": [x, y], "view": dataset.image_names[view], "png": str(point_png),
                        "true_class_at_point": point_class, "pixels_selected": int(chosen.sum())},
        "run_dir": str(run_dir),
    }  # fmt: skip
    write_json(run_dir / "demo.json", summary)
    table = Table(title=f"feature-splat demo ('{train_config.data}', teacher {teacher_label})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("heldout_psnr", "heldout_ssim", "feature_cosine", "text_miou_vs_truth",
                "text_miou_vs_teacher", "gaussians", "train_seconds", "total_seconds"):  # fmt: skip
        value = summary[key]
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    on = f" on a {point_class}" if point_class is not None else ""
    console.print(
        f"PNGs and metrics in {run_dir}  (text '{config.text}': {query_png.name}; "
        f"point ({x}, {y}){on}: {point_png.name})"
    )
    return summary
