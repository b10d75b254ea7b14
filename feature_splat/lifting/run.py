"""``feature-splat lift``: a run folder from Gaussians made elsewhere and a teacher's features.

Steps: read the Gaussians (a PLY, mapped from nerfstudio's frame when its dataparser transform is
given, or a run folder's field), load the data and the teacher's maps (through the cache), lift
(:mod:`.solve`), optionally refine (:mod:`.refine`), then write and evaluate the run folder as
training does. The output is an ordinary run folder; ``lift.json`` records how it was made.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from rich.console import Console

from feature_splat.errors import CheckpointError, ConfigError, DatasetError
from feature_splat.eval.heldout import evaluate_heldout
from feature_splat.field import FeatureField, is_field_folder
from feature_splat.gaussians import GaussianField
from feature_splat.io import read_ply, write_json
from feature_splat.io.feature_cache import encode_dataset
from feature_splat.io.outputs import prepare_output
from feature_splat.lifting.config import LiftConfig
from feature_splat.lifting.refine import refine_features
from feature_splat.lifting.solve import (
    fit_background,
    lift_features,
    lifted_basis,
    lifted_field,
    solve_iterations,
    teacher_basis,
)
from feature_splat.near_field import scene_scale
from feature_splat.run_folder import (
    METRICS_NAME,
    RUN_KIND,
    holds_run,
    load_scene,
    make_teacher,
    resolved,
    write_manifest,
    write_teacher_files,
)
from feature_splat.teachers import grid_stride

LIFT_RECORD = "lift.json"


@dataclasses.dataclass
class SourceGaussians:
    """The Gaussians to lift onto, and what their source says about rendering them."""

    gaussians: GaussianField
    sh_degree: int
    near_plane: float | None  # scene units; None: from the config and the cameras
    background_rgb: torch.Tensor | None  # None: fitted to the training views


def read_source(path: Path, dataparser_transforms: Path | None) -> SourceGaussians:
    """The Gaussians of a PLY (in the dataset's frame, or mapped from nerfstudio's) or of a run
    folder (its own near plane and background); their features, if any, are dropped."""
    if path.is_dir():
        if dataparser_transforms is not None:
            raise ConfigError(
                "--dataparser-transforms: applies to a PLY; a run folder is in its dataset's frame"
            )
        if not is_field_folder(path):
            raise CheckpointError(f"{path}: holds no field (point_cloud.ply and decoder.pt)")
        field = FeatureField.load(path)
        source = SourceGaussians(
            field.gaussians, field.sh_degree, field.near_plane, field.background[:3]
        )
    else:
        gaussians = read_ply(path)
        if dataparser_transforms is not None:
            from feature_splat.data.nerfstudio import gaussians_to_dataset_frame

            gaussians = gaussians_to_dataset_frame(gaussians, dataparser_transforms)
        source = SourceGaussians(gaussians, gaussians.sh_degree, None, None)
    if len(source.gaussians) == 0:
        raise CheckpointError(f"{path}: holds no Gaussians; lifting needs at least one")
    no_features = source.gaussians.features[:, :0]
    return dataclasses.replace(source, gaussians=source.gaussians.with_features(no_features))


def lift(config: LiftConfig, console: Console | None = None) -> dict[str, object]:
    """Lift, refine if asked, write and evaluate the run folder ``config.out``; returns its
    metrics (also in ``metrics.json``)."""
    console = console or Console()
    start = time.perf_counter()
    train_config = resolved(config.train_config())
    out = train_config.out
    if holds_run(out):
        raise CheckpointError(f"{out}: already holds a run; choose another --out")
    source = read_source(config.gaussians, config.dataparser_transforms)
    dataset = load_scene(train_config)
    if not dataset.train_indices:
        raise DatasetError(f"{config.data}: has no training views (every view is held out)")
    teacher = make_teacher(train_config, dataset)
    prepare_output(out, RUN_KIND, inputs=[dataset.root, config.gaussians])
    teacher_maps = encode_dataset(
        teacher, dataset.images, train_config.cache_dir, train_config.teacher_pca,
        dataset_root=dataset.root,
    )  # fmt: skip
    write_teacher_files(out, teacher, dataset)
    near_plane = source.near_plane
    if near_plane is None:
        near_plane = train_config.near_plane * scene_scale(dataset.cameras)
    train = torch.tensor(dataset.train_indices)
    cameras, maps, stride = dataset.cameras[train], teacher_maps[train], grid_stride(teacher)

    lift_start = time.perf_counter()
    if config.basis == "teacher":
        basis = teacher_basis(maps, config.feature_dim)
        lifted = lift_features(
            source.gaussians, cameras, maps, stride, near_plane, basis, train_config.backend
        )
    else:
        lifted = lift_features(
            source.gaussians, cameras, maps, stride, near_plane, backend=train_config.backend
        )
        basis = lifted_basis(lifted.features, lifted.weights, config.feature_dim)
    background = source.background_rgb
    if background is None:
        background = fit_background(
            source.gaussians, cameras, dataset.images[train], source.sh_degree, near_plane
        )
    field = lifted_field(
        source.gaussians, lifted, basis, config.min_weight, background, source.sh_degree,
        near_plane,
    )  # fmt: skip
    if config.solve_iterations:
        field = solve_iterations(
            field, cameras, maps, basis, stride, config.solve_iterations, lifted.weights,
            train_config.backend,
        )  # fmt: skip
    lift_seconds = time.perf_counter() - lift_start
    refine_seconds, losses = 0.0, []
    if config.refine:
        refine_start = time.perf_counter()
        field, losses = refine_features(
            field, cameras, maps, stride, config.refine, loss=train_config.feature_loss,
            rates=train_config.lr, seed=config.seed, backend=train_config.backend,
        )  # fmt: skip
        refine_seconds = time.perf_counter() - refine_start
    field.save(out)
    write_manifest(out, dataclasses.replace(train_config, sh_degree=source.sh_degree), dataset)
    record = _lift_record(config, lifted.weights, field, lift_seconds, refine_seconds, losses)
    write_json(out / LIFT_RECORD, record)
    metrics = evaluate_heldout(field, dataset, teacher, teacher_maps, out_dir=out)
    metrics |= {
        "gaussians": len(field.gaussians),
        "unseen_gaussians": record["unseen_gaussians"],
        "lift_seconds": lift_seconds,
        "refine_iterations": config.refine,
        "refine_seconds": refine_seconds,
        "total_seconds": time.perf_counter() - start,
        "teacher_config_id": teacher.config_id,
    }
    write_json(out / METRICS_NAME, metrics)
    return metrics


def _lift_record(
    config: LiftConfig,
    weights: torch.Tensor,
    field: FeatureField,
    lift_seconds: float,
    refine_seconds: float,
    losses: list[float],
) -> dict[str, object]:
    unseen = field.unseen if field.unseen is not None else torch.zeros(len(weights), dtype=bool)
    return {
        "gaussians_source": str(config.gaussians.resolve()),
        "dataparser_transforms": None
        if config.dataparser_transforms is None
        else str(config.dataparser_transforms.resolve()),
        "gaussians": len(weights),
        "unseen_gaussians": int(unseen.sum()),
        "min_weight": config.min_weight,
        "weight_quantiles": {
            str(q): float(weights.quantile(q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)
        }
        if len(weights) <= 1 << 24
        else None,
        "feature_dim": config.feature_dim,
        "basis": config.basis,
        "solve_iterations": config.solve_iterations,
        "lift_seconds": lift_seconds,
        "refine_iterations": config.refine,
        "refine_seconds": refine_seconds,
        "refine_first_loss": losses[0] if losses else None,
        "refine_last_loss": losses[-1] if losses else None,
    }
