"""``feature-splat bench text --run RUN``: prompts that are not class names, against a world's truth.

Each prompt of a fixed list (or ``--prompts``) names the classes it means ("stuffed animal" means
``teddy bear``, "something to sit on" means ``chair`` and ``sofa``). For LERF relevancy (against
the canonical negatives) and for raw cosine, one threshold is calibrated on the *training* views
with the world's class names as prompts (the threshold of the best mean IoU); then, on the
held-out views, each prompt gets its 2D IoU against the true mask of its classes, and its 3D
selection (per-Gaussian score above the same threshold) precision and recall against the surface
labels. The text side alone is shown too: the class whose name embeds nearest the prompt. A prompt
*works* when its held-out 2D IoU is at least :data:`WORKS_IOU`. Never run as a test.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.bench.config import TextBenchConfig
from feature_splat.errors import ConfigError
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.run_folder import Run, is_world_name

WORKS_IOU = 0.5
SCORES = ("relevancy", "cosine")
THRESHOLD_GRIDS = {
    "relevancy": torch.arange(0.50, 0.991, 0.01),
    "cosine": torch.arange(0.00, 0.991, 0.01),
}
# What each prompt means, per built-in world: none of these is a class name, and only a few
# ("couch", "coffee cup") are in the random text space's hand-written synonym list.
PARAPHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "room": {
        "something to sit on": ("chair", "sofa"),
        "couch": ("sofa",),
        "coffee cup": ("mug",),
        "houseplant": ("plant",),
        "something to read": ("book",),
        "desk": ("table",),
        "a light": ("lamp",),
        "the ground": ("floor",),
    },
    "tabletop": {
        "something to sit on": ("chair",),
        "coffee cup": ("mug",),
        "houseplant": ("plant",),
        "something to read": ("book",),
        "desk": ("table",),
        "a light": ("lamp",),
        "a toy": ("ball",),
    },
    "tabletop-real": {
        "stuffed animal": ("teddy bear",),
        "bath toy": ("rubber duck",),
        "rabbit": ("bunny",),
        "football": ("soccer ball",),
        "a cup": ("mug",),
        "something to drink from": ("mug",),
        "toy bricks": ("lego brick",),
        "wooden blocks": ("jenga block",),
        "a platter": ("tray",),
        "furniture": ("table",),
    },
    "playroom-real": {
        "stuffed animal": ("teddy bear",),
        "bath toy": ("rubber duck",),
        "rabbit": ("bunny",),
        "football": ("soccer ball",),
        "a cup": ("mug",),
        "toy bricks": ("lego brick",),
        "wooden blocks": ("jenga block",),
        "droid": ("toy robot",),
        "furniture": ("table",),
        "the ground": ("floor",),
    },
}


def parse_prompts(entries: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``PROMPT=CLASS[+CLASS...]`` entries as {prompt: classes}."""
    parsed = {}
    for entry in entries:
        prompt, _, classes = entry.partition("=")
        parsed[prompt.strip()] = tuple(c.strip() for c in classes.split("+") if c.strip())
    return parsed


@torch.no_grad()
def run_text_bench(config: TextBenchConfig, console: Console | None = None) -> dict[str, object]:
    """Measure every prompt; prints a table and writes ``results.json`` to ``config.out``
    (default ``RUN/bench_text``)."""
    from feature_splat.eval.prompts import (
        best_threshold,
        class_masks,
        mask_iou,
        prompt_score_maps,
        selection_scores,
        surface_labels,
    )
    from feature_splat.prompts import gaussian_scores

    console = console or Console()
    run = Run(config.run)
    world = run.config.data
    if not is_world_name(world) or run.config.teacher != "synthetic":
        raise ConfigError(
            f"{config.run}: bench text needs a run of a built-in world with the synthetic teacher "
            f"(its truth is the world's labels); this one is {world} with {run.config.teacher}"
        )
    prompts = parse_prompts(config.prompts) if config.prompts else PARAPHRASES.get(world)
    if not prompts:
        raise ConfigError(f"--prompts: no default prompts for the world '{world}'; give some")
    dataset, teacher, field = run.dataset, run.prompt_teacher(), run.field
    present = sorted(set(dataset.labels.unique().tolist()) - {0})
    names = [dataset.class_names[k] for k in present]
    unknown = sorted({c for classes in prompts.values() for c in classes} - set(names))
    if unknown:
        raise ConfigError(f"--prompts: {unknown} are not classes of '{world}' ({', '.join(names)})")
    out = prepare_output(config.out or run.path / "bench_text", "bench-text")

    thresholds, calibration = {}, {}
    with console.status("calibrating thresholds on the training views"):
        train = dataset.train_indices
        truths = torch.stack([class_masks(dataset, [name], train) for name in names])
        for score in SCORES:
            maps = prompt_score_maps(field, dataset, teacher, names, train, score)
            thresholds[score], calibration[score] = best_threshold(
                maps, truths, THRESHOLD_GRIDS[score]
            )
            del maps

    rows = []
    test = dataset.test_indices
    labels = surface_labels(field, dataset)
    class_text = teacher.encode_text(names)
    everything = {**{name: (name,) for name in names}, **prompts}
    held_out = {  # [P, V, H, W] per score: each held-out view rendered once per score
        score: prompt_score_maps(field, dataset, teacher, list(everything), test, score)
        for score in SCORES
    }
    for p, (prompt, classes) in enumerate(everything.items()):
        truth = class_masks(dataset, list(classes), test)
        ids = [dataset.class_names.index(c) for c in classes]
        nearest = names[int((teacher.encode_text([prompt]) @ class_text.T).argmax())]
        row = {
            "prompt": prompt,
            "classes": list(classes),
            "kind": "class name" if prompt in names else "paraphrase",
            "nearest_class_name": nearest,
        }
        for score in SCORES:
            maps = held_out[score][p]
            selected = gaussian_scores(field, teacher, prompt, mode=score) > thresholds[score]
            picked = selection_scores(selected, labels, ids)
            row[f"iou_2d_{score}"] = mask_iou(maps, truth, thresholds[score])
            row[f"precision_3d_{score}"] = picked["precision"]
            row[f"recall_3d_{score}"] = picked["recall"]
        rows.append(row)
    report = {
        "benchmark": "text",
        "command": f"feature-splat bench text --run {config.run}",
        "world": world,
        "teacher": getattr(getattr(teacher, "real", teacher), "description", teacher.name),
        "thresholds": thresholds,
        "calibration_mean_iou_train_views": calibration,
        "works_iou": WORKS_IOU,
        "results": rows,
    }
    write_json(out / "results.json", report)
    _write_grid(out / "prompts.png", run, prompts, rows, thresholds["relevancy"])
    _print_table(console, report, rows)
    console.print(f"results: {out / 'results.json'} and {out / 'prompts.png'}")
    return report


def _write_grid(
    path: Path, run: Run, prompts: dict[str, tuple[str, ...]], rows: list[dict], threshold: float
) -> None:
    """One held-out view: its image and truth, then per paraphrase the pixels whose relevancy
    passes the calibrated threshold, over the image, captioned with the prompt and its IoU."""
    from feature_splat.io.files import write_png
    from feature_splat.prompts.text import relevancy_scores
    from feature_splat.visualize import captioned, label_rgb, overlay_rgb, tile_grid

    dataset, field, teacher = run.dataset, run.field, run.prompt_teacher()
    view = dataset.test_indices[len(dataset.test_indices) // 2]
    image = dataset.images[view]
    features = field.render(dataset.cameras[view]).features[0]
    iou = {r["prompt"]: r["iou_2d_relevancy"] for r in rows}
    tiles = [captioned(image, dataset.image_names[view]),
             captioned(label_rgb(dataset.labels[view]), "truth labels")]  # fmt: skip
    for prompt, classes in prompts.items():
        score = relevancy_scores(features, teacher, prompt, decoder=field.decoder)
        tint = overlay_rgb(image, score > threshold, (1.0, 0.2, 0.2))
        tiles.append(captioned(tint, f"{prompt} ({'+'.join(classes)}) {iou[prompt]:.2f}"))
    write_png(path, tile_grid(tiles, columns=4))


def _print_table(console: Console, report: dict[str, object], rows: list[dict]) -> None:
    thresholds = report["thresholds"]
    table = Table(
        title=f"text prompts vs the truth of '{report['world']}' (held-out views; thresholds "
        f"from the training views: relevancy {thresholds['relevancy']:.2f}, "
        f"cosine {thresholds['cosine']:.2f})"
    )
    for column in ("prompt", "means", "nearest name", "2D IoU rel", "2D IoU cos",
                   "3D P/R rel", "3D P/R cos"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("prompt", "means") else "right")
    for r in rows:
        table.add_row(
            r["prompt"],
            "+".join(r["classes"]),
            r["nearest_class_name"],
            *(f"{r[f'iou_2d_{s}']:.3f}" for s in SCORES),
            *(f"{r[f'precision_3d_{s}']:.2f}/{r[f'recall_3d_{s}']:.2f}" for s in SCORES),
        )
    console.print(table)
