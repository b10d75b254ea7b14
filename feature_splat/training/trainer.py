"""Per-scene feature distillation: fit Gaussians to posed images and a teacher's feature maps.

One step renders RGB and F feature channels of one training view in a single rasterizer pass, pools
the features to the teacher's cells, decodes them to the teacher's width, and minimises
``0.8 L1 + 0.2 (1 - SSIM)`` on RGB plus ``gamma`` times the feature loss. gsplat's DefaultStrategy
densifies and prunes from the rasterizer's ``meta``. Checkpoints hold every piece of state (RNGs,
optimizer moments, the view queue), so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from gsplat.strategy import DefaultStrategy
from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError, DatasetError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, num_sh_bases, rgb_to_sh0
from feature_splat.io.checkpoints import read_checkpoint, write_checkpoint
from feature_splat.teachers import to_teacher_cells
from feature_splat.training.config import MIN_IMAGE_SIDE, TrainConfig
from feature_splat.training.loop import run_steps
from feature_splat.training.losses import photometric_loss

CHECKPOINT_NAME = "checkpoint.pt"


def scene_scale(dataset: Dataset) -> float:
    """gsplat's scene scale: 1.1 x the largest distance of a camera centre from their mean."""
    centers = dataset.cameras.centers
    scale = 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-3))
    if not math.isfinite(scale):
        raise DatasetError("cameras: their centres are not finite (poses beyond float32 range)")
    return scale


def initial_gaussians(
    dataset: Dataset, config: TrainConfig, generator: torch.Generator
) -> GaussianField:
    """Gaussians at the dataset's points (or uniform in the cameras' bounds), sized by their neighbours."""
    n = config.init_points
    if dataset.points is not None and len(dataset.points) > 0:
        pick = torch.randperm(len(dataset.points), generator=generator)[:n]
        means = dataset.points[pick].float()
        colors = (
            dataset.point_colors[pick].float()
            if dataset.point_colors is not None
            else torch.full_like(means, 0.5)
        )
    else:
        centers = dataset.cameras.centers
        radius = scene_scale(dataset)
        lo, hi = centers.min(0).values - radius, centers.max(0).values + radius
        means = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
        colors = torch.rand(n, 3, generator=generator)
    scales = _neighbour_distance(means).clamp_min(1e-4)[:, None].expand(-1, 3)
    quats = torch.zeros(len(means), 4)
    quats[:, 0] = 1.0
    return GaussianField(
        means=means,
        quats=quats,
        log_scales=torch.log(scales).clone(),
        logit_opacities=torch.full(
            (len(means),), math.log(config.init_opacity / (1 - config.init_opacity))
        ),
        sh0=rgb_to_sh0(colors)[:, None, :],
        shN=torch.zeros(len(means), num_sh_bases(config.sh_degree) - 1, 3),
        features=0.01 * torch.randn(len(means), config.feature_dim, generator=generator),
    )


def _neighbour_distance(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Root mean squared distance of each point to its k nearest neighbours (3DGS's initial scale)."""
    out = torch.empty(len(points))
    for start in range(0, len(points), chunk):
        d2 = torch.cdist(points[start : start + chunk], points).square()
        nearest = d2.topk(min(k + 1, len(points)), largest=False).values[:, 1:]
        out[start : start + chunk] = nearest.mean(-1).sqrt()
    return out


class Trainer:
    """Optimises a :class:`FeatureField` on the training views of a dataset."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        teacher_maps: Tensor,
        teacher_dim: int,
        grid_stride: int | None = None,
    ) -> None:
        """``teacher_maps`` [V, h, w, M] holds the teacher's features of every view (train and
        test); ``grid_stride`` is the teacher's stride when its cells tile the image exactly
        (:func:`~feature_splat.teachers.grid_stride`), else None (rendered maps are resampled)."""
        if not dataset.train_indices:
            raise DatasetError("Trainer: the dataset has no training views")
        if min(dataset.width, dataset.height) < MIN_IMAGE_SIDE:
            raise DatasetError(
                f"Trainer: images of {dataset.width}x{dataset.height} pixels; training needs at "
                f"least {MIN_IMAGE_SIDE} per side (SSIM's window)"
            )
        self.config, self.dataset, self.teacher_maps = config, dataset, teacher_maps
        self.stride = grid_stride
        self.scene_scale = scene_scale(dataset)
        torch.manual_seed(config.seed)  # gsplat's split draws from the global generator
        self.view_generator = torch.Generator().manual_seed(config.seed)
        gaussians = initial_gaussians(dataset, config, self.view_generator)
        self.params = gaussians.to_parameters()
        self.decoder = SpeedUpDecoder(
            config.feature_dim,
            teacher_dim,
            hidden=config.decoder_hidden if config.decoder == "mlp" else (),
            identity=config.decoder == "none",
        )
        self.background = torch.nn.Parameter(torch.zeros(3 + config.feature_dim))
        lr = config.lr
        rates = {
            "means": lr.means * self.scene_scale, "quats": lr.quats, "scales": lr.scales,
            "opacities": lr.opacities, "sh0": lr.sh0, "shN": lr.shN, "features": lr.features,
        }  # fmt: skip
        self.optimizers = {
            name: torch.optim.Adam([self.params[name]], lr=rate, eps=1e-15)
            for name, rate in rates.items()
        }
        self.extra_optimizers = {
            "background": torch.optim.Adam([self.background], lr=lr.background)
        }
        if not self.decoder.identity:
            self.extra_optimizers["decoder"] = torch.optim.Adam(
                self.decoder.parameters(), lr=lr.decoder
            )
        d = config.densify
        self.strategy = DefaultStrategy(
            refine_start_iter=d.refine_start, refine_stop_iter=d.refine_stop,
            refine_every=d.refine_every, reset_every=d.reset_every, grow_grad2d=d.grow_grad2d,
            grow_scale3d=d.grow_scale3d, prune_opa=d.prune_opacity, verbose=False,
        )  # fmt: skip
        self.strategy.check_sanity(self.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.view_queue: list[int] = []
        self.step = 0

    # -- the model ------------------------------------------------------------------------------
    def active_sh_degree(self) -> int:
        return min(self.config.sh_degree, self.step // max(self.config.sh_degree_every, 1))

    def field(self) -> FeatureField:
        """The field as it stands (sharing the trainable tensors)."""
        return FeatureField(
            GaussianField.from_parameters(dict(self.params)),
            self.decoder,
            self.background,
            self.active_sh_degree(),
        )

    # -- one step -------------------------------------------------------------------------------
    def _next_view(self) -> int:
        if not self.view_queue:
            order = torch.randperm(len(self.dataset.train_indices), generator=self.view_generator)
            self.view_queue = [self.dataset.train_indices[i] for i in order.tolist()]
        return self.view_queue.pop()

    def train_step(self) -> dict[str, float]:
        """One optimisation step on one training view; returns losses and the Gaussian count."""
        config = self.config
        view = self._next_view()
        progress = self.step / max(config.iterations - 1, 1)
        means_lr = (
            self.scene_scale
            * config.lr.means
            * (config.lr.means_final / config.lr.means) ** progress
        )
        for group in self.optimizers["means"].param_groups:
            group["lr"] = means_lr

        render = self.field().render(self.dataset.cameras[view], backend=config.backend)
        target = self.dataset.images[view]
        rgb = render.rgb[0]
        if self.dataset.masks is not None:  # invalid pixels are blacked out in both
            valid = self.dataset.masks[view][..., None].to(rgb.dtype)
            rgb, target = rgb * valid, target * valid
        rgb_loss = photometric_loss(rgb, target)
        target_map = self.teacher_maps[view].float()
        cells = to_teacher_cells(
            render.features[0].permute(2, 0, 1)[None], target_map.shape[:2], self.stride
        )[0]
        decoded = self.decoder(cells.permute(1, 2, 0))
        feature_loss = self.feature_loss(decoded, target_map)
        loss = rgb_loss + config.feature_weight * feature_loss

        self.strategy.step_pre_backward(
            self.params, self.optimizers, self.strategy_state, self.step, render.meta
        )
        loss.backward()
        for optimizer in [*self.optimizers.values(), *self.extra_optimizers.values()]:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(
            self.params, self.optimizers, self.strategy_state, self.step, render.meta, packed=False
        )
        self.step += 1
        mse = float(((rgb.detach() - target) ** 2).mean())
        return {
            "loss": float(loss.detach()),
            "feature_loss": float(feature_loss.detach()),
            "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
            "gaussians": len(self.params["means"]),
        }

    def feature_loss(self, decoded: Tensor, target: Tensor) -> Tensor:
        if self.config.feature_loss == "cosine":
            return 1.0 - torch.nn.functional.cosine_similarity(decoded, target, dim=-1).mean()
        return (decoded - target).abs().mean()

    # -- the loop -------------------------------------------------------------------------------
    def train(self, show_progress: bool = True, until: int | None = None) -> None:
        """Run to step ``until`` (default ``config.iterations``), checkpointing every
        ``checkpoint_every`` steps and on Ctrl-C."""
        config = self.config
        run_steps(
            self,
            total=config.iterations,
            until=until,
            checkpoint_every=config.checkpoint_every,
            label="train",
            status=lambda stats: (
                f"loss {stats['loss']:.4f}  PSNR {stats['psnr']:.2f}  N {stats['gaussians']:,}"
            ),
            show_progress=show_progress,
        )

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.config.out / CHECKPOINT_NAME

    def save_checkpoint(self) -> Path:
        """Write every piece of training state atomically."""
        state = {
            "step": self.step,
            "config": self.config.to_dict(),
            "params": {k: v.detach() for k, v in self.params.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "extra_optimizers": {k: v.state_dict() for k, v in self.extra_optimizers.items()},
            "decoder": self.decoder.state_dict(),
            "background": self.background.detach(),
            "strategy_state": self.strategy_state,
            "view_queue": list(self.view_queue),
            "view_generator": self.view_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        return write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self, path: Path | None = None) -> None:
        """Restore the state written by :meth:`save_checkpoint` (tensors and plain containers
        only: the file is read with ``weights_only=True``, so it cannot run code)."""
        path = path or self.checkpoint_path
        state = read_checkpoint(path, "checkpoint")
        params = state.get("params") if isinstance(state, dict) else None
        if not isinstance(params, dict) or not all(isinstance(v, Tensor) for v in params.values()):
            raise CheckpointError(
                f"{path}: params: expected a dict of tensors (a training checkpoint)"
            )
        features = params.get("features")
        if not isinstance(features, Tensor) or features.ndim != 2:
            raise CheckpointError(f"{path}: params.features: expected a tensor [N, F]")
        if features.shape[1] != self.config.feature_dim:
            raise CheckpointError(
                f"{path}: checkpoint has features of shape {list(features.shape)}, the config "
                f"asks for {self.config.feature_dim} channels"
            )
        try:
            self._restore(state)
        except Exception as err:
            raise CheckpointError(f"{path}: does not match this run ({err})") from None

    def _restore(self, state: dict) -> None:
        if set(state["params"]) != set(self.params):
            raise KeyError(f"parameters {sorted(state['params'])}")
        fields = GaussianField.from_parameters(state["params"])  # checks the shapes agree
        fields.check_finite()
        for name, value in state["params"].items():
            self.params[name] = torch.nn.Parameter(value.clone())
            optimizer = self.optimizers[name]
            optimizer.param_groups[0]["params"] = [self.params[name]]
            optimizer.state.clear()
            optimizer.load_state_dict(state["optimizers"][name])
        self.decoder.load_state_dict(state["decoder"])
        with torch.no_grad():
            self.background.copy_(state["background"])
        for name, optimizer in self.extra_optimizers.items():
            optimizer.load_state_dict(state["extra_optimizers"][name])
        self.strategy_state = state["strategy_state"]
        queue = [int(v) for v in state["view_queue"]]
        if not set(queue) <= set(self.dataset.train_indices):
            raise ValueError("its view queue names views that are not training views")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step {step}")
        self.view_queue = queue
        self.view_generator.set_state(state["view_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = step
