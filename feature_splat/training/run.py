"""A whole training run: data, teacher features, training, evaluation, and the run folder.

Run folder layout::

    point_cloud.ply   3DGS fields + f_feat_0..F-1 (standard viewers show the RGB part)
    decoder.pt        speed-up decoder weights, background, SH degree
    config.json       the TrainConfig
    metrics.json      held-out metrics (and the teacher that produced the targets)
    renders/*.png     per held-out view: truth | RGB | depth | feature PCA | text segmentation
    checkpoint.pt     full training state (resume with --resume)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.errors import CheckpointError, DatasetError
from feature_splat.eval.heldout import evaluate_heldout
from feature_splat.field import FeatureField
from feature_splat.io import write_json, write_png
from feature_splat.io.feature_cache import FeatureCache
from feature_splat.teachers import Teacher, grid_stride
from feature_splat.teachers.factory import build_teacher
from feature_splat.training.config import TrainConfig
from feature_splat.training.trainer import Trainer
from feature_splat.visualize import depth_rgb, pca_rgb

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"


def load_scene(config: TrainConfig) -> Dataset:
    """The dataset named by ``config.data``: a built-in world or a dataset folder."""
    from feature_splat.data.loading import load_dataset
    from feature_splat.data.synthetic import WORLD_NAMES, load_world

    if config.data in WORLD_NAMES:
        return load_world(config.data, width=config.width, height=config.height, seed=config.seed)
    return load_dataset(config.data)


def make_teacher(config: TrainConfig, dataset: Dataset) -> Teacher:
    """The teacher named by ``config.teacher``, set up for ``dataset``."""
    return build_teacher(
        config.teacher,
        dataset,
        checkpoint=config.teacher_checkpoint,
        model=config.teacher_model,
        dim=config.teacher_dim,
        stride=config.teacher_stride,
    )


def encode_views(
    teacher: Teacher, dataset: Dataset, cache_dir: Path | None = None, pca_dim: int | None = None
) -> Tensor:
    """The teacher's features of every view, [V, h, w, M] in float16 (through the on-disk cache
    when ``cache_dir`` is given)."""
    if cache_dir is not None:
        return FeatureCache(cache_dir, teacher, pca_dim).encode(dataset.images).to(torch.float16)
    if pca_dim is not None:
        raise DatasetError("teacher_pca: PCA storage is a cache option; give a cache_dir too")
    maps = []
    for start in track(range(0, len(dataset), 8), description="teacher", transient=True):
        images = dataset.images[start : start + 8].permute(0, 3, 1, 2)
        maps.append(teacher.encode(images).permute(0, 2, 3, 1).to(torch.float16))
    return torch.cat(maps)


@dataclass
class RunResult:
    """What a training run produced (everything is also written to the run folder)."""

    metrics: dict[str, object]
    field: FeatureField
    dataset: Dataset
    teacher: Teacher


def train(config: TrainConfig, console: Console | None = None) -> RunResult:
    """Train, evaluate and write the run folder."""
    console = console or Console()
    out = config.out
    if not config.resume and (out / CONFIG_NAME).exists():
        raise CheckpointError(
            f"{out}: already holds a run; choose another --out, or pass --resume to continue it"
        )
    start = time.perf_counter()
    dataset = load_scene(config)
    teacher = make_teacher(config, dataset)
    teacher_maps = encode_views(teacher, dataset, config.cache_dir, config.teacher_pca)
    trainer = Trainer(config, dataset, teacher_maps, teacher.dim, grid_stride(teacher))
    if config.resume:
        trainer.load_checkpoint()
        console.print(f"resumed at step {trainer.step}")
    write_json(out / CONFIG_NAME, config.to_dict())
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    field = trainer.field()
    field.save(out)
    trainer.save_checkpoint()
    metrics = evaluate_heldout(field, dataset, teacher, teacher_maps, out_dir=out)
    metrics |= {
        "gaussians": len(field.gaussians),
        "iterations": config.iterations,
        "train_seconds": train_seconds,
        "seconds_per_iteration": train_seconds / max(config.iterations, 1),
        "total_seconds": time.perf_counter() - start,
        "teacher_config_id": teacher.config_id,
    }
    write_json(out / METRICS_NAME, metrics)
    return RunResult(metrics, field, dataset, teacher)


def evaluate_run(run_dir: Path) -> dict[str, object]:
    """Re-evaluate a run folder (its config names the data and the teacher)."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not a run folder (no {CONFIG_NAME})")
    try:
        config = TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: unreadable run config ({err})") from err
    dataset = load_scene(config)
    teacher = make_teacher(config, dataset)
    field = FeatureField.load(run_dir)
    metrics = evaluate_heldout(
        field,
        dataset,
        teacher,
        encode_views(teacher, dataset, config.cache_dir, config.teacher_pca),
        out_dir=run_dir,
    )
    write_json(run_dir / METRICS_NAME, metrics)
    return metrics


@torch.no_grad()
def render_run(
    run_dir: Path,
    views: list[int],
    orbit: int = 0,
    look_at: tuple[float, ...] | None = None,
    out: Path | None = None,
) -> Path:
    """Render a run's field at dataset views (default: held-out), ``orbit`` views around the scene,
    or one camera at ``look_at`` = (eye, target) with the dataset's intrinsics.

    Writes one PNG per view: RGB | depth | feature PCA.
    """
    from feature_splat.cameras import Cameras
    from feature_splat.cameras import look_at as look_at_matrix

    config = TrainConfig.from_dict(json.loads((run_dir / CONFIG_NAME).read_text()))
    field = FeatureField.load(run_dir)
    out = out or run_dir / "rendered"
    if orbit > 0:
        dataset_cams = load_scene(config).cameras
        target = field.gaussians.means.median(dim=0).values
        centers = dataset_cams.centers
        radius = float((centers - target).norm(dim=-1).mean())
        height = float((centers[:, 2] - target[2]).mean())
        angles = torch.arange(orbit) * (2 * torch.pi / orbit)
        eyes = torch.stack(
            [target[0] + radius * torch.cos(angles), target[1] + radius * torch.sin(angles),
             torch.full_like(angles, float(target[2]) + height)], dim=-1,
        )  # fmt: skip
        K = dataset_cams.Ks[:1].expand(orbit, 3, 3)
        cameras = Cameras(look_at_matrix(eyes, target), K, dataset_cams.width, dataset_cams.height)
        names = [f"orbit_{i:03d}" for i in range(orbit)]
    elif look_at is not None:
        dataset_cams = load_scene(config).cameras
        eye, target = torch.tensor(look_at[:3]), torch.tensor(look_at[3:])
        viewmat = look_at_matrix(eye, target)
        cameras = Cameras(viewmat, dataset_cams.Ks[:1], dataset_cams.width, dataset_cams.height)
        names = ["look_at"]
    else:
        dataset = load_scene(config)
        chosen = views or dataset.test_indices
        bad = [v for v in chosen if not 0 <= v < len(dataset)]
        if bad:
            raise DatasetError(f"--views: indices {bad} outside 0..{len(dataset) - 1}")
        cameras = dataset.cameras[torch.tensor(chosen)]
        names = [dataset.image_names[v] for v in chosen]
    for i, name in enumerate(names):
        render = field.render(cameras[i])
        panels = [
            render.rgb[0].clamp(0, 1),
            depth_rgb(render.depth[0], render.alpha[0]),
            pca_rgb(render.features[0]),
        ]
        write_png(out / f"{name}.png", torch.cat(panels, dim=1))
    return out
