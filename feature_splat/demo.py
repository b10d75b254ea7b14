"""``feature-splat demo`` (``make demo``): the main job on the built-in default.

Distils the synthetic oracle teacher into a feature field of the ``room`` world, evaluates it on
held-out views, answers a text prompt and a point prompt on one of them, writes PNGs and JSON,
prints a summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.io import write_json, write_png
from feature_splat.prompts import point_similarity, text_similarity
from feature_splat.training.config import TrainConfig
from feature_splat.visualize import heat_rgb


@dataclass
class DemoConfig:
    """Train on a built-in world, evaluate, answer a text prompt (everything synthetic)."""

    out: Path = Path("outputs/demo")
    """A new run folder is made inside for every demo run."""
    text: str = "chair"
    point: tuple[int, int] | None = None
    """Pixel (x, y) of the first held-out view to prompt with (default: its centre)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(feature_dim=64))
    """Training options (``--train.out`` is replaced by the demo's run folder). F = 64: on the
    oracle teacher's maps, fewer channels squeeze out the small classes (docs/benchmarks.md)."""


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, object]:
    """Run the demo; returns the summary written to ``demo.json``."""
    from feature_splat.training.run import train

    console = console or Console()
    start = time.perf_counter()
    run_dir = config.out / f"{config.train.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_config = TrainConfig(**{**config.train.__dict__, "out": run_dir})
    console.print(
        f"[bold]feature-splat demo[/]: world '{train_config.data}', synthetic oracle teacher"
    )
    result = train(train_config, console=console)
    metrics, dataset, teacher = result.metrics, result.dataset, result.teacher

    view = dataset.test_indices[0]
    similarity = text_similarity(result.field, dataset.cameras[view], teacher, config.text)[0]
    mask = similarity > 0.5 * (similarity.max() + similarity.median())
    overlay = dataset.images[view] * 0.5 + 0.5 * torch.tensor([1.0, 0.2, 0.2]) * mask[..., None]
    overlay = torch.where(mask[..., None], overlay, dataset.images[view] * 0.6)
    query_png = run_dir / f"query_{config.text.replace(' ', '_')}.png"
    write_png(query_png, torch.cat([dataset.images[view], heat_rgb(similarity), overlay], dim=1))

    x, y = config.point or (dataset.width // 2, dataset.height // 2)
    affinity = point_similarity(result.field, dataset.cameras[view], x, y)[0]
    chosen = affinity > 0.9
    marked = torch.where(
        chosen[..., None],
        dataset.images[view] * 0.5 + 0.5 * torch.tensor([0.2, 0.4, 1.0]),
        dataset.images[view] * 0.6,
    )
    marked[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = torch.tensor([1.0, 1.0, 0.0])
    point_png = run_dir / f"point_{x}_{y}.png"
    write_png(
        point_png, torch.cat([dataset.images[view], heat_rgb(affinity, 0.0, 1.0), marked], dim=1)
    )
    point_class = (
        dataset.class_names[int(dataset.labels[view, y, x])] if dataset.labels is not None else None
    )

    summary = {
        "world": train_config.data,
        "teacher": "synthetic oracle (labels from the world's ground truth)",
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
    table = Table(title="feature-splat demo (synthetic world, synthetic oracle teacher)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("heldout_psnr", "heldout_ssim", "feature_cosine", "text_miou_vs_truth",
                "text_miou_vs_teacher", "gaussians", "train_seconds", "total_seconds"):  # fmt: skip
        value = summary[key]
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(
        f"PNGs and metrics in {run_dir}  (text '{config.text}': {query_png.name}; "
        f"point ({x}, {y}) on a {point_class}: {point_png.name})"
    )
    return summary
