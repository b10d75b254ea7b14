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

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro
from torch import Tensor

from feature_splat.data.synthetic.object_views import ObjectViews, load_objects
from feature_splat.errors import CheckpointError, DatasetError
from feature_splat.field import FeatureField
from feature_splat.generalizable.network import GaussianPredictor, PredictorConfig
from feature_splat.io import atomic_write_bytes, write_json
from feature_splat.rasterizer.api import Backend
from feature_splat.teachers.base import pool_to_cells
from feature_splat.teachers.object_oracle import ObjectOracleTeacher
from feature_splat.training.loop import run_steps
from feature_splat.training.losses import photometric_loss

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
CONFIG_NAME = "config.json"


@dataclass
class ObjectDataConfig:
    """Which procedural object instances to use and how they are rendered."""

    categories: tuple[Literal["chair", "table", "car"], ...] = ("chair", "table", "car")
    instances: int = 32
    """Instances per category."""
    views: int = 12
    """Ray-cast views per instance."""
    image_size: int = 64
    seed: int = 0
    cache_dir: Path | None = None
    """Render cache (default: $FEATURE_SPLAT_CACHE/objects or ~/.cache/feature-splat/objects)."""

    def load(self, split: str, *, instances: int | None = None) -> list[ObjectViews]:
        """All categories' instances of ``split``, rendered (or read from the cache)."""
        out: list[ObjectViews] = []
        for category in self.categories:
            out += load_objects(
                category, split, n_instances=instances or self.instances, n_views=self.views,
                size=self.image_size, seed=self.seed, cache_dir=self.cache_dir,
            )  # fmt: skip
        return out


@dataclass
class TeacherConfig:
    """The synthetic DINO-like oracle teacher of the object categories."""

    dim: int = 64
    stride: int = 4
    noise: float = 0.15
    view_weight: float = 0.25
    seed: int = 0

    def build(self) -> ObjectOracleTeacher:
        return ObjectOracleTeacher(
            dim=self.dim, stride=self.stride, noise=self.noise, view_weight=self.view_weight,
            seed=self.seed,
        )  # fmt: skip


@dataclass
class GenTrainConfig:
    """Train the feed-forward feature-Gaussian predictor on procedural object categories."""

    out: tyro.conf.Positional[Path]
    """Run folder (created; refuses to overwrite an existing run unless --resume)."""
    data: ObjectDataConfig = field(default_factory=ObjectDataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: PredictorConfig = field(default_factory=PredictorConfig)
    input_views: int = 1
    """Most views fed to the network per instance (each step draws 1 to this many)."""
    target_views: int = 3
    """Novel views rendered per instance and step (the input views are rendered too)."""
    batch_size: int = 4
    """Instances per step."""
    iterations: int = 6000
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 5% of it)."""
    feature_weight: float = 1.0
    """Teacher feature distillation; 0 trains the no-distillation baseline."""
    alpha_weight: float = 0.1
    """Rendered alpha against the object mask."""
    depth_weight: float = 1.0
    """Rendered depth against the target depth (ray-cast, or the offline fields'), relative L1."""
    offline_fields: Path | None = None
    """Folder of per-scene fields from ``gen fit-fields``: their depth and features become targets."""
    offline_feature_weight: float = 0.5
    """The offline fields' decoded features as a second feature target."""
    checkpoint_every: int = 500
    resume: bool = False
    """Continue the run in OUT from its checkpoint."""
    seed: int = 0
    backend: Backend = "auto"
    """Rasterizer backend (auto: gsplat on CUDA tensors, the numba CPU backend otherwise)."""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


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


class GenTrainer:
    """Optimises a :class:`GaussianPredictor` over a list of instances."""

    def __init__(self, config: GenTrainConfig, targets: list[InstanceTargets]) -> None:
        if not targets:
            raise DatasetError("GenTrainer: no training instances")
        n_views = targets[0].views.rgb.shape[0]
        if config.input_views + config.target_views > n_views:
            raise DatasetError(
                f"GenTrainer: input_views + target_views = "
                f"{config.input_views + config.target_views} exceeds the {n_views} views per instance"
            )
        self.config = config
        self.targets = targets
        torch.manual_seed(config.seed)
        self.model = GaussianPredictor(config.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []

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
        cells = pool_to_cells(render.features.permute(0, 3, 1, 2), self._stride(target))
        decoded = predicted.decode(cells.permute(0, 2, 3, 1))  # [T, h, w, M]
        losses = {"rgb": rgb, "alpha": alpha, "depth": depth}
        losses["feature"] = _cosine_loss(decoded, target.teacher_maps[views])
        if target.offline_maps is not None:
            losses["offline_feature"] = _cosine_loss(decoded, target.offline_maps[views])
        return losses

    def _stride(self, target: InstanceTargets) -> int:
        return target.views.rgb.shape[1] // target.teacher_maps.shape[-2]

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the batch's losses."""
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

    # -- the loop -------------------------------------------------------------------------------
    def train(self, show_progress: bool = True, until: int | None = None) -> None:
        """Run to step ``until`` (default ``config.iterations``), recording the losses of every
        10th step in ``history``."""
        config = self.config
        run_steps(
            self,
            total=config.iterations,
            until=until,
            checkpoint_every=config.checkpoint_every,
            label="gen train",
            status=lambda stats: (
                f"loss {stats['total']:.4f}  rgb {stats['rgb']:.4f}  feature {stats['feature']:.4f}"
            ),
            show_progress=show_progress,
        )
        self.save_checkpoint()

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write weights, optimiser, step and sampling RNG atomically to ``out/checkpoint.pt``."""
        buffer = io.BytesIO()
        torch.save(
            {
                "step": self.step,
                "config": self.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "history": self.history,
            },
            buffer,
        )
        return atomic_write_bytes(self.config.out / CHECKPOINT_NAME, buffer.getvalue())

    def load_checkpoint(self) -> None:
        """Restore the state written by :meth:`save_checkpoint`."""
        path = self.config.out / CHECKPOINT_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except Exception as err:
            raise CheckpointError(f"{path}: not a checkpoint of this model ({err})") from err
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.history = list(state["history"])


def _cosine_loss(decoded: Tensor, target_maps: Tensor) -> Tensor:
    """``1 - cosine`` between decoded cells [T, h, w, M] and teacher maps [T, M, h, w]."""
    target = target_maps.float().permute(0, 2, 3, 1)
    return 1.0 - torch.nn.functional.cosine_similarity(decoded, target, dim=-1).mean()


def save_model(path: Path, model: GaussianPredictor, extra: dict | None = None) -> Path:
    """Write the trained predictor (config + weights) atomically, for ``gen eval`` / ``gen predict``."""
    buffer = io.BytesIO()
    torch.save(
        {"config": model.config.to_dict(), "state": model.state_dict(), **(extra or {})}, buffer
    )
    return atomic_write_bytes(path, buffer.getvalue())


def load_model(path: Path) -> tuple[GaussianPredictor, dict]:
    """Read a predictor written by :func:`save_model`; returns it (in eval mode) and the extras."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: model file does not exist (train one with `feature-splat gen train`)"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = GaussianPredictor(PredictorConfig.from_dict(saved.pop("config")))
        model.load_state_dict(saved.pop("state"))
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable predictor file ({err})") from err
    return model.eval(), saved


def run_training(config: GenTrainConfig, show_progress: bool = True) -> GenTrainer:
    """Load the data, train (or resume), and write ``model.pt``, ``config.json`` and ``history.json``."""
    out = config.out
    if (out / CHECKPOINT_NAME).exists() and not config.resume:
        raise CheckpointError(
            f"{out}: a run already exists here; pass --resume or choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_NAME, config.to_dict())
    teacher = config.teacher.build()
    if teacher.dim != config.model.teacher_dim:
        raise DatasetError(
            f"teacher.dim ({teacher.dim}) must equal model.teacher-dim ({config.model.teacher_dim})"
        )
    targets = prepare_targets(config.data.load("train"), teacher, config.offline_fields)
    trainer = GenTrainer(config, targets)
    if config.resume:
        trainer.load_checkpoint()
    trainer.train(show_progress=show_progress)
    write_json(out / "history.json", trainer.history)
    save_model(out / MODEL_NAME, trainer.model, {"train_config": config.to_dict()})
    return trainer
