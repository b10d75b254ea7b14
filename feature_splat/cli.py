"""The ``feature-splat`` command line.

Commands are tyro subcommands (``feature-splat bench raster``); each leaf is a config dataclass, so
its flags and help come from the dataclass fields and docstrings. The configs import no heavy
package and each command imports what it needs when it runs, so ``--help`` answers at once.

Errors: the tool's own errors (:class:`~feature_splat.errors.FeatureSplatError`) and the
operating system's (a missing or read-only folder, a full disk) print one line, ``error: ...``,
and exit with status 2; Ctrl-C exits with 130; anything else is a bug in feature-splat and prints
``internal error: ...`` and exits with 1. ``--debug`` (anywhere on the command line) or
``FEATURE_SPLAT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import tyro

from feature_splat.bench.config import (
    LiftBenchConfig,
    LiftScaleBenchConfig,
    PromptBenchConfig,
    RasterBenchConfig,
    RooflineBenchConfig,
    SamBenchConfig,
    SpeedupBenchConfig,
    TextBenchConfig,
    TrainStepBenchConfig,
    ViewerBenchConfig,
)
from feature_splat.config import (
    DemoConfig,
    EditConfig,
    EncodeConfig,
    EvalConfig,
    ImportNsConfig,
    QueryConfig,
    RenderConfig,
    ViewConfig,
    WorldsExportConfig,
)
from feature_splat.errors import ConfigError, FeatureSplatError
from feature_splat.generalizable.config import (
    FitFieldsConfig,
    GenEvalConfig,
    GenPredictConfig,
    GenTrainConfig,
)
from feature_splat.generalizable.driving.config import (
    DriveEvalConfig,
    DriveFitConfig,
    DriveTrainConfig,
)
from feature_splat.lifting.config import LiftConfig
from feature_splat.training.config import TrainConfig

EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


def _sub(name: str, help: str, nested: bool = False) -> Any:
    """The tyro marker of a subcommand; ``nested`` ones (under ``gen``, ``bench``, ``worlds``)
    keep their flags unprefixed (``--iterations``, not ``--command.iterations``)."""
    return tyro.conf.subcommand(name, description=help, prefix_name=not nested)


@dataclass
class WorldsListConfig:
    """List the built-in synthetic worlds: their classes and camera rigs."""


@dataclass
class WorldsCommands:
    """The built-in synthetic worlds."""

    command: (
        Annotated[WorldsListConfig, _sub("list", "list the built-in worlds", True)]
        | Annotated[
            WorldsExportConfig, _sub("export", "a built-in world in nerfstudio format", True)
        ]
    )


@dataclass
class GenCommands:
    """Feed-forward feature Gaussians (object mode: keypoint and part transfer)."""

    command: (
        Annotated[GenTrainConfig, _sub("train", "train the feature-Gaussian predictor", True)]
        | Annotated[GenEvalConfig, _sub("eval", "keypoint and part transfer vs baselines", True)]
        | Annotated[GenPredictConfig, _sub("predict", "posed image(s) -> a feature field", True)]
        | Annotated[FitFieldsConfig, _sub("fit-fields", "per-scene fields (offline targets)", True)]
    )


@dataclass
class DriveCommands:
    """Driving scenes: six cameras of one frame in, a feature field and occupancy out."""

    command: (
        Annotated[DriveFitConfig, _sub("fit-fields", "per-scene fields of whole drives", True)]
        | Annotated[DriveTrainConfig, _sub("train", "train the driving predictor", True)]
        | Annotated[DriveEvalConfig, _sub("eval", "held-out drives: views, depth, occupancy", True)]
    )


@dataclass
class BenchCommands:
    """Benchmarks: they measure and write results.json; figures go to docs/benchmarks.md."""

    command: (
        Annotated[RasterBenchConfig, _sub("raster", "rasterizer backends: time, memory", True)]
        | Annotated[
            PromptBenchConfig, _sub("prompts", "prompts and edits vs a world's truth", True)
        ]
        | Annotated[TextBenchConfig, _sub("text", "paraphrased prompts: relevancy vs cosine", True)]
        | Annotated[SamBenchConfig, _sub("sam", "SAM from any view vs the image encoder", True)]
        | Annotated[SpeedupBenchConfig, _sub("speedup", "speed-up decoder vs the full width", True)]
        | Annotated[ViewerBenchConfig, _sub("viewer", "viewer frame and click times", True)]
        | Annotated[LiftBenchConfig, _sub("lift", "lifting vs distillation on the same 3DGS", True)]
        | Annotated[
            LiftScaleBenchConfig, _sub("lift-scale", "lifting time and memory at scale", True)
        ]
        | Annotated[
            TrainStepBenchConfig, _sub("train-step", "seconds per training step, losses", True)
        ]
        | Annotated[
            RooflineBenchConfig, _sub("roofline", "cpu compositing vs the machine's peak", True)
        ]
    )


Command = (
    Annotated[DemoConfig, _sub("demo", "the main job: distil, evaluate, prompt a built-in world")]
    | Annotated[TrainConfig, _sub("train", "distil a teacher into a Gaussian feature field")]
    | Annotated[EvalConfig, _sub("eval", "re-evaluate a run folder on its held-out views")]
    | Annotated[RenderConfig, _sub("render", "render a run's field at dataset views or an orbit")]
    | Annotated[QueryConfig, _sub("query", "text or SAM prompts on a run: maps, 3D selection")]
    | Annotated[EditConfig, _sub("edit", "delete / extract / recolour what a prompt selects")]
    | Annotated[
        LiftConfig, _sub("lift", "features onto Gaussians you have (a 3DGS PLY), no training")
    ]
    | Annotated[EncodeConfig, _sub("encode", "cache a teacher's features of every view")]
    | Annotated[ViewConfig, _sub("view", "open a run in the browser: prompts and edits")]
    | Annotated[ImportNsConfig, _sub("import-ns", "a finished ns-train feature-splat run as a run")]
    | Annotated[GenCommands, _sub("gen", "feed-forward feature Gaussians (object mode)")]
    | Annotated[DriveCommands, _sub("drive", "driving scenes: one frame in (DistillNeRF)")]
    | Annotated[BenchCommands, _sub("bench", "benchmarks (never run as tests)")]
    | Annotated[WorldsCommands, _sub("worlds", "the built-in synthetic worlds")]
)


# -- what each command does -------------------------------------------------------------------
def _console():
    from rich.console import Console

    return Console()


def _print_metrics(metrics: dict, where: str) -> None:
    console = _console()
    for key, value in metrics.items():
        if isinstance(value, float):
            console.print(f"  {key:<28} {value:.4f}")
        elif isinstance(value, int):
            console.print(f"  {key:<28} {value}")
    console.print(where)


def _train(config: TrainConfig) -> None:
    from feature_splat.training.run import train

    _print_metrics(train(config).metrics, f"run folder: {config.out}")


def _lift(config: LiftConfig) -> None:
    from feature_splat.lifting.run import lift

    _print_metrics(lift(config), f"run folder: {config.out}")


def _eval(config: EvalConfig) -> None:
    from feature_splat.eval.heldout import evaluate_run

    metrics = evaluate_run(config.run, allow_torchscript=config.allow_torchscript)
    _print_metrics(metrics, f"metrics: {config.run / 'metrics.json'}")


def _render(config: RenderConfig) -> None:
    from feature_splat.render import render_run

    out = render_run(config.run, list(config.views), config.orbit, config.look_at, config.out)
    _console().print(f"renders: {out}")


def _query(config: QueryConfig) -> None:
    from feature_splat.edit.run import query_run, sam_prompt_run

    prompt = config.sam_prompt()
    if prompt is not None:
        summary = sam_prompt_run(
            config.run, list(config.views), prompt, config.out, config.allow_torchscript
        )
        _console().print(f"SAM masks for {len(summary['views'])} views in {summary['folder']}")
        return
    summary = query_run(
        config.run, config.text, list(config.labels), list(config.views), config.threshold,
        config.out, config.allow_torchscript,
    )  # fmt: skip
    _console().print(
        f"'{config.text}': {summary['gaussians_selected']:,} of {summary['gaussians']:,} Gaussians "
        f"above cosine {summary['thresholds']['cosine']}; PNGs and query.json in {summary['folder']}"
    )


def _edit(config: EditConfig) -> None:
    from feature_splat.edit.run import edit_run

    summary = edit_run(
        config.run, config.op, config.out, text=config.text,
        sam_prompt=config.sam_prompt(),
        sam_view=config.view, threshold=config.threshold, mode=config.mode, rgb=config.color,
        allow_torchscript=config.allow_torchscript,
    )  # fmt: skip
    _console().print(
        f"{config.op} ({config.text or 'SAM prompt'}): {summary['selected']:,} Gaussians selected; "
        f"{summary['gaussians_after']:,} remain in {config.out}"
    )


def _encode(config: EncodeConfig) -> None:
    import time

    from feature_splat.io.feature_cache import FeatureCache, encode_dataset
    from feature_splat.run_folder import load_scene, make_teacher, write_teacher_files

    train_config = config.train_config()
    dataset = load_scene(train_config)
    teacher = make_teacher(train_config, dataset)
    start = time.perf_counter()
    encode_dataset(
        teacher, dataset.images, config.cache_dir, config.pca, dataset_root=dataset.root,
        batch=config.batch,
    )  # fmt: skip
    cache = FeatureCache(config.cache_dir, teacher, config.pca)
    folder = cache.folder_of(dataset.images)
    write_teacher_files(folder, teacher, dataset)  # what a run reading this folder needs to know
    size = cache.size_bytes_of(dataset.images)
    _console().print(
        f"{len(dataset)} views in {folder}: {size / 2**20:.2f} MB, "
        f"{size / len(dataset) / 1024:.1f} KB per image ({time.perf_counter() - start:.1f} s)"
    )


def _import_ns(config: ImportNsConfig) -> None:
    from feature_splat.nerfstudio.import_run import import_nerfstudio_run

    folder, field = import_nerfstudio_run(
        config.config, config.out, data=config.data, feature_cache=config.feature_cache,
        features=config.features,
    )  # fmt: skip
    g = field.gaussians
    _console().print(
        f"imported {len(g):,} Gaussians ({g.feature_dim} feature channels) into {folder}"
    )


def _view(config: ViewConfig) -> None:
    try:
        from feature_splat.viewer import serve
    except ImportError as err:
        raise ConfigError(
            f"view: the viewer needs viser ({err}); pip install 'feature-splat[viewer]'"
        ) from err
    serve(
        config.run, host=config.host, port=config.port, long_side=config.resolution,
        moving_scale=config.moving_scale, allow_torchscript=config.allow_torchscript,
        announce=_console().print,
    )  # fmt: skip


def _worlds_list(config: WorldsListConfig) -> None:
    from rich.table import Table

    from feature_splat.data.synthetic import WORLD_NAMES, build_world

    table = Table(title="built-in worlds (synthetic, with ground truth)")
    for column in ("name", "views", "classes"):
        table.add_column(column)
    for name in WORLD_NAMES:
        world = build_world(name)
        table.add_row(name, str(world.rig.default_views), ", ".join(world.classes()))
    _console().print(table)


def _worlds_export(config: WorldsExportConfig) -> None:
    from feature_splat.data.nerfstudio import export_nerfstudio
    from feature_splat.data.synthetic import load_world
    from feature_splat.io.outputs import prepare_output

    dataset = load_world(
        config.name, width=config.width, height=config.height, seed=config.world_seed
    )
    out = prepare_output(config.out, "world-export")  # a folder made for this may be rewritten
    export_nerfstudio(dataset, out, overwrite=True)
    _console().print(f"exported {len(dataset)} views to {out}")


def _imported(target: str) -> Callable[[Any], Any]:
    """A command that calls ``module:function`` with its config, importing it when it runs."""

    def run(config: Any) -> None:
        module, name = target.split(":")
        getattr(importlib.import_module(module), name)(config)

    return run


RUNNERS: dict[type, Callable[[Any], Any]] = {
    TrainConfig: _train, EvalConfig: _eval, RenderConfig: _render, QueryConfig: _query,
    EditConfig: _edit, EncodeConfig: _encode, ViewConfig: _view, ImportNsConfig: _import_ns,
    WorldsListConfig: _worlds_list, WorldsExportConfig: _worlds_export,
    DemoConfig: _imported("feature_splat.demo:run_demo"), LiftConfig: _lift,
    GenTrainConfig: _imported("feature_splat.generalizable.training:run_training"),
    GenEvalConfig: _imported("feature_splat.generalizable.commands:run_eval"),
    GenPredictConfig: _imported("feature_splat.generalizable.commands:run_predict"),
    FitFieldsConfig: _imported("feature_splat.generalizable.commands:run_fit_fields"),
    DriveFitConfig: _imported("feature_splat.generalizable.driving.offline:run_fit_fields"),
    DriveTrainConfig: _imported("feature_splat.generalizable.driving.training:run_training"),
    DriveEvalConfig: _imported("feature_splat.generalizable.driving.evaluation:run_eval"),
    RasterBenchConfig: _imported("feature_splat.bench.raster:run_raster_bench"),
    PromptBenchConfig: _imported("feature_splat.bench.prompts:run_prompt_bench"),
    TextBenchConfig: _imported("feature_splat.bench.text:run_text_bench"),
    SamBenchConfig: _imported("feature_splat.bench.sam:run_sam_bench"),
    SpeedupBenchConfig: _imported("feature_splat.bench.speedup:run_speedup_bench"),
    ViewerBenchConfig: _imported("feature_splat.bench.viewer:run_viewer_bench"),
    LiftBenchConfig: _imported("feature_splat.bench.lift:run_lift_bench"),
    LiftScaleBenchConfig: _imported("feature_splat.bench.lift:run_lift_scale_bench"),
    TrainStepBenchConfig: _imported("feature_splat.bench.train_step:run_train_step_bench"),
    RooflineBenchConfig: _imported("feature_splat.bench.roofline:run_roofline_bench"),
}  # fmt: skip


# -- the entry point --------------------------------------------------------------------------
def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(" ".join(message.split()), file=sys.stderr)  # always one line
    raise SystemExit(code)


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError)
        and any(s in str(err) for s in ("can't allocate memory", "out of memory", "bad_alloc"))
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``feature-splat`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FEATURE_SPLAT_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    hint = "" if debug else " (--debug shows the traceback)"
    try:
        config = tyro.cli(
            Command, args=argv, prog="feature-splat", config=(tyro.conf.OmitSubcommandPrefixes,)
        )
        while isinstance(config, WorldsCommands | GenCommands | DriveCommands | BenchCommands):
            config = config.command
        RUNNERS[type(config)](config)
    except FeatureSplatError as err:
        _fail(f"error: {err}", EXIT_ERROR, debug)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _fail(f"error: {where}{err.strerror or err}", EXIT_ERROR, debug)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED, debug)
    except Exception as err:  # a bug, or the machine's limits: say so, briefly
        first = (str(err).strip().splitlines() or [""])[0][:300]
        if _out_of_memory(err):
            _fail(f"error: out of memory: {first}", EXIT_ERROR, debug)
        _fail(f"internal error: {type(err).__name__}: {first}{hint}", EXIT_INTERNAL, debug)


if __name__ == "__main__":
    main()
