"""Evaluation of the driving model on held-out drives, one frame in (DistillNeRF's protocol).

For each evaluated frame ``t`` of a test drive, every *method* gives a feature field:

- ``model``: the trained predictor, from frame ``t``'s six images;
- ``rgb-only``: the same network trained with no feature target (RGB and depth only);
- ``teacher lifted``: the model's own Gaussians (its predicted depth) carrying the 2D teacher's
  feature of their pixel's cell instead of distilled ones: the 2D teacher lifted by predicted depth,
  with no 3D distillation;
- ``offline``: the drive's per-scene field (``drive fit-fields --split test``), which saw every
  frame of the drive: an upper bound, not a one-frame method.

Each is rendered at frame ``t``'s cameras (``input``: reconstruction) and at frame ``t + 1``'s
(``novel``) and scored: PSNR, SSIM; depth AbsRel, RMSE and delta < 1.25 against the world's depth
(pixels with a surface within :data:`MAX_DEPTH`); feature cosine with the teacher at its cells; 2D
IoU of the text queries :data:`QUERIES` (label-set segmentation over the world's classes, the
decoded features against the class names' text embeddings); and zero-shot semantic occupancy on the
Occ3D grid around the ego at frame ``t`` (:mod:`feature_splat.eval.occupancy`): no occupancy label
is used in training. Inference time per frame is broken down into encoder, lifting, fusion and
rendering the six cameras.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import Tensor

from feature_splat.data.synthetic.drives import DriveViews
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import ConfigError
from feature_splat.eval.metrics import depth_metrics, feature_cosine, psnr, segment_by_text, ssim
from feature_splat.eval.occupancy import (
    FREE,
    OccupancyGrid,
    bev_image,
    camera_visibility,
    field_occupancy,
    occupancy_metrics,
    voxelize,
)
from feature_splat.field import FeatureField
from feature_splat.generalizable.driving.config import DriveEvalConfig, DriveTeacherConfig
from feature_splat.generalizable.driving.network import DrivingPredictor
from feature_splat.generalizable.driving.offline import (
    drive_teacher,
    load_offline_field,
    teacher_maps,
)
from feature_splat.generalizable.training import load_model, model_file
from feature_splat.io import write_json
from feature_splat.io.files import write_png
from feature_splat.io.outputs import prepare_output
from feature_splat.teachers.base import pool_to_cells
from feature_splat.visualize import captioned, depth_rgb, label_rgb, pca_rgb, tile_grid

QUERIES = ("car", "road", "building", "person", "tree")
MAX_DEPTH = 80.0  # metres: nuScenes' depth evaluation cap
IMAGE_METRICS = ("psnr", "ssim", "absrel", "rmse", "delta1", "feature_cosine")


def lifted_teacher_field(
    field: FeatureField, maps: Tensor, size: tuple[int, int], stride: int
) -> FeatureField:
    """A prediction ``field`` of one frame (Gaussian ``(v * H + y) * W + x`` from pixel (x, y) of
    camera v; ``size`` = (W, H)) with each Gaussian carrying the teacher's feature of its pixel's
    cell, from the maps [V, M, h, w], in place of its distilled one."""
    width, height = size
    m = maps.shape[1]
    rows, cols = torch.arange(height) // stride, torch.arange(width) // stride
    pixels = maps.float()[:, :, rows][:, :, :, cols]  # [V, M, H, W]
    features = pixels.permute(0, 2, 3, 1).reshape(-1, m)
    return replace(
        field,
        gaussians=field.gaussians.detach().with_features(features),
        decoder=SpeedUpDecoder(m, m, identity=True),
        background=torch.cat([field.background[:3].detach(), torch.zeros(m)]),
    )


def _score_views(
    field: FeatureField, views: DriveViews, frame: int, maps: Tensor, texts: Tensor | None,
    stride: int,
) -> dict[str, float | dict]:  # fmt: skip
    """Image, depth, feature and text-query scores of ``field`` at one frame's six cameras."""
    with torch.no_grad():
        render = field.render(views.cameras[frame])
    scores: dict = {
        "psnr": sum(psnr(r, t) for r, t in zip(render.rgb, views.rgb[frame], strict=True)) / 6,
        "ssim": sum(
            ssim(r.clamp(0, 1), t) for r, t in zip(render.rgb, views.rgb[frame], strict=True)
        )
        / 6,
        **depth_metrics(render.depth[..., 0], views.depth[frame], MAX_DEPTH),
    }
    if texts is None:
        return scores
    cells = pool_to_cells(render.features.permute(0, 3, 1, 2), stride).permute(0, 2, 3, 1)
    with torch.no_grad():
        scores["feature_cosine"] = feature_cosine(
            field.decode(cells), maps.float().permute(0, 2, 3, 1)
        )
        labels = segment_by_text(field.decode(render.features), texts)  # indices into the label set
    scores["labels"] = labels
    return scores


def _query_iou(labels: Tensor, truth: Tensor, label_set: list[int], names: list[str]) -> dict:
    """IoU of each query's class: pixels labelled it by the label-set segmentation vs the truth."""
    predicted = torch.tensor(label_set)[labels]
    out = {}
    for query in QUERIES:
        class_id = names.index(query)
        pred, true = predicted == class_id, truth == class_id
        union = int((pred | true).sum())
        out[query] = float((pred & true).sum()) / union if union else math.nan
    return out


def _timed(model: DrivingPredictor, views: DriveViews, frame: int) -> tuple[FeatureField, dict]:
    """The model's field of one frame and the seconds of each inference stage."""
    seconds = {}
    with torch.no_grad():
        start = time.perf_counter()
        raw = model.encode(views.rgb[frame])
        seconds["encoder"] = time.perf_counter() - start
        start = time.perf_counter()
        gaussians, _, _ = model.lift(raw, views.cameras[frame])
        seconds["lifting"] = time.perf_counter() - start
        start = time.perf_counter()
        field = model.fuse(gaussians, views.cameras[frame])
        seconds["fusion"] = time.perf_counter() - start
        start = time.perf_counter()
        field.render(views.cameras[frame])
        seconds["render (6 cameras)"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return field, seconds


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def run_eval(config: DriveEvalConfig) -> dict:
    """Score the model and the baselines on the test drives; write results.json and PNGs."""
    model_path = model_file(config.model)
    model, extra = load_model(model_path, DrivingPredictor)
    train = extra.get("train_config", {})
    teacher_config = DriveTeacherConfig(**train.get("teacher", {}))
    trained_size = (train.get("data", {}).get("width"), train.get("data", {}).get("height"))
    if trained_size != (config.data.width, config.data.height):
        raise ConfigError(
            f"--data.width/--data.height: the model was trained at {trained_size[0]}x"
            f"{trained_size[1]}, got {config.data.width}x{config.data.height}"
        )
    models = {"model": model}
    if config.rgb_only is not None:
        models["rgb-only"] = load_model(model_file(config.rgb_only), DrivingPredictor)[0]
    out = prepare_output(
        config.out or model_path.parent / "eval", "drive-eval",
        inputs=[config.offline_fields, config.rgb_only],
    )  # fmt: skip
    grid = OccupancyGrid().scaled(config.voxel_scale)
    stride = teacher_config.stride
    records: dict[str, list[dict]] = {}
    timings: list[dict] = []
    drives = config.data.load("test")
    for views in track(drives, description="drive eval"):
        world = views.drive.world
        names = world.class_names
        label_set = [0] + [names.index(c) for c in world.classes()]  # sky and the world's classes
        occupancy_ids = label_set[1:]
        teacher = drive_teacher(views, teacher_config)
        texts = teacher.encode_text([names[k] for k in label_set])
        maps = teacher_maps(views, teacher)
        offline = (
            None if config.offline_fields is None
            else load_offline_field(config.offline_fields, views.drive, teacher.dim)
        )  # fmt: skip
        frames = torch.linspace(0, views.n_frames - 2, config.frames_per_drive).round().long()
        figure_rows = []
        for frame in frames.tolist():
            ego = views.drive.ego_to_world(frame)
            truth = voxelize(world, grid, ego)
            visible = camera_visibility(world, grid, ego, views.cameras[frame])
            field, seconds = _timed(model, views, frame)
            timings.append(seconds)
            methods: dict[str, tuple[FeatureField, bool]] = {"model": (field, True)}
            if "rgb-only" in models:
                with torch.no_grad():
                    methods["rgb-only"] = (
                        models["rgb-only"](views.rgb[frame], views.cameras[frame]).field,
                        False,
                    )
            methods["teacher lifted"] = (
                lifted_teacher_field(field, maps[frame], (views.width, views.height), stride),
                True,
            )
            if offline is not None:
                methods["offline"] = (offline, True)
            occupancies = {}
            for name, (method_field, has_features) in methods.items():
                record: dict = {"drive": views.drive.seed, "frame": frame}
                method_texts = texts if has_features else None
                for kind, at in (("input", frame), ("novel", frame + 1)):
                    scores = _score_views(method_field, views, at, maps[at], method_texts, stride)
                    labels = scores.pop("labels", None)
                    if labels is not None:
                        scores["queries"] = _query_iou(labels, views.labels[at], label_set, names)
                    record[kind] = scores
                if has_features:
                    # A voxel's label does not depend on the threshold, only whether it counts:
                    # splat once at the lowest threshold, then keep the voxels above each one.
                    thresholds = (config.density_threshold, *config.density_sweep)
                    labels, density = field_occupancy(
                        method_field, grid, ego, texts[1:], occupancy_ids,
                        density_threshold=min(thresholds),
                    )  # fmt: skip
                    for threshold in thresholds:
                        occupied = torch.where(density > threshold, labels, FREE)
                        scores = occupancy_metrics(occupied, truth, visible, names, occupancy_ids)
                        if threshold == config.density_threshold:
                            record["occupancy"] = scores
                            occupancies[name] = occupied
                        else:
                            record.setdefault("occupancy_sweep", {})[str(threshold)] = {
                                k: scores[k] for k in ("miou", "geometric_iou")
                            }
                records.setdefault(name, []).append(record)
            figure_rows.append(
                _frame_figure(views, frame, field, texts, label_set, truth, visible, occupancies)
            )
        write_png(out / f"drive_{views.drive.seed:06d}.png", torch.cat(figure_rows, dim=0))
    results = {
        "drives": [v.drive.seed for v in drives], "size": [config.data.width, config.data.height],
        "grid": {"voxel_size": grid.voxel_size, "shape": list(grid.shape)},
        "methods": {name: summarise(items) for name, items in records.items()},
        "seconds_per_frame": {k: _mean([t[k] for t in timings[1:] or timings]) for k in timings[0]},
        "frames": records,
    }  # fmt: skip
    write_json(out / "results.json", results)
    Console().print(results_table(results))
    Console().print(f"results.json and a PNG per drive in {out}")
    return results


def summarise(records: list[dict]) -> dict:
    """Means over a method's frames: per view kind, image metrics and query IoUs; occupancy."""
    summary: dict = {}
    for kind in ("input", "novel"):
        scores = [r[kind] for r in records]
        summary[kind] = {k: _mean([s[k] for s in scores]) for k in IMAGE_METRICS if k in scores[0]}
        if "queries" in scores[0]:
            summary[kind]["queries"] = {
                q: _mean([s["queries"][q] for s in scores]) for q in QUERIES
            }
    if "occupancy" in records[0]:
        occupancy = [r["occupancy"] for r in records]
        keys = ("miou", "foreground_miou", "geometric_iou")
        summary["occupancy"] = {k: _mean([o[k] for o in occupancy]) for k in keys}
        per_class = {c for o in occupancy for c in o["per_class_iou"]}
        summary["occupancy"]["per_class"] = {
            c: _mean([o["per_class_iou"].get(c, math.nan) for o in occupancy])
            for c in sorted(per_class)
        }
        if "occupancy_sweep" in records[0]:
            summary["occupancy_sweep"] = {
                threshold: {k: _mean([r["occupancy_sweep"][threshold][k] for r in records])
                            for k in ("miou", "geometric_iou")}
                for threshold in records[0]["occupancy_sweep"]
            }  # fmt: skip
    return summary


def results_table(results: dict) -> Table:
    """The headline figures of every method."""
    table = Table(title="driving scenes: one frame in (test drives)")
    columns = (
        "psnr in",
        "psnr novel",
        "absrel novel",
        "delta1 novel",
        "cos novel",
        "query mIoU",
        "occ mIoU",
        "geo IoU",
    )
    table.add_column("method")
    for column in columns:
        table.add_column(column, justify="right")
    for name, s in results["methods"].items():
        novel = s["novel"]
        queries = novel.get("queries")
        occupancy = s.get("occupancy", {})
        values = (
            s["input"]["psnr"], novel["psnr"], novel["absrel"], novel["delta1"],
            novel.get("feature_cosine", math.nan),
            _mean(list(queries.values())) if queries else math.nan,
            occupancy.get("miou", math.nan), occupancy.get("geometric_iou", math.nan),
        )  # fmt: skip
        table.add_row(name, *(f"{v:.3f}" if not math.isnan(v) else "-" for v in values))
    return table


def _frame_figure(
    views: DriveViews, frame: int, field: FeatureField, texts: Tensor, label_set: list[int],
    truth: Tensor, visible: Tensor, occupancies: dict[str, Tensor],
) -> Tensor:  # fmt: skip
    """One frame: the six inputs; the model's RGB, depth, feature PCA and label-set renders at the
    next frame's cameras; bird's-eye views of the true and predicted occupancy."""
    with torch.no_grad():
        render = field.render(views.cameras[frame + 1])
        decoded = field.decode(render.features)
    labels = torch.tensor(label_set)[segment_by_text(decoded, texts)]
    rows = [
        [
            captioned(image, name)
            for image, name in zip(views.rgb[frame], ("inputs",) + ("",) * 5, strict=True)
        ],
        [
            captioned(image.clamp(0, 1), "novel rgb" if i == 0 else "")
            for i, image in enumerate(render.rgb)
        ],
        [
            captioned(depth_rgb(d, a), "depth" if i == 0 else "")
            for i, (d, a) in enumerate(zip(render.depth, render.alpha, strict=True))
        ],
        [
            captioned(pca_rgb(f), "feature PCA" if i == 0 else "")
            for i, f in enumerate(render.features)
        ],
        [
            captioned(label_rgb(lab), "text labels" if i == 0 else "")
            for i, lab in enumerate(labels)
        ],
    ]
    grid_rows = [torch.cat(row, dim=1) for row in rows]
    width = grid_rows[0].shape[1]
    # Bird's-eye views (forward up) cut to the lateral extent the cameras see, side by side.
    seen = visible.any(dim=(0, 2)).nonzero()[:, 0]
    lateral = slice(int(seen.min()), int(seen.max()) + 1) if len(seen) else slice(None)
    grids = {"truth": truth, **occupancies}
    bevs = [
        captioned(bev_image(torch.where(visible, labels, 0))[:, lateral], name)
        for name, labels in grids.items()
    ]
    columns = max(1, min(len(bevs), width // bevs[0].shape[1]))
    bev = tile_grid(bevs, columns)[:, :width]
    pad = torch.zeros(bev.shape[0], width - bev.shape[1], 3)
    return torch.cat([*grid_rows, torch.cat([bev, pad], dim=1)], dim=0)
