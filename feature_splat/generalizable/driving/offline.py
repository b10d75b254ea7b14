"""Offline per-scene fields of whole drives: what the driving model distils (DistillNeRF's recipe).

Each drive gets one field trained by the per-scene trainer on every frame's camera images (so it
has seen far more of the street than any single frame), started from points of the drive's depth
maps (a real drive's LiDAR sweeps). Its renders give the driving model denser depth targets, its
decoded features a second feature target, and both exist at virtual cameras no real camera
occupies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import track

from feature_splat.data.synthetic.drives import Drive, DriveViews
from feature_splat.errors import DatasetError
from feature_splat.field import FeatureField, is_field_folder
from feature_splat.generalizable.driving.config import DriveFitConfig, DriveTeacherConfig
from feature_splat.io.outputs import prepare_output
from feature_splat.teachers.synthetic import SyntheticTeacher

OFFLINE_KIND = "offline-drive-fields"


def drive_teacher(views: DriveViews, config: DriveTeacherConfig) -> SyntheticTeacher:
    """The synthetic oracle of one drive's views (the same class embeddings for every drive)."""
    return SyntheticTeacher.for_dataset(
        views.dataset(), dim=config.dim, stride=config.stride, seed=config.seed,
        text_space=config.oracle_text,
    )  # fmt: skip


def teacher_maps(views: DriveViews, teacher: SyntheticTeacher) -> torch.Tensor:
    """The teacher's maps [T, V, M, h, w] (float16) of every frame's camera images."""
    t, v = views.rgb.shape[:2]
    images = views.rgb.flatten(0, 1).permute(0, 3, 1, 2)
    maps = torch.cat([teacher.encode(images[i : i + 64]) for i in range(0, len(images), 64)])
    return maps.half().unflatten(0, (t, v))


def offline_field_dir(root: Path, drive: Drive) -> Path:
    """Where ``drive fit-fields`` keeps the field of one drive."""
    return Path(root) / f"drive_{drive.seed:06d}"


def load_offline_field(root: Path, drive: Drive, teacher_dim: int) -> FeatureField:
    """The offline field of ``drive``, checked against the teacher's width."""
    folder = offline_field_dir(root, drive)
    if not is_field_folder(folder):
        raise DatasetError(
            f"{folder}: no offline field for drive {drive.seed}; run `feature-splat drive "
            f"fit-fields` with the same --data settings (and --split) first"
        )
    field = FeatureField.load(folder)
    if field.decoder.out_dim != teacher_dim:
        raise DatasetError(
            f"{folder}: this offline field decodes to {field.decoder.out_dim} channels, the "
            f"teacher has {teacher_dim}; fit the fields with the same --teacher settings"
        )
    return field


def depth_points(views: DriveViews, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` world points [P, 3] and their colours [P, 3] from the drive's finite depths."""
    points, colors = [], []
    for frame, cameras in enumerate(views.cameras):
        depth = views.depth[frame]  # [V, H, W]
        v, h, w = depth.shape
        cols = torch.arange(w, dtype=torch.float32) + 0.5
        rows = torch.arange(h, dtype=torch.float32) + 0.5
        Ks = cameras.Ks.float()
        x = (cols.view(1, 1, w) - Ks[:, 0, 2].view(v, 1, 1)) / Ks[:, 0, 0].view(v, 1, 1)
        y = (rows.view(1, h, 1) - Ks[:, 1, 2].view(v, 1, 1)) / Ks[:, 1, 1].view(v, 1, 1)
        camera_points = torch.stack(torch.broadcast_tensors(x, y, torch.ones_like(x)), -1)
        camera_points = camera_points * depth[..., None]
        rotation, translation = cameras.viewmats[:, :3, :3].float(), cameras.viewmats[:, :3, 3]
        world = torch.einsum(
            "vji,vhwj->vhwi", rotation, camera_points - translation.view(v, 1, 1, 3)
        )
        finite = torch.isfinite(depth)
        points.append(world[finite])
        colors.append(views.rgb[frame][finite])
    points, colors = torch.cat(points), torch.cat(colors)
    keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:count]
    return points[keep], colors[keep]


def fit_offline_field(views: DriveViews, config: DriveFitConfig, folder: Path) -> FeatureField:
    """Train and save the per-scene field of one drive on all its frames."""
    from feature_splat.training.config import TrainConfig
    from feature_splat.training.trainer import Trainer

    teacher = drive_teacher(views, config.teacher)
    maps = teacher_maps(views, teacher).flatten(0, 1).permute(0, 2, 3, 1)  # [T * V, h, w, M]
    dataset = views.dataset()
    points, colors = depth_points(views, config.points)
    dataset.points, dataset.point_colors = points, colors
    train_config = TrainConfig(
        data="drive", out=folder, iterations=config.iterations, feature_dim=config.feature_dim,
        feature_loss="cosine", sh_degree=1, init="points", init_points=len(points),
        checkpoint_every=10**9,
    )  # fmt: skip
    trainer = Trainer(train_config, dataset, maps, teacher.dim, teacher.stride)
    trainer.train(show_progress=False)
    field = trainer.field()
    field.save(folder)
    return field


def run_fit_fields(config: DriveFitConfig) -> None:
    """Fit one offline field per drive of the split (skipping those already saved)."""
    drives = config.data.load(config.split)
    prepare_output(config.out, OFFLINE_KIND)
    for views in track(drives, description=f"drive fit-fields ({config.split})"):
        folder = offline_field_dir(config.out, views.drive)
        if not is_field_folder(folder):
            fit_offline_field(views, config, folder)
