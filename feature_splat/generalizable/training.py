"""Training the feed-forward predictor across object instances.

Each step draws ``batch_size`` training instances; for each, 1 to ``input_views`` random views go
into the network and the predicted field is rendered (one rasterizer pass for RGB and features) at the
input views plus ``target_views`` other views of the same instance. Losses, per rendered view:

- RGB: ``0.8 * L1 + 0.2 * (1 - SSIM)`` against the ray-cast image (white background);
- features (``feature_weight``): rendered features averaged over the teacher's cells, decoded to the
  teacher's width by the linear speed-up decoder, ``1 - cosine`` against the teacher map: teacher
  supervision at the teacher's resolution, as in the per-scene path;
- silhouette (``alpha_weight``): L1 between rendered alpha and the object mask;
- depth (``depth_weight``): L1 between the rendered expected depth and a target depth on the
  object, relative to the object-centre depth. Targets come from the renders (ground truth for the
  synthetic categories, as LiDAR is for DistillNeRF) or, with ``offline_fields``, from per-scene
  fields fitted beforehand (``feature-splat gen fit-fields``), whose decoded features then join
  the teacher as a second feature target (``offline_feature_weight``), as DistillNeRF distils
  offline NeRFs.

``feature_weight = 0`` trains the "no feature distillation" baseline: same network, its feature head
left at its random initialisation (a fixed random projection of the RGB-trained trunk).

Checkpoints (``checkpoint.pt``: weights, optimiser, step, sampling RNG) are written atomically every
``checkpoint_every`` steps, at the end and on Ctrl-C; ``--resume`` continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from feature_splat.data.synthetic.object_views import ObjectViews
from feature_splat.errors import CheckpointError, ConfigError, DatasetError
from feature_splat.field import FeatureField
from feature_splat.generalizable.config import GenTrainConfig
from feature_splat.generalizable.network import GaussianPredictor
from feature_splat.io import write_json
from feature_splat.io.checkpoints import build_checked, read_checkpoint, write_checkpoint
from feature_splat.io.files import read_json_object
from feature_splat.io.outputs import output_kind, prepare_output
from feature_splat.options import refuse_changed_settings
from feature_splat.teachers.base import pool_to_cells
from feature_splat.teachers.object_oracle import ObjectOracleTeacher
from feature_splat.training.loop import run_steps
from feature_splat.training.losses import photometric_loss

if TYPE_CHECKING:
    from feature_splat.generalizable.driving.config import DriveTrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
CONFIG_NAME = "config.json"
GEN_RUN_KIND = "gen-run"
# Settings a resumed run may change (what is trained stays the same).
RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "resume", "backend", "out")


@dataclass
class InstanceTargets:
    """Everything a training step needs of one instance, precomputed once."""

    views: ObjectViews
    teacher_maps: Tensor  # [V, M, h, w] float16
    depth: Tensor  # [V, H, W] target depth (0 where unknown)
    offline_maps: Tensor | None = None  # [V, M, h, w] float16, decoded offline-field features


def prepare_targets(
    objects: list[ObjectViews], teacher: ObjectOracleTeacher, offline_fields: Path | None = None
) -> list[InstanceTargets]:
    """Teacher maps and depth targets (ground truth, or an offline field's) for every instance."""
    targets = []
    for views in objects:
        maps = teacher.encode_views(views).half()
        if offline_fields is None:
            targets.append(InstanceTargets(views, maps, views.depth))
            continue
        field_dir = offline_field_dir(offline_fields, views)
        if not field_dir.is_dir():
            raise DatasetError(
                f"{field_dir}: no offline field for {views.instance.category} instance "
                f"{views.instance.index}; run `feature-splat gen fit-fields` first"
            )
        offline = FeatureField.load(field_dir)
        if offline.decoder.out_dim != teacher.dim:
            raise DatasetError(
                f"{field_dir}: this offline field decodes to {offline.decoder.out_dim} channels, "
                f"the teacher has {teacher.dim}; fit the fields with the same --teacher.dim"
            )
        with torch.no_grad():
            render = offline.render(views.cameras)
            cells = pool_to_cells(render.features.permute(0, 3, 1, 2), teacher.stride)
            decoded = offline.decode(cells.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        depth = torch.where(views.masks(), render.depth[..., 0], torch.zeros(()))
        targets.append(InstanceTargets(views, maps, depth, decoded.half()))
    return targets


def offline_field_dir(root: Path, views: ObjectViews) -> Path:
    """Where ``gen fit-fields`` keeps the per-scene field of one instance."""
    return Path(root) / views.instance.category / f"{views.instance.index:06d}"


class PredictorTrainer:
    """What the feed-forward trainers share: Adam with a cosine-decayed rate, a loss history of
    every 10th step, and checkpoints from which a run resumes exactly. Subclasses give
    ``_sample()`` (a step's random draws) and ``losses(*sample)`` (with a ``total``)."""

    label = "train"

    def __init__(self, config: GenTrainConfig | DriveTrainConfig, model: nn.Module) -> None:
        self.config = config
        self.model = model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _sample(self) -> tuple:
        raise NotImplementedError

    def losses(self, *sample: object) -> dict[str, Tensor]:
        raise NotImplementedError

    def status(self, stats: dict[str, float]) -> str:
        """The progress bar's text."""
        return f"loss {stats['total']:.4f}  rgb {stats['rgb']:.4f}"

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns its losses."""
        progress = self.step / max(self.config.iterations - 1, 1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * (
                0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
            )
        losses = self.losses(*self._sample())
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        self.step += 1
        stats = {name: float(value.detach()) for name, value in losses.items()}
        if self.step % 10 == 0 or self.step == self.config.iterations:
            self.history.append({"step": self.step, **stats})
        return stats

    def train(self, show_progress: bool = True, until: int | None = None) -> None:
        """Run to step ``until`` (default ``config.iterations``), then write a checkpoint."""
        config = self.config
        run_steps(
            self, total=config.iterations, until=until, checkpoint_every=config.checkpoint_every,
            label=self.label, status=self.status, show_progress=show_progress,
        )  # fmt: skip
        self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        """Write weights, optimiser, step and sampling RNG atomically to ``out/checkpoint.pt``."""
        state = {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
        }
        return write_checkpoint(self.config.out / CHECKPOINT_NAME, state)

    def load_checkpoint(self) -> None:
        """Restore the state written by :meth:`save_checkpoint` (read with ``weights_only=True``)."""
        path = self.config.out / CHECKPOINT_NAME
        state = read_checkpoint(path, "checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
            self.history = list(state["history"])
        except Exception as err:
            raise CheckpointError(f"{path}: not a checkpoint of this model ({err})") from None


class GenTrainer(PredictorTrainer):
    """Optimises a :class:`GaussianPredictor` over a list of instances."""

    label = "gen train"

    def __init__(self, config: GenTrainConfig, targets: list[InstanceTargets]) -> None:
        if not targets:
            raise DatasetError("GenTrainer: no training instances")
        n_views = targets[0].views.rgb.shape[0]
        if config.input_views + config.target_views > n_views:
            raise DatasetError(
                f"GenTrainer: input_views + target_views = "
                f"{config.input_views + config.target_views} exceeds the {n_views} views per instance"
            )
        self.targets = targets
        torch.manual_seed(config.seed)
        super().__init__(config, GaussianPredictor(config.model))

    # -- one step -------------------------------------------------------------------------------
    def _sample(self) -> tuple[list[int], list[Tensor], int]:
        """Instances of the batch, per instance a permutation of its views (inputs first), and the
        number of input views: 1 to ``input_views``, drawn per step so one model serves them all."""
        config = self.config
        instances = torch.randint(len(self.targets), (config.batch_size,), generator=self.generator)
        n_views = self.targets[0].views.rgb.shape[0]
        orders = [torch.randperm(n_views, generator=self.generator) for _ in instances]
        n_in = config.input_views
        if n_in > 1:
            n_in = int(torch.randint(1, n_in + 1, (), generator=self.generator))
        return instances.tolist(), orders, n_in

    def losses(
        self, instances: list[int], orders: list[Tensor], n_in: int = 1
    ) -> dict[str, Tensor]:
        """Mean losses over the batch (each a scalar tensor; ``total`` is what is minimised): the
        first ``n_in`` views of each order go in, those and ``target_views`` more are rendered."""
        config = self.config
        n_render = n_in + config.target_views
        images = torch.stack(
            [
                self.targets[i].views.rgb[order[:n_in]]
                for i, order in zip(instances, orders, strict=True)
            ]
        )
        cameras = [
            self.targets[i].views.cameras[order[:n_in]]
            for i, order in zip(instances, orders, strict=True)
        ]
        fields = self.model(images, cameras)
        sums: dict[str, Tensor] = {}
        for index, order, predicted in zip(instances, orders, fields, strict=True):
            for name, value in self._view_losses(
                self.targets[index], order[:n_render], predicted
            ).items():
                sums[name] = sums.get(name, 0.0) + value / len(instances)
        sums["total"] = (
            sums["rgb"]
            + config.feature_weight * sums["feature"]
            + config.alpha_weight * sums["alpha"]
            + config.depth_weight * sums["depth"]
            + config.offline_feature_weight * sums.get("offline_feature", torch.zeros(()))
        )
        return sums

    def _view_losses(
        self, target: InstanceTargets, views: Tensor, predicted: FeatureField
    ) -> dict[str, Tensor]:
        data = target.views
        render = predicted.render(data.cameras[views], backend=self.config.backend)
        rgb = photometric_loss(render.rgb, data.rgb[views])
        mask = data.masks()[views]
        alpha = (render.alpha[..., 0] - mask.to(render.alpha.dtype)).abs().mean()
        reference = data.cameras.viewmats[views, 2, 3].view(-1, 1, 1)
        depth_target = target.depth[views]
        known = depth_target > 0
        depth = (
            ((render.depth[..., 0] - depth_target).abs() / reference)[known].mean()
            if known.any()
            else torch.zeros(())
        )
        cells = pool_to_cells(render.features.permute(0, 3, 1, 2), self.config.teacher.stride)
        decoded = predicted.decode(cells.permute(0, 2, 3, 1))  # [T, h, w, M]
        losses = {"rgb": rgb, "alpha": alpha, "depth": depth}
        losses["feature"] = _cosine_loss(decoded, target.teacher_maps[views])
        if target.offline_maps is not None:
            losses["offline_feature"] = _cosine_loss(decoded, target.offline_maps[views])
        return losses

    def status(self, stats: dict[str, float]) -> str:
        return f"loss {stats['total']:.4f}  rgb {stats['rgb']:.4f}  feature {stats['feature']:.4f}"


def _cosine_loss(decoded: Tensor, target_maps: Tensor) -> Tensor:
    """``1 - cosine`` between decoded cells [T, h, w, M] and teacher maps [T, M, h, w]."""
    target = target_maps.float().permute(0, 2, 3, 1)
    return 1.0 - torch.nn.functional.cosine_similarity(decoded, target, dim=-1).mean()


def save_model(path: Path, model: GaussianPredictor, extra: dict | None = None) -> Path:
    """Write the trained predictor (config + weights) atomically, for ``gen eval`` / ``gen predict``."""
    saved = {"config": model.config.to_dict(), "state": model.state_dict(), **(extra or {})}
    return write_checkpoint(path, saved)


def model_file(path: Path) -> Path:
    """A run folder's ``model.pt``, or the file itself."""
    path = Path(path)
    return path / MODEL_NAME if path.is_dir() else path


def load_model(
    path: Path, model_type: type[nn.Module] = GaussianPredictor
) -> tuple[nn.Module, dict]:
    """Read a predictor written by :func:`save_model`; returns it (in eval mode) and the extras.
    ``model_type`` (a predictor class with a ``config_type``) says which model the file holds;
    the stored config is checked against the stored weights before the model is built."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: model file does not exist (train one with `feature-splat gen train`)"
        )
    saved = read_checkpoint(path, "predictor file")
    if not isinstance(saved, dict) or not {"config", "state"} <= set(saved):
        raise CheckpointError(f"{path}: expected 'config' and 'state' entries (a predictor file)")
    try:
        stored = saved.pop("config")
        if not isinstance(stored, dict):
            raise TypeError(f"expected a dict, got {type(stored).__name__}")
        config = model_type.config_type.from_dict(stored)
    except (ConfigError, TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: config: {err}") from None
    model = build_checked(lambda: model_type(config), saved.pop("state"), str(path))
    return model.eval(), saved


def check_run_state(out: Path, kind: str, resume: bool) -> bool:
    """Refuse to start over an existing run of ``kind`` in ``out`` without ``resume``, or to
    resume where there is none; returns whether ``out`` holds a started run."""
    started = output_kind(out) == kind and (out / CONFIG_NAME).is_file()
    if started and not resume:
        raise CheckpointError(
            f"{out}: a run already exists here; pass --resume or choose another folder"
        )
    if resume and not started:
        raise CheckpointError(f"{out}: no run to resume here (train without --resume)")
    return started


def train_and_save(trainer: PredictorTrainer, show_progress: bool = True) -> None:
    """Continue from the run's checkpoint (when resuming), train, and write ``config.json``,
    ``history.json`` and ``model.pt`` (with the training config as its extra)."""
    config = trainer.config
    out = config.out
    if config.resume and (out / CHECKPOINT_NAME).is_file():
        trainer.load_checkpoint()
    write_json(out / CONFIG_NAME, config.to_dict())
    trainer.train(show_progress=show_progress)
    write_json(out / "history.json", trainer.history)
    save_model(out / MODEL_NAME, trainer.model, {"train_config": config.to_dict()})


def run_training(config: GenTrainConfig, show_progress: bool = True) -> GenTrainer:
    """Load the data, train (or resume), and write ``model.pt``, ``config.json`` and ``history.json``."""
    check_run_state(config.out, GEN_RUN_KIND, config.resume)
    if config.resume:
        _check_resume(config.out, config)
    teacher = config.teacher.build()
    targets = prepare_targets(config.data.load("train"), teacher, config.offline_fields)
    prepare_output(config.out, GEN_RUN_KIND)
    trainer = GenTrainer(config, targets)
    train_and_save(trainer, show_progress)
    return trainer


def _check_resume(out: Path, config: GenTrainConfig | DriveTrainConfig) -> None:
    """Refuse a resume whose data, teacher or model settings differ from the stored ones."""
    path = out / CONFIG_NAME
    stored = read_json_object(path)
    refuse_changed_settings(str(path), stored, config.to_dict(), RESUMABLE_CHANGES)
