"""A whole training run: data, teacher features, training, evaluation, and the run folder
(its layout: :mod:`feature_splat.run_folder`).

Everything that can be checked is checked before the run folder is created: the settings, the
data, the teacher and (with ``--resume``) that the stored run has the same settings and data. A run
whose folder exists but that never reached a checkpoint resumes from step 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console

from feature_splat.data import Dataset
from feature_splat.errors import CheckpointError, ConfigError, DatasetError
from feature_splat.eval.heldout import evaluate_heldout
from feature_splat.field import FeatureField
from feature_splat.io import write_json
from feature_splat.io.feature_cache import encode_dataset
from feature_splat.io.outputs import prepare_output
from feature_splat.run_folder import (
    METRICS_NAME,
    RUN_KIND,
    check_resume,
    holds_run,
    load_scene,
    make_teacher,
    resolved,
    write_manifest,
    write_teacher_files,
)
from feature_splat.teachers import Teacher, grid_stride
from feature_splat.training.config import TrainConfig
from feature_splat.training.trainer import Trainer


@dataclass
class RunResult:
    """What a training run produced (everything is also written to the run folder)."""

    metrics: dict[str, object]
    field: FeatureField
    dataset: Dataset
    teacher: Teacher | None


def split_summary(config: TrainConfig, dataset: Dataset) -> str:
    """One line: how many views train and which are held out, and why."""
    if config.test_views:
        rule = "--test-views"
    elif config.holdout_every is not None:
        rule = f"--holdout-every {config.holdout_every}"
    else:
        rule = "the dataset's split"
    names = [dataset.image_names[i] for i in dataset.test_indices]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return (
        f"{len(dataset)} views: {len(dataset.train_indices)} train, {len(names)} held out "
        f"({rule}){': ' + shown if names else ''}"
    )


def train(config: TrainConfig, console: Console | None = None) -> RunResult:
    """Train, evaluate and write the run folder ``config.out``."""
    console = console or Console()
    config = resolved(config)
    out = config.out
    started = holds_run(out)
    if started and not config.resume:
        raise CheckpointError(
            f"{out}: already holds a run; choose another --out, or pass --resume to continue it"
        )
    if config.resume and not started:
        raise CheckpointError(f"{out}: no run to resume here (train without --resume)")
    start = time.perf_counter()
    dataset = load_scene(config)
    if not dataset.train_indices:
        raise DatasetError(f"{config.data}: has no training views (every view is held out)")
    console.print(split_summary(config, dataset))
    if config.resume:
        check_resume(out, config, dataset)
    teacher = make_teacher(config, dataset)
    prepare_output(out, RUN_KIND, inputs=[dataset.root])
    if teacher is None:
        teacher_maps = None
        trainer = Trainer(config, dataset, None, 0)
    else:
        teacher_maps = encode_dataset(
            teacher, dataset.images, config.cache_dir, config.teacher_pca, dataset_root=dataset.root
        )
        write_teacher_files(out, teacher, dataset)
        trainer = Trainer(config, dataset, teacher_maps, teacher.dim, grid_stride(teacher))
    if config.resume and trainer.checkpoint_path.is_file():
        trainer.load_checkpoint()
        console.print(f"resumed at step {trainer.step}")
    elif config.resume:
        console.print("no checkpoint yet: starting from step 0")
    write_manifest(out, config, dataset)
    live = _live_viewer(config, trainer, dataset, teacher, console)
    train_start = time.perf_counter()
    try:
        trainer.train(live=None if live is None else live.control)
    except BaseException:
        if live is not None:
            live.stop()
        raise
    if config.densify.prune_veils:  # veils grown since the last refinement step
        trainer.prune_veils()
    train_seconds = time.perf_counter() - train_start
    field = trainer.field()
    field.save(out)
    trainer.save_checkpoint()
    metrics = evaluate_heldout(field, dataset, teacher, teacher_maps, out_dir=out)
    metrics |= {
        "gaussians": len(field.gaussians),
        "iterations": config.iterations,
        "train_seconds": train_seconds,
        "seconds_per_iteration": train_seconds / config.iterations,
        "total_seconds": time.perf_counter() - start,
        "teacher_config_id": None if teacher is None else teacher.config_id,
    }
    write_json(out / METRICS_NAME, metrics)
    if live is not None:
        live.wait()
    return RunResult(metrics, field, dataset, teacher)


def _live_viewer(
    config: TrainConfig,
    trainer: Trainer,
    dataset: Dataset,
    teacher: Teacher | None,
    console: Console,
):
    """The live viewer of ``--viewer`` (None without it)."""
    if not config.viewer:
        return None
    try:
        from feature_splat.viewer.live import LiveViewer
        from feature_splat.viewer.server import keep_freed_memory
    except ImportError as err:
        raise ConfigError(
            f"--viewer: the viewer needs viser ({err}); pip install 'feature-splat[viewer]'"
        ) from err
    keep_freed_memory()
    return LiveViewer(trainer, dataset, teacher, port=config.viewer_port, announce=console.print)
