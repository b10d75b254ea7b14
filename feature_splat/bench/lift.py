"""``feature-splat bench lift`` and ``bench lift-scale``: lifting against distillation, and lifting
at scale. Never run as tests; figures go to docs/benchmarks.md.

``bench lift``, per world: RGB Gaussians are trained once (``--teacher none``, the demo's
schedule); on those same Gaussians, features come from (a) distillation with the geometry frozen
(the demo's iterations, F and loss, from small random features), (b) lifting, (c) lifting and
solver steps, (d) lifting and a short refinement. The demo's own joint distillation (geometry and
features trained together, so its own Gaussians) is reported beside them. Every field is scored on
the held-out views (feature cosine, text mIoU against the truth and the teacher) and in 3D: each
Gaussian's decoded feature takes the nearest class name, compared with the class of the true
surface it sits on (precision and recall per class, averaged over the classes present).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.bench.config import LiftBenchConfig, LiftScaleBenchConfig
from feature_splat.bench.raster import PeakRSS
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output

_COLUMNS = ("feature_cosine", "text_miou_vs_truth", "text_miou_vs_teacher")


def _selection_3d(field, dataset, teacher) -> dict[str, float]:
    """Macro precision and recall of nearest-class-name labels of the selectable Gaussians."""
    from feature_splat.eval.prompts import selection_scores, surface_labels

    truth = surface_labels(field, dataset)
    texts = torch.nn.functional.normalize(teacher.encode_text(dataset.class_names), dim=-1)
    with torch.no_grad():
        decoded = field.decode(field.gaussians.features)
    predicted = (torch.nn.functional.normalize(decoded, dim=-1) @ texts.T).argmax(1)
    judged = (truth >= 0) & field.selectable()
    rows = [
        selection_scores((predicted == c) & judged, truth, c)
        for c in torch.unique(truth[judged]).tolist()
    ]
    return {
        "precision_3d": sum(r["precision"] for r in rows) / max(len(rows), 1),
        "recall_3d": sum(r["recall"] for r in rows) / max(len(rows), 1),
    }


def _frozen_distillation(rgb_run: Path, config: LiftBenchConfig, out: Path) -> dict[str, object]:
    """Distil features onto a run's RGB Gaussians with the geometry fixed (from random features)."""
    from feature_splat.decoders import SpeedUpDecoder
    from feature_splat.eval.heldout import evaluate_heldout
    from feature_splat.io.feature_cache import encode_dataset
    from feature_splat.lifting import refine_features
    from feature_splat.run_folder import Run, make_teacher
    from feature_splat.teachers import grid_stride

    run = Run(rgb_run)
    dataset = run.dataset
    teacher_config = replace(run.config, teacher="synthetic", feature_dim=config.feature_dim)
    teacher = make_teacher(teacher_config, dataset)
    maps = encode_dataset(teacher, dataset.images)
    rgb = run.field
    generator = torch.Generator().manual_seed(0)
    start_features = 0.01 * torch.randn(len(rgb.gaussians), config.feature_dim, generator=generator)
    start = replace(
        rgb,
        gaussians=rgb.gaussians.with_features(start_features),
        decoder=SpeedUpDecoder(config.feature_dim, teacher.dim),
        background=torch.cat([rgb.background[:3], torch.zeros(config.feature_dim)]),
    )
    train = torch.tensor(dataset.train_indices)
    began = time.perf_counter()
    field, _ = refine_features(
        start, dataset.cameras[train], maps[train], grid_stride(teacher), config.iterations
    )
    seconds = time.perf_counter() - began
    metrics = evaluate_heldout(field, dataset, teacher, maps, out_dir=None)
    field.save(prepare_output(out, "bench-lift-field"))
    return {"seconds": seconds, **{k: metrics[k] for k in _COLUMNS},
            **_selection_3d(field, dataset, teacher)}  # fmt: skip


def _scored_run(folder: Path, seconds: float) -> dict[str, object]:
    from feature_splat.run_folder import Run

    run = Run(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"seconds": seconds, **{k: metrics[k] for k in _COLUMNS},
            **_selection_3d(run.field, run.dataset, run.teacher)}  # fmt: skip


def run_lift_bench(config: LiftBenchConfig, console: Console | None = None) -> dict[str, object]:
    """Every case on every world; prints a table and writes ``results.json`` to ``config.out``."""
    from feature_splat.lifting.config import LiftConfig
    from feature_splat.lifting.run import lift
    from feature_splat.training.config import TrainConfig
    from feature_splat.training.run import train

    console = console or Console()
    out = prepare_output(config.out, "bench-lift")
    results = []
    for world in config.worlds:
        folder = out / world
        base = {"data": world, "iterations": config.iterations}
        rgb = train(TrainConfig(**base, teacher="none", out=folder / "rgb"), console)
        joint = train(TrainConfig(**base, feature_dim=config.feature_dim, out=folder / "joint"))
        rows = {
            "RGB Gaussians (teacher none)": {"seconds": rgb.metrics["train_seconds"],
                                              "psnr": rgb.metrics["psnr"]},
            "joint distillation (the demo)": _scored_run(
                folder / "joint", joint.metrics["train_seconds"]
            ),
            "distillation, geometry frozen": _frozen_distillation(
                folder / "rgb", config, folder / "frozen"
            ),
        }  # fmt: skip
        cases = {
            "lift": {},
            f"lift + {config.solve_iterations} solver step(s)": {
                "solve_iterations": config.solve_iterations
            },
            f"lift + refine {config.refine}": {"refine": config.refine},
        }
        for index, (name, extra) in enumerate(cases.items()):
            lifted = folder / f"lift_{index}"
            metrics = lift(
                LiftConfig(data=world, gaussians=folder / "rgb", out=lifted,
                           feature_dim=config.feature_dim, **extra),
                console,
            )  # fmt: skip
            seconds = metrics["lift_seconds"] + metrics["refine_seconds"]
            rows[name] = _scored_run(lifted, seconds)
        frozen = rows["distillation, geometry frozen"]["seconds"]
        for row in rows.values():
            row["speed_vs_frozen_distillation"] = frozen / row["seconds"]
        results.append({"world": world, "cases": rows})
        _print_world(console, world, rows)
    report = {
        "benchmark": "lift",
        "command": "feature-splat bench lift",
        "feature_dim": config.feature_dim,
        "iterations": config.iterations,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    write_json(out / "results.json", report)
    console.print(f"results: {out / 'results.json'}")
    return report


def _print_world(console: Console, world: str, rows: dict[str, dict]) -> None:
    table = Table(title=f"{world}: features on the same RGB Gaussians (synthetic teacher)")
    for column in ("case", "s", "x vs frozen", "cosine", "mIoU truth", "mIoU teacher",
                   "3D precision", "3D recall"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, row in rows.items():
        cells = [row.get(k) for k in (*_COLUMNS, "precision_3d", "recall_3d")]
        table.add_row(
            name, f"{row['seconds']:.1f}", f"{row['speed_vs_frozen_distillation']:.1f}",
            *("" if v is None else f"{v:.3f}" for v in cells),
        )  # fmt: skip
    console.print(table)


def run_lift_scale_bench(
    config: LiftScaleBenchConfig, console: Console | None = None
) -> dict[str, object]:
    """Lift a random teacher of ``teacher_dim`` channels onto ``gaussians`` random Gaussians, in
    the teacher's PCA basis (F channels lifted) and at its full width; time and peak memory."""
    from feature_splat.bench.scenes import raster_scene
    from feature_splat.cameras import Cameras
    from feature_splat.gaussians import GaussianField
    from feature_splat.lifting import lift_features, teacher_basis

    console = console or Console()
    torch.set_num_threads(config.threads)
    out = prepare_output(config.out, "bench-lift-scale")
    scene = raster_scene(config.gaussians, 1, config.size)
    gaussians = GaussianField.from_activated(
        scene.means, scene.scales, scene.opacities, torch.full((len(scene.means), 3), 0.5),
        quats=scene.quats,
    )  # fmt: skip
    cameras = Cameras(
        scene.viewmats.expand(config.views, -1, -1), scene.Ks.expand(config.views, -1, -1),
        config.size, config.size,
    )  # fmt: skip
    cells = -(-config.size // config.stride)
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(config.views, cells, cells, config.teacher_dim, generator=generator).half()
    warm = lift_features(gaussians[:1000], cameras[:1], maps[:1], config.stride, 0.01)
    del warm  # compiled kernels and first-touch memory out of the way
    rows = {}
    for name in ("teacher PCA basis", "full width"):
        with PeakRSS() as peak:
            began = time.perf_counter()
            basis = teacher_basis(maps, config.feature_dim) if name != "full width" else None
            lifted = lift_features(gaussians, cameras, maps, config.stride, 0.01, basis)
            seconds = time.perf_counter() - began
        rows[name] = {
            "seconds": seconds,
            "seconds_per_view": seconds / config.views,
            "peak_mb": peak.peak_bytes / 2**20,
            "channels_lifted": lifted.features.shape[1],
            "seen_gaussians": int((lifted.weights > 0).sum()),
        }
        del lifted
    report = {
        "benchmark": "lift-scale",
        "command": "feature-splat bench lift-scale",
        "gaussians": config.gaussians,
        "teacher_dim": config.teacher_dim,
        "size": config.size,
        "views": config.views,
        "threads": config.threads,
        "results": rows,
    }
    write_json(out / "results.json", report)
    table = Table(title=f"lifting {config.gaussians:,} Gaussians, M = {config.teacher_dim}, "
                        f"{config.size}x{config.size}, {config.views} views")  # fmt: skip
    for column in ("case", "channels", "s / view", "peak MB"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, str(row["channels_lifted"]), f"{row['seconds_per_view']:.2f}",
                      f"{row['peak_mb']:.0f}")  # fmt: skip
    console.print(table)
    return report
