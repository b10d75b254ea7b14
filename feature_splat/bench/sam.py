"""``feature-splat bench sam``: SAM from any view, against SAM on the image itself.

A field is distilled from a *randomly initialised tiny* SAM (no weights can be downloaded here)
on a built-in world. On each held-out view, the same prompts (the image centre as a point, and a box
around the central half) go to SAM's mask decoder twice: with the field's rendered-and-decoded
features, and with the image encoder's own features of that view. Reported: the IoU between the two
masks (for each of SAM's three multimask outputs), and latency: rendering + decoding the field
versus running an image encoder, including a full-size ViT-B encoder at 1024 px with random
weights (its compute does not depend on the weights). Never run as a test.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from feature_splat.bench.config import SamBenchConfig
from feature_splat.bench.timing import median_seconds
from feature_splat.io import write_json
from feature_splat.io.checkpoints import write_checkpoint
from feature_splat.io.outputs import prepare_output


def run_sam_bench(config: SamBenchConfig, console: Console | None = None) -> dict[str, object]:
    """Distil a tiny SAM, compare masks and latency; writes ``results.json``."""
    from feature_splat.teachers.sam import SamTeacher
    from feature_splat.training.config import TrainConfig
    from feature_splat.training.run import train

    console = console or Console()
    out = prepare_output(config.out, "bench-sam")
    checkpoint = write_checkpoint(
        out / "sam_tiny_random.pth", SamTeacher.random("tiny").model.state_dict()
    )
    run_dir = out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    base = TrainConfig(data=config.world)
    train_config = replace(
        base, out=run_dir, teacher="sam", teacher_model="tiny", teacher_checkpoint=checkpoint,
        width=config.width, height=config.height, iterations=config.iterations,
        feature_dim=config.feature_dim,
    )  # fmt: skip
    result = train(train_config, console=console)
    with torch.no_grad():
        return _measure(config, result, run_dir, console)


def _measure(config: SamBenchConfig, result, run_dir: Path, console: Console) -> dict[str, object]:
    """Masks and latency of the distilled field against the encoder (see the module docstring)."""
    from feature_splat.prompts.sam import sam_masks
    from feature_splat.teachers import to_teacher_cells

    field, dataset, teacher = result.field, result.dataset, result.teacher
    size = (dataset.height, dataset.width)
    cells = teacher.geometry(*size).valid_cells
    point = torch.tensor([[dataset.width / 2, dataset.height / 2]])
    box = torch.tensor(
        [dataset.width / 4, dataset.height / 4, 3 * dataset.width / 4, 3 * dataset.height / 4]
    )

    def rendered_embedding(view: int) -> torch.Tensor:
        features = field.render(dataset.cameras[view]).features[0].permute(2, 0, 1)[None]
        return field.decode(to_teacher_cells(features, cells, None)[0].permute(1, 2, 0)).permute(
            2, 0, 1
        )

    ious: dict[str, list[float]] = {"point": [], "box": []}
    for view in dataset.test_indices:
        own = teacher.encode(dataset.images[view].permute(2, 0, 1)[None])[0]
        rendered = rendered_embedding(view)
        for kind, prompt in (
            ("point", {"points": point, "point_labels": torch.ones(1)}),
            ("box", {"box": box}),
        ):
            ours, _, _ = sam_masks(teacher, rendered, size, **prompt)
            theirs, _, _ = sam_masks(teacher, own, size, **prompt)
            for a, b in zip(ours, theirs, strict=True):
                ious[kind].append(float((a & b).sum()) / max(float((a | b).sum()), 1.0))
    view = dataset.test_indices[0]
    image = dataset.images[view].permute(2, 0, 1)[None]
    latency = {
        "render_and_decode_s": median_seconds(lambda: rendered_embedding(view)),
        "tiny_encoder_s": median_seconds(lambda: teacher.encode(image)),
    }
    if config.time_vit_b:
        from feature_splat.teachers.sam import SAM_CONFIGS, build_sam_model

        encoder = build_sam_model(SAM_CONFIGS["vit_b"]).image_encoder.eval()
        pixels = torch.randn(1, 3, 1024, 1024)
        latency["vit_b_encoder_1024px_s"] = median_seconds(lambda: encoder(pixels), repeats=2)
    report = {
        "benchmark": "sam",
        "command": "feature-splat bench sam",
        "teacher": "randomly initialised tiny SAM (no weights available offline)",
        "world": config.world,
        "mask_iou_point_mean": statistics.mean(ious["point"]),
        "mask_iou_box_mean": statistics.mean(ious["box"]),
        "mask_ious": ious,
        "latency": latency,
        "field_feature_cosine": result.metrics["feature_cosine"],
        "run_dir": str(run_dir),
    }
    write_json(config.out / "results.json", report)
    console.print(
        f"mask IoU rendered vs encoder features: point {report['mask_iou_point_mean']:.3f}, "
        f"box {report['mask_iou_box_mean']:.3f} (tiny random SAM); latency "
        + ", ".join(f"{k} {v:.4f}" for k, v in latency.items())
    )
    return report
