"""``feature-splat bench prompts RUN``: text prompts, 3D selection and deletion against the truth
of the built-in world a run was trained on (synthetic teacher; never run as a test)."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.bench.config import PromptBenchConfig
from feature_splat.errors import ConfigError
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.run_folder import Run, is_world_name


@torch.no_grad()
def run_prompt_bench(
    config: PromptBenchConfig, console: Console | None = None
) -> dict[str, object]:
    """Measure every class; prints a table and writes ``results.json`` to ``config.out``
    (default ``RUN/bench_prompts``)."""
    from feature_splat.data.synthetic import build_world
    from feature_splat.eval.prompts import (
        deletion_psnr,
        extraction_psnr,
        selection_scores,
        surface_labels,
        text_iou,
    )
    from feature_splat.prompts import gaussian_scores
    from feature_splat.prompts.text import selection_threshold

    console = console or Console()
    run = Run(config.run)
    if not is_world_name(run.config.data):
        raise ConfigError(
            f"{config.run}: trained on {run.config.data}; bench prompts needs a run of a built-in "
            f"world (its truth is re-rendered)"
        )
    world = build_world(run.config.data, seed=run.config.world_seed)
    unknown = [name for name in config.classes if name not in world.classes()]
    if unknown:
        raise ConfigError(
            f"--classes: {unknown} are not in the world '{run.config.data}' "
            f"({', '.join(world.classes())})"
        )
    out = prepare_output(config.out or run.path / "bench_prompts", "bench-prompts")
    dataset, teacher, field = run.dataset, run.teacher, run.field
    labels = surface_labels(field, dataset)
    given = config.threshold
    relevancy_at = selection_threshold(teacher, "relevancy") if given is None else given
    cosine_at = selection_threshold(teacher, "cosine") if given is None else given
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
        selection = gaussian_scores(field, teacher, name, mode="cosine") > cosine_at
        rows.append(
            {
                "class": name,
                "text_iou_2d": text_iou(field, dataset, teacher, name, relevancy_at),
                "text_iou_2d_cosine": text_iou(
                    field, dataset, teacher, name, cosine_at, score="cosine"
                ),
                **selection_scores(selection, labels, class_id),
                **deletion_psnr(field, dataset, teacher, name, truth, cosine_at),
                **extraction_psnr(field, dataset, teacher, name, truth_alone, cosine_at),
            }
        )
    report = {
        "benchmark": "prompts",
        "command": f"feature-splat bench prompts {config.run}",
        "teacher": teacher.name,
        "oracle_text": run.config.oracle_text if teacher.name == "synthetic" else None,
        "thresholds": {"relevancy": relevancy_at, "cosine": cosine_at},
        "gaussians_with_surface_label": int((labels >= 0).sum()),
        "gaussians": len(labels),
        "results": rows,
    }
    write_json(out / "results.json", report)
    table = Table(
        title=f"prompts and deletion vs the world's truth ({config.run}, synthetic teacher)"
    )
    columns = ["class", "2D IoU relevancy", "2D IoU cosine", "3D precision", "3D recall"]
    for column in [*columns, "selected", "PSNR in", "PSNR out", "extract in", "extract out"]:
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
            f"{r['extract_psnr_outside_class']:.2f}",
        )
    console.print(table)
    console.print(f"results: {out / 'results.json'}")
    return report
