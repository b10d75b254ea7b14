"""``feature-splat gen eval | predict | fit-fields``: evaluate, apply and feed the object-mode model.

(``gen train`` is :func:`~feature_splat.generalizable.training.run_training`.)
"""

from __future__ import annotations

import math
import time

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from feature_splat.cameras import Cameras, look_at
from feature_splat.data.dataset import Dataset
from feature_splat.data.synthetic.object_views import ObjectViews, load_objects
from feature_splat.errors import ConfigError
from feature_splat.eval.correspondence import (
    transfer_keypoints_2d,
    transfer_labels,
)
from feature_splat.generalizable.config import (
    FitFieldsConfig,
    GenEvalConfig,
    GenPredictConfig,
    TeacherConfig,
)
from feature_splat.generalizable.evaluation import (
    TASKS,
    FeatureSource,
    ModelFeatures,
    TeacherFeatures,
    evaluate_category,
    headline,
    keypoint_queries,
)
from feature_splat.generalizable.training import load_model, model_file, offline_field_dir
from feature_splat.io import atomic_write_bytes, write_json, write_png
from feature_splat.io.outputs import prepare_output
from feature_splat.visualize import depth_rgb, draw_points, label_rgb, pca_rgb


def run_eval(config: GenEvalConfig) -> dict:
    """Score the model, the optional baseline and the teacher; write eval.json and PNGs."""
    model_path = model_file(config.model)
    model, extra = load_model(model_path)
    train_config = extra.get("train_config", {})
    teacher = TeacherConfig(**train_config.get("teacher", {})).build()
    models = {"model": model}
    if config.baseline is not None:
        models["no distillation"] = load_model(model_file(config.baseline))[0]
    out = prepare_output(config.out or model_path.parent / "eval", "gen-eval")
    console = Console()
    results: dict = {"pairs": config.pairs, "input_views": config.input_views, "categories": {}}
    start = time.perf_counter()
    for category in config.data.categories:
        objects = load_objects(
            category, "test", n_instances=config.data.instances, n_views=config.data.views,
            size=config.data.image_size, seed=config.data.seed, cache_dir=config.data.cache_dir,
        )  # fmt: skip
        sources: list[FeatureSource] = [
            ModelFeatures(name, m, objects, config.input_views) for name, m in models.items()
        ]
        sources.append(TeacherFeatures(teacher, objects, config.input_views))
        results["categories"][category] = evaluate_category(
            objects, sources, input_views=config.input_views, pairs=config.pairs,
            surface_points=config.surface_points, seed=config.seed,
        )  # fmt: skip
        write_png(
            out / f"{category}_transfer.png", transfer_figure(objects, sources, config.input_views)
        )
        console.print(f"{category}: evaluated in {time.perf_counter() - start:.0f} s")
    results["seconds"] = time.perf_counter() - start
    write_json(out / "eval.json", results)
    methods = [source.name for source in sources]
    atomic_write_bytes(out / "eval.md", results_markdown(results, methods).encode())
    console.print(results_table(results, methods))
    console.print(f"eval.json and PNGs in {out}")
    return results


def results_table(results: dict, methods: list[str]) -> Table:
    """Headline numbers: PCK at 5 px (2D) / 0.05 of the size (3D), part mIoU; hidden = unseen by the source."""
    table = Table(title="object mode (PCK@5px / PCK@0.05 / part mIoU)")
    table.add_column("category")
    table.add_column("task")
    for method in methods:
        table.add_column(method, justify="right")
    for category, scores in results["categories"].items():
        for task in TASKS:
            for subset in ("all", "hidden"):
                if subset not in scores.get(task, {}).get(methods[0], {}):
                    continue
                row = [f"{headline(scores, task, m, subset):.3f}" for m in methods]
                table.add_row(category, task if subset == "all" else f"{task} (hidden)", *row)
    return table


def results_markdown(results: dict, methods: list[str]) -> str:
    """Every figure of a ``gen eval`` run as Markdown tables (one per category): PCK at the four
    thresholds, or part mIoU, for each task, subset and method."""
    lines = []
    for category, scores in results["categories"].items():
        lines += [f"### {category}", "", "| task | " + " | ".join(methods) + " |"]
        lines.append("| --- |" + " ---: |" * len(methods))
        for task in TASKS:
            for subset in ("all", "hidden"):
                if subset not in scores.get(task, {}).get(methods[0], {}):
                    continue
                cells = []
                for method in methods:
                    entry = scores[task][method][subset]
                    if "miou" in entry:
                        cells.append(f"{entry['miou']:.3f}")
                    else:
                        cells.append(" / ".join(f"{v:.2f}" for v in entry["pck"].values()))
                name = task if subset == "all" else f"{task} (hidden)"
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def transfer_figure(
    objects: list[ObjectViews], sources: list[FeatureSource], input_views: int
) -> torch.Tensor:
    """One row per method for the pair (instance 0 -> instance 1, first novel view): source image
    with its visible keypoints | target with true (green) and transferred (red) keypoints | true
    parts | transferred parts."""
    source, target = objects[0], objects[1]
    view = input_views
    rows = []
    seen = source.keypoints_visible[0] & target.keypoints_visible[view]
    mask_s, mask_t = source.masks()[0], target.masks()[view]
    truth_parts = label_rgb(target.parts[view]) * mask_t[..., None] + (~mask_t[..., None]).float()
    for method in sources:
        maps_s, maps_t = method.view_maps(0), method.view_maps(1)
        query = keypoint_queries(maps_s[0], source, seen)
        predicted = transfer_keypoints_2d(query, maps_t[view], mask_t)
        left = draw_points(source.rgb[0], source.keypoints_2d[0][seen], (0.1, 0.8, 0.1))
        middle = draw_points(target.rgb[view], target.keypoints_2d[view][seen], (0.1, 0.8, 0.1))
        middle = draw_points(middle, predicted, (0.9, 0.1, 0.1))
        labels = torch.zeros_like(target.parts[view])
        labels[mask_t] = transfer_labels(
            maps_s[0][mask_s], source.parts[0][mask_s], maps_t[view][mask_t]
        )
        parts = label_rgb(labels) * mask_t[..., None] + (~mask_t[..., None]).float()
        rows.append(torch.cat([left, middle, truth_parts, parts], dim=1))
    return torch.cat(rows, dim=0)


def run_predict(config: GenPredictConfig) -> dict:
    """Predict the field, save it, and write a PNG grid: inputs, then RGB / depth / PCA per orbit view."""
    model, _ = load_model(model_file(config.model))
    images, cameras = _input_views(config)
    out = prepare_output(config.out, "gen-predict", inputs=[config.data])
    start = time.perf_counter()
    with torch.no_grad():
        predicted = model(images[None], [cameras])[0]
    seconds = time.perf_counter() - start
    predicted.save(out / "field")
    novel = _orbit_like(cameras, config.orbit)
    with torch.no_grad():
        render = predicted.render(novel)
    # Row 1: the input views (white padding); rows 2-4: RGB, depth and feature PCA on the orbit.
    n_columns = max(len(novel), len(images))
    inputs = torch.ones(n_columns, *images.shape[1:])
    inputs[: len(images)] = images
    rows = [
        inputs,
        render.rgb,
        torch.stack([depth_rgb(d, a) for d, a in zip(render.depth, render.alpha, strict=True)]),
        torch.stack(
            [
                pca_rgb(f, a[..., 0] > 0.5)
                for f, a in zip(render.features, render.alpha, strict=True)
            ]
        ),
    ]
    rows = [torch.cat([*r, *torch.ones(n_columns - len(r), *r.shape[1:])], dim=1) for r in rows]
    write_png(out / "predict.png", torch.cat(rows, dim=0))
    summary = {
        "gaussians": len(predicted.gaussians),
        "predict_seconds": seconds,
        "input_views": list(config.views),
    }
    write_json(out / "predict.json", summary)
    Console().print(
        f"{summary['gaussians']:,} Gaussians predicted in {seconds * 1000:.0f} ms; "
        f"field and predict.png in {out}"
    )
    return summary


def _input_views(config: GenPredictConfig) -> tuple[torch.Tensor, Cameras]:
    """Input images [V, H, W, 3] and their cameras, from a dataset folder or a built-in instance."""
    views = list(config.views)
    if config.data is not None:
        from feature_splat.data.loading import load_dataset

        dataset: Dataset = load_dataset(config.data, allow_outside_paths=config.allow_outside_paths)
        bad = [v for v in views if not 0 <= v < len(dataset)]
        if bad:
            raise ConfigError(
                f"--views: indices {bad} outside 0..{len(dataset) - 1} ({config.data})"
            )
        return dataset.images[views], dataset.cameras[torch.tensor(views)]
    (instance,) = load_objects(
        config.category, config.split, n_instances=1, first=config.index,
        size=config.image_size, progress=False,
    )  # fmt: skip
    n_views = instance.rgb.shape[0]
    bad = [v for v in views if v >= n_views]
    if bad:
        raise ConfigError(f"--views: indices {bad} outside 0..{n_views - 1} (the instance's views)")
    return instance.rgb[views], instance.cameras[torch.tensor(views)]


def _orbit_like(cameras: Cameras, n_views: int) -> Cameras:
    """``n_views`` cameras on a circle around the origin at the input cameras' mean distance and
    height, with the first camera's intrinsics."""
    centers = cameras.centers
    radius = float(centers.norm(dim=-1).mean())
    height = float(centers[:, 2].mean())
    flat = math.sqrt(max(radius**2 - height**2, 1e-6))
    angles = torch.arange(n_views) * (2 * math.pi / n_views)
    eyes = torch.stack(
        [flat * torch.cos(angles), flat * torch.sin(angles), torch.full_like(angles, height)], 1
    )
    viewmats = look_at(eyes, torch.zeros(3))
    return Cameras(
        viewmats, cameras.Ks[:1].expand(n_views, 3, 3).clone(), cameras.width, cameras.height
    )


def run_fit_fields(config: FitFieldsConfig) -> None:
    """Train and save one per-scene field per training instance (skipping those already saved)."""
    from feature_splat.training.config import DensifyConfig, TrainConfig
    from feature_splat.training.trainer import Trainer

    teacher = config.teacher.build()
    objects = config.data.load("train")
    prepare_output(config.out, "offline-fields")
    for views in track(objects, description="fit-fields"):
        folder = offline_field_dir(config.out, views)
        if (folder / "decoder.pt").is_file():
            continue
        points, _, _ = views.surface_points()
        keep = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:2000]
        n = views.rgb.shape[0]
        dataset = Dataset(
            images=views.rgb, cameras=views.cameras, image_names=[f"view_{i:03d}" for i in range(n)],
            train_indices=list(range(n)), test_indices=[], points=points[keep],
            point_colors=torch.full((len(keep), 3), 0.5),
        )  # fmt: skip
        refine = DensifyConfig(
            refine_start=min(100, config.iterations // 4), refine_stop=int(config.iterations * 0.7),
            refine_every=50,
        )  # fmt: skip
        train_config = TrainConfig(
            data="objects", out=folder, iterations=config.iterations, feature_dim=config.feature_dim,
            feature_loss="cosine", sh_degree=0, init_points=len(keep), checkpoint_every=10**9,
            densify=refine,
        )  # fmt: skip
        maps = teacher.encode_views(views).permute(0, 2, 3, 1).half()
        trainer = Trainer(train_config, dataset, maps, teacher.dim, teacher.stride)
        trainer.train(show_progress=False)
        trainer.field().save(folder)
