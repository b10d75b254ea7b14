"""The ``nerfstudio.method_configs`` entry point: ``ns-train feature-splat``.

Splatfacto's trainer settings and optimisers, with three differences: the data parser keeps the
dataset's orientation (it centres and scales only, so ``feature-splat import-ns`` maps the field
back exactly, spherical harmonics included) and holds out every 8th view as ``feature-splat
train`` does; the optimisers gain the features, the decoder and the background; images are
cached on the training device (which may be the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from feature_splat.nerfstudio.datamanager import FeatureDataManagerConfig
from feature_splat.nerfstudio.model import FeatureSplatModelConfig

METHOD_NAME = "feature-splat"
EVERY_8TH_HELD_OUT = {"eval_mode": "interval", "eval_interval": 8}
"""Without split lists in transforms.json, hold out views 0, 8, 16, ... as our loader does."""


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's exponential decay with the learning rates as Python floats. Its own are numpy
    floats, which torch.load's default (``weights_only``, torch >= 2.6) refuses: ns-viewer,
    ns-export and ns-eval could not open the checkpoints."""

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> LRScheduler:
        scheduler = super().get_scheduler(optimizer, lr_init)
        factor = scheduler.lr_lambdas[0]
        scheduler.lr_lambdas = [lambda step: float(factor(step))]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * float(factor(scheduler.last_epoch))
        scheduler._last_lr = [float(group["lr"]) for group in optimizer.param_groups]
        return scheduler


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """:class:`FloatExponentialDecayScheduler`'s settings (nerfstudio's exponential decay)."""

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)


def _adam(lr: float, final: float | None = None, **schedule: float) -> dict:
    scheduler = None
    if final is not None:
        scheduler = FloatExponentialDecaySchedulerConfig(lr_final=final, **schedule)
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def trainer_config() -> TrainerConfig:
    """The method's defaults (splatfacto's, with the differences in the module docstring)."""
    return TrainerConfig(
        method_name=METHOD_NAME,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=30000,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=FeatureDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(
                    load_3D_points=True, orientation_method="none", **EVERY_8TH_HELD_OUT
                )
            ),
            model=FeatureSplatModelConfig(),
        ),
        optimizers={
            "means": _adam(1.6e-4, 1.6e-6, max_steps=30000),
            "features_dc": _adam(0.0025),
            "features_rest": _adam(0.0025 / 20),
            "opacities": _adam(0.05),
            "scales": _adam(0.005),
            "quats": _adam(0.001),
            "features": _adam(0.0025),
            "decoder": _adam(0.001),
            "background": _adam(0.001),
            "camera_opt": _adam(1e-4, 5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
            "bilateral_grid": _adam(
                2e-3, 1e-4, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0
            ),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


feature_splat_method = MethodSpecification(
    config=trainer_config(),
    description="feature-splat: Gaussians with distilled feature channels (CPU or CUDA)",
)
