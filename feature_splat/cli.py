"""The ``feature-splat`` command line.

Commands are paths of words (``feature-splat bench raster``); each leaf is a config dataclass
parsed by tyro, so its flags and help come from the dataclass fields and docstrings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
from rich.console import Console

from feature_splat.bench.prompts import PromptBenchConfig, run_prompt_bench
from feature_splat.bench.raster import RasterBenchConfig, run_raster_bench
from feature_splat.bench.sam import SamBenchConfig, run_sam_bench
from feature_splat.bench.speedup import SpeedupBenchConfig, run_speedup_bench
from feature_splat.demo import DemoConfig
from feature_splat.generalizable.commands import (
    FitFieldsConfig,
    GenEvalConfig,
    GenPredictConfig,
    run_eval,
    run_fit_fields,
    run_predict,
)
from feature_splat.generalizable.training import GenTrainConfig, run_training
from feature_splat.training.config import TrainConfig


@dataclass
class EvalConfig:
    """Re-evaluate a run folder on its held-out views."""

    run: tyro.conf.Positional[Path]


@dataclass
class RenderConfig:
    """Render a trained field: dataset views or an orbit; writes RGB, depth and feature PCA PNGs."""

    run: tyro.conf.Positional[Path]
    views: tuple[int, ...] = ()
    """Dataset view indices to render (default: the held-out views)."""
    orbit: int = 0
    """Render this many views on an orbit around the scene instead."""
    look_at: tuple[float, float, float, float, float, float] | None = None
    """Render one camera at EYE looking at TARGET (world coordinates, z up): EX EY EZ TX TY TZ."""
    out: Path | None = None
    """Output folder (default: RUN/rendered)."""


@dataclass
class QueryConfig:
    """Ask a run's field a text prompt (relevancy maps, 3D selection count) or, for a SAM-distilled
    run, SAM point / box prompts on its rendered features."""

    run: tyro.conf.Positional[Path]
    text: str | None = None
    """Text prompt (language-aligned teachers)."""
    point: tuple[int, ...] = ()
    """SAM point prompt(s) as x y pairs in pixels (SAM-distilled runs)."""
    point_labels: tuple[int, ...] = ()
    """1 = foreground, 0 = background, one per point (default: all 1)."""
    box: tuple[float, float, float, float] | None = None
    """SAM box prompt x0 y0 x1 y1 in pixels (SAM-distilled runs)."""
    labels: tuple[str, ...] = ()
    """Also segment the views over this label set."""
    views: tuple[int, ...] = ()
    """Dataset view indices (default: the held-out views)."""
    threshold: float = 0.5
    """Relevancy above which a pixel or a Gaussian counts as selected."""
    out: Path | None = None
    """Output folder (default: RUN/queries/<text>)."""


@dataclass
class EditConfig:
    """Delete, extract or recolour what a text prompt selects; writes a new field to OUT."""

    run: tyro.conf.Positional[Path]
    op: Literal["delete", "extract", "recolour"]
    out: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    text: str | None = None
    """Select by a text prompt (per-Gaussian score above --threshold)."""
    point: tuple[int, ...] = ()
    """Or select by SAM point prompt(s), x y pairs on dataset view --view (SAM-distilled runs)."""
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    """Or a SAM box prompt x0 y0 x1 y1 on --view."""
    view: int = 0
    """Dataset view the SAM prompt is given on; its mask is lifted to 3D."""
    threshold: float = 0.5
    mode: Literal["relevancy", "cosine"] = "cosine"
    """Score thresholded per Gaussian: raw cosine of its decoded feature with the text (Feature
    3DGS's semantics), or LERF relevancy (noisier per Gaussian: hidden Gaussians' features are
    barely constrained by training and sit near relevancy 0.5)."""
    color: tuple[float, float, float] = (0.1, 0.8, 0.1)
    """RGB for --op recolour."""


@dataclass
class EncodeConfig:
    """Encode every view of a dataset with a teacher into the on-disk feature cache (resumable)."""

    data: tyro.conf.Positional[str]
    """A built-in world (room, tabletop, street) or a dataset folder."""
    cache_dir: Path = Path("outputs/cache")
    teacher: Literal["synthetic", "sam", "clip", "lseg", "dino"] = "synthetic"
    teacher_checkpoint: Path | None = None
    """Local weights of a foundation-model teacher."""
    teacher_model: str | None = None
    teacher_dim: int = 512
    teacher_stride: int = 8
    pca: int | None = None
    """Store k PCA coefficients per cell instead of the teacher's full width."""
    batch: int = 8
    width: int = 128
    height: int = 96
    seed: int = 0


@dataclass
class WorldsExportConfig:
    """Export a built-in synthetic world in nerfstudio format (images, cameras, splits)."""

    name: tyro.conf.Positional[str]
    out: tyro.conf.Positional[Path]
    width: int = 128
    height: int = 96
    seed: int = 0


def _train(config: TrainConfig) -> None:
    from feature_splat.training.run import train

    _print_metrics(train(config).metrics, f"run folder: {config.out}")


def _demo(config: DemoConfig) -> None:
    from feature_splat.demo import run_demo

    run_demo(config)


def _eval(config: EvalConfig) -> None:
    from feature_splat.training.run import evaluate_run

    _print_metrics(evaluate_run(config.run), f"metrics: {config.run / 'metrics.json'}")


def _render(config: RenderConfig) -> None:
    from feature_splat.training.run import render_run

    out = render_run(
        config.run,
        views=list(config.views),
        orbit=config.orbit,
        look_at=config.look_at,
        out=config.out,
    )
    Console().print(f"renders: {out}")


def _query(config: QueryConfig) -> None:
    from feature_splat.edit.run import query_run, sam_prompt_run

    prompt = _sam_prompt(config.point, config.point_labels, config.box)
    if prompt is not None:
        summary = sam_prompt_run(config.run, list(config.views), prompt, config.out)
        Console().print(
            f"SAM masks for {len(summary['views'])} views in {config.out or config.run / 'queries' / 'sam'}"
        )
        return
    if config.text is None:
        raise SystemExit("query: give --text, or --point / --box for a SAM-distilled run")
    summary = query_run(
        config.run,
        config.text,
        list(config.labels),
        list(config.views),
        config.threshold,
        config.out,
    )
    Console().print(
        f"'{config.text}': {summary['gaussians_selected']:,} of {summary['gaussians']:,} Gaussians above "
        f"{config.threshold}; PNGs and query.json in {config.out or config.run / 'queries'}"
    )


def _sam_prompt(point: tuple[int, ...], labels: tuple[int, ...], box):
    """A SamPrompt from the command line's flat x y list, or None when there is no SAM prompt."""
    from feature_splat.edit.run import SamPrompt

    if not point and box is None:
        return None
    if len(point) % 2:
        raise SystemExit("--point: expected x y pairs")
    points = list(zip(point[::2], point[1::2], strict=True))
    return SamPrompt(points=points, point_labels=list(labels), box=box)


def _edit(config: EditConfig) -> None:
    from feature_splat.edit.run import edit_run

    prompt = _sam_prompt(config.point, config.point_labels, config.box)
    if config.text is None and prompt is None:
        raise SystemExit("edit: give --text, or --point / --box (SAM-distilled runs)")
    summary = edit_run(
        config.run, config.op, config.out, text=config.text, sam_prompt=prompt, sam_view=config.view,
        threshold=config.threshold, mode=config.mode, rgb=config.color,
    )  # fmt: skip
    Console().print(
        f"{config.op} ({config.text or 'SAM prompt'}): {summary['selected']:,} Gaussians selected; "
        f"{summary['gaussians_after']:,} remain in {config.out}"
    )


def _encode(config: EncodeConfig) -> None:
    from feature_splat.io.feature_cache import FeatureCache
    from feature_splat.training.run import load_scene, make_teacher

    train_config = TrainConfig(
        data=config.data, teacher=config.teacher, teacher_checkpoint=config.teacher_checkpoint,
        teacher_model=config.teacher_model, teacher_dim=config.teacher_dim,
        teacher_stride=config.teacher_stride, width=config.width, height=config.height,
        seed=config.seed,
    )  # fmt: skip
    dataset = load_scene(train_config)
    cache = FeatureCache(config.cache_dir, make_teacher(train_config, dataset), config.pca)
    start = time.perf_counter()
    cache.encode(dataset.images, batch=config.batch)
    folder, size = cache.folder_of(dataset.images), cache.size_bytes_of(dataset.images)
    Console().print(
        f"{len(dataset)} views in {folder}: {size / 2**20:.2f} MB, "
        f"{size / len(dataset) / 1024:.1f} KB per image ({time.perf_counter() - start:.1f} s)"
    )


def _worlds_export(config: WorldsExportConfig) -> None:
    from feature_splat.data.nerfstudio import export_nerfstudio
    from feature_splat.data.synthetic import load_world

    dataset = load_world(config.name, width=config.width, height=config.height, seed=config.seed)
    Console().print(f"exported {len(dataset)} views to {export_nerfstudio(dataset, config.out)}")


def _print_metrics(metrics: dict, where: str) -> None:
    console = Console()
    shown = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    for key, value in shown.items():
        console.print(
            f"  {key:<28} {value:.4f}" if isinstance(value, float) else f"  {key:<28} {value}"
        )
    console.print(where)


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable[[Any], Any]
    summary: str


COMMANDS: dict[tuple[str, ...], Command] = {
    ("demo",): Command(DemoConfig, _demo, "the main job: distil, evaluate, query a built-in world"),
    ("train",): Command(TrainConfig, _train, "distil a teacher into a Gaussian feature field"),
    ("eval",): Command(EvalConfig, _eval, "re-evaluate a run folder on its held-out views"),
    ("render",): Command(
        RenderConfig, _render, "render a run's field at dataset views or an orbit"
    ),
    ("query",): Command(
        QueryConfig, _query, "text prompt on a run: relevancy maps and 3D selection"
    ),
    ("edit",): Command(EditConfig, _edit, "delete / extract / recolour what a text prompt selects"),
    ("encode",): Command(
        EncodeConfig, _encode, "cache a teacher's features of every view (resumable)"
    ),
    ("worlds", "export"): Command(
        WorldsExportConfig, _worlds_export, "export a built-in world in nerfstudio format"
    ),
    ("gen", "train"): Command(
        GenTrainConfig, run_training, "train the feed-forward feature-Gaussian predictor (objects)"
    ),
    ("gen", "eval"): Command(
        GenEvalConfig, run_eval, "keypoint transfer and part co-segmentation vs baselines"
    ),
    ("gen", "predict"): Command(
        GenPredictConfig, run_predict, "predict a feature field from posed image(s), render it"
    ),
    ("gen", "fit-fields"): Command(
        FitFieldsConfig,
        run_fit_fields,
        "per-scene fields of the training objects (offline targets)",
    ),
    ("bench", "raster"): Command(
        RasterBenchConfig, run_raster_bench, "time every rasterizer backend (results.json + PNGs)"
    ),
    ("bench", "prompts"): Command(
        PromptBenchConfig,
        run_prompt_bench,
        "text prompts, 3D selection, deletion vs a world's truth",
    ),
    ("bench", "sam"): Command(
        SamBenchConfig, run_sam_bench, "SAM from any view: masks and latency vs the image encoder"
    ),
    ("bench", "speedup"): Command(
        SpeedupBenchConfig,
        run_speedup_bench,
        "speed-up decoder: F channels + decoder vs direct F = M",
    ),
}


def _usage() -> str:
    lines = ["usage: feature-splat COMMAND [OPTIONS]", "", "commands:"]
    for words, command in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {command.summary}")
    lines.append("\n'feature-splat COMMAND --help' lists a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``feature-splat`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, command in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            config = tyro.cli(
                command.config,
                args=argv[len(words) :],
                prog=f"feature-splat {' '.join(words)}",
                description=command.summary,
            )
            command.run(config)
            return
    print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
    if argv and argv[0] not in ("-h", "--help"):
        raise SystemExit(2)


if __name__ == "__main__":
    main()
