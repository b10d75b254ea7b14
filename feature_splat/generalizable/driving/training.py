"""Training the driving predictor across drives, one frame in per step.

Each step draws a training drive and a frame ``t`` (not the last); the frame's six images go in,
and the predicted field is rendered in one rasterizer pass at the frame's cameras (reconstruction),
at the next frame's cameras (novel views) and at ``virtual_views`` virtual cameras of frame ``t``.
Losses:

- RGB, ``0.8 * L1 + 0.2 * (1 - SSIM)``: against the real images, and at virtual cameras against
  the offline field's render (weighted by ``virtual_weight``);
- depth (``depth_weight``), both stages of the head on the input pixels: cross-entropy of the bin
  scores against the bin of the target depth (sky: the last bin), and L1 of log depth of the
  refined depth on pixels with a finite target; plus log-depth L1 of the rendered depth at the
  other cameras. Targets: the offline field's rendered depth where its alpha exceeds 0.5 (else sky),
  or the world's ray-cast depth (``--depth-source raycast``, the ablation);
- features (``feature_weight``): rendered features averaged over the teacher's cells, decoded,
  ``1 - cosine`` against the teacher's maps at the real cameras; ``offline_feature_weight``: the
  same against the offline field's decoded features, at real and virtual cameras.

Checkpoints (weights, optimiser, step, sampling RNG) are atomic; ``--resume`` continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from rich.progress import track
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.drives import DriveViews
from feature_splat.errors import DatasetError
from feature_splat.field import FeatureField
from feature_splat.generalizable.driving.config import DriveTrainConfig
from feature_splat.generalizable.driving.network import DrivingPredictor
from feature_splat.generalizable.driving.offline import (
    drive_teacher,
    load_offline_field,
    teacher_maps,
)
from feature_splat.generalizable.training import (
    PredictorTrainer,
    _check_resume,
    _cosine_loss,
    check_run_state,
    train_and_save,
)
from feature_splat.io.outputs import prepare_output
from feature_splat.teachers.base import pool_to_cells
from feature_splat.teachers.text_space import MINILM_DIM, RANDOM_DIM, resolve_text_space
from feature_splat.training.losses import photometric_loss

DRIVE_RUN_KIND = "drive-run"
OFFLINE_ALPHA = 0.5  # an offline render's depth counts where its alpha exceeds this


def join_cameras(*groups: Cameras) -> Cameras:
    """Cameras of one image size, concatenated."""
    return Cameras(
        torch.cat([g.viewmats for g in groups]), torch.cat([g.Ks for g in groups]),
        groups[0].width, groups[0].height,
    )  # fmt: skip


@dataclass
class OfflineRenders:
    """An offline field's renders of one drive, per frame."""

    depth: Tensor  # [T, 6, H, W] at the real cameras (inf where its alpha <= OFFLINE_ALPHA)
    maps: Tensor  # [T, 6, M, h, w] float16 decoded features at the real cameras
    virtual_cameras: list[Cameras]  # T x 12
    virtual_rgb: Tensor  # [T, 12, H, W, 3]
    virtual_depth: Tensor  # [T, 12, H, W]
    virtual_maps: Tensor  # [T, 12, M, h, w] float16


@dataclass
class DriveTargets:
    """Everything a training step needs of one drive, computed once."""

    views: DriveViews
    teacher_maps: Tensor  # [T, 6, M, h, w] float16
    depth: Tensor  # [T, 6, H, W] depth targets (inf: sky)
    offline: OfflineRenders | None = None


def render_offline(field: FeatureField, views: DriveViews, stride: int) -> OfflineRenders:
    """Depth, decoded features and virtual views of ``field`` for every frame of ``views``."""

    def render(cameras: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        out = field.render(cameras)
        depth = torch.where(out.alpha[..., 0] > OFFLINE_ALPHA, out.depth[..., 0], math.inf)
        cells = pool_to_cells(out.features.permute(0, 3, 1, 2), stride)
        maps = field.decode(cells.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).half()
        return out.rgb.clamp(0, 1), depth, maps

    real, virtual, cameras = [], [], []
    with torch.no_grad():
        for frame in range(views.n_frames):
            real.append(render(views.cameras[frame]))
            cameras.append(views.drive.virtual_cameras(frame, views.width, views.height))
            virtual.append(render(cameras[-1]))
    stack = lambda items, k: torch.stack([item[k] for item in items])  # noqa: E731
    return OfflineRenders(
        stack(real, 1), stack(real, 2), cameras, stack(virtual, 0), stack(virtual, 1),
        stack(virtual, 2),
    )  # fmt: skip


def prepare_targets(drives: list[DriveViews], config: DriveTrainConfig) -> list[DriveTargets]:
    """Teacher maps, depth targets and (with offline fields) their renders for every drive."""
    targets = []
    for views in track(drives, description="teacher maps, offline renders"):
        teacher = drive_teacher(views, config.teacher)
        if teacher.dim != config.model.teacher_dim:
            raise DatasetError(
                f"teacher: width {teacher.dim}, the model decodes to {config.model.teacher_dim}"
            )
        maps = teacher_maps(views, teacher)
        offline = None
        if config.offline_fields is not None:
            field = load_offline_field(config.offline_fields, views.drive, teacher.dim)
            offline = render_offline(field, views, config.teacher.stride)
        depth = views.depth if config.depth_source == "raycast" else offline.depth
        targets.append(DriveTargets(views, maps, depth, offline))
    return targets


def _log_depth_l1(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean |log z - log z*| over the finite targets (0 when there are none)."""
    known = torch.isfinite(target) & (target > 0)
    if not known.any():
        return predicted.sum() * 0.0
    return (predicted[known].clamp_min(1e-3).log() - target[known].log()).abs().mean()


class DriveTrainer(PredictorTrainer):
    """Optimises a :class:`DrivingPredictor` over the frames of the training drives."""

    label = "drive train"

    def __init__(self, config: DriveTrainConfig, targets: list[DriveTargets]) -> None:
        if not targets:
            raise DatasetError("DriveTrainer: no training drives")
        if config.virtual_views and targets[0].offline is None:
            raise DatasetError(
                "DriveTrainer: --virtual-views needs --offline-fields (their targets come from "
                "the offline fields); pass --virtual-views 0"
            )
        self.targets = targets
        torch.manual_seed(config.seed)
        super().__init__(config, DrivingPredictor(config.model))

    def status(self, stats: dict[str, float]) -> str:
        return f"loss {stats['total']:.4f}  rgb {stats['rgb']:.4f}  depth {stats['depth']:.3f}"

    def _sample(self) -> tuple[int, int, Tensor]:
        """A drive, a frame with a next frame, and the virtual cameras to render."""
        drive = int(torch.randint(len(self.targets), (), generator=self.generator))
        frame = int(
            torch.randint(self.targets[drive].views.n_frames - 1, (), generator=self.generator)
        )
        virtual = torch.randperm(12, generator=self.generator)[: self.config.virtual_views]
        return drive, frame, virtual

    def losses(self, drive: int, frame: int, virtual: Tensor) -> dict[str, Tensor]:
        """The losses of one frame (scalars; ``total`` is what is minimised)."""
        config, target = self.config, self.targets[drive]
        views, offline = target.views, target.offline
        prediction = self.model(views.rgb[frame], views.cameras[frame])
        groups = [views.cameras[frame], views.cameras[frame + 1]]
        if len(virtual):
            groups.append(offline.virtual_cameras[frame][virtual])
        render = prediction.field.render(join_cameras(*groups), backend=config.backend)
        n_real = 2 * len(groups[0])
        real_rgb = torch.cat([views.rgb[frame], views.rgb[frame + 1]])
        losses = {"rgb": photometric_loss(render.rgb[:n_real], real_rgb)}

        bins = self.model.bins.bin_of(target.depth[frame])
        logits = prediction.depth_logits.flatten(0, 2)
        losses["depth_bins"] = torch.nn.functional.cross_entropy(logits, bins.reshape(-1))
        losses["depth"] = _log_depth_l1(prediction.depth, target.depth[frame])
        rendered_depth = render.depth[..., 0]
        losses["render_depth"] = _log_depth_l1(
            rendered_depth[len(groups[0]) : n_real], target.depth[frame + 1]
        )

        cells = pool_to_cells(render.features.permute(0, 3, 1, 2), config.teacher.stride)
        decoded = prediction.field.decode(cells.permute(0, 2, 3, 1))  # [C, h, w, M]
        teacher = torch.cat([target.teacher_maps[frame], target.teacher_maps[frame + 1]])
        losses["feature"] = _cosine_loss(decoded[:n_real], teacher)
        total = (
            losses["rgb"]
            + config.depth_weight
            * (losses["depth_bins"] + losses["depth"] + losses["render_depth"])
            + config.feature_weight * losses["feature"]
        )
        if offline is not None:
            maps = torch.cat([offline.maps[frame], offline.maps[frame + 1]])
            losses["offline_feature"] = _cosine_loss(decoded[:n_real], maps)
            total = total + config.offline_feature_weight * losses["offline_feature"]
        if len(virtual):
            losses["virtual_rgb"] = photometric_loss(
                render.rgb[n_real:], offline.virtual_rgb[frame][virtual]
            )
            losses["virtual_depth"] = _log_depth_l1(
                rendered_depth[n_real:], offline.virtual_depth[frame][virtual]
            )
            losses["virtual_feature"] = _cosine_loss(
                decoded[n_real:], offline.virtual_maps[frame][virtual]
            )
            total = total + config.virtual_weight * (
                losses["virtual_rgb"]
                + config.depth_weight * losses["virtual_depth"]
                + config.offline_feature_weight * losses["virtual_feature"]
            )
        losses["total"] = total
        return losses


def resolve_teacher(config: DriveTrainConfig) -> None:
    """Make the teacher's text space and width definite (``auto`` resolved), and the model's
    decoder width equal to it, so a run's stored config says what it was trained with."""
    text = resolve_text_space(config.teacher.oracle_text, config.teacher.dim)
    dim = config.teacher.dim or (MINILM_DIM if text == "minilm" else RANDOM_DIM)
    config.teacher = replace(config.teacher, oracle_text=text, dim=dim)
    config.model = replace(config.model, teacher_dim=dim)


def run_training(config: DriveTrainConfig, show_progress: bool = True) -> DriveTrainer:
    """Load the drives, train (or resume), write ``model.pt``, ``config.json``, ``history.json``."""
    check_run_state(config.out, DRIVE_RUN_KIND, config.resume)
    resolve_teacher(config)
    if config.resume:
        _check_resume(config.out, config)
    prepare_output(config.out, DRIVE_RUN_KIND, inputs=[config.offline_fields])
    trainer = DriveTrainer(config, prepare_targets(config.data.load("train"), config))
    train_and_save(trainer, show_progress)
    return trainer
