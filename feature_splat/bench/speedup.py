"""``feature-splat bench speedup``: what the speed-up decoder buys.

The same world is trained with F rendered channels + a linear decoder to the teacher's M = 512, for
several F, and with F = M = 512 rendered directly (no decoder), for the same number of iterations.
Each configuration runs in a fresh process (so its peak memory is its own) and reports the median
time per iteration, peak resident memory above the process's start, feature cosine and text mIoU
on held-out views. Everything uses the synthetic oracle teacher. Never run as a test.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from feature_splat.bench.config import SpeedupBenchConfig
from feature_splat.bench.raster import PeakRSS
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.training.config import TrainConfig


def _run_case(train_config: TrainConfig, threads: int) -> dict[str, float]:
    """Train one configuration in this (fresh) process; returns its measurements."""
    from feature_splat.eval.heldout import evaluate_heldout
    from feature_splat.io.feature_cache import encode_dataset
    from feature_splat.run_folder import load_scene, make_teacher
    from feature_splat.teachers import grid_stride
    from feature_splat.training.trainer import Trainer

    torch.set_num_threads(threads)
    dataset = load_scene(train_config)
    teacher = make_teacher(train_config, dataset)
    maps = encode_dataset(teacher, dataset.images)
    with PeakRSS() as peak:
        trainer = Trainer(train_config, dataset, maps, teacher.dim, grid_stride(teacher))
        times = []
        while trainer.step < train_config.iterations:
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
    metrics = evaluate_heldout(trainer.field(), dataset, teacher, maps)
    warm = times[min(20, len(times) - 1) :]
    return {
        "seconds_per_iteration": statistics.median(warm),
        "peak_mb": peak.peak_bytes / 2**20,
        "feature_cosine": float(metrics["feature_cosine"]),
        "text_miou_vs_truth": float(metrics.get("text_miou_vs_truth", float("nan"))),
        "text_miou_vs_teacher": float(metrics.get("text_miou_vs_teacher", float("nan"))),
        "psnr": float(metrics["psnr"]),
        "gaussians": len(trainer.params["means"]),
    }


def run_speedup_bench(
    config: SpeedupBenchConfig, console: Console | None = None
) -> dict[str, object]:
    """Train every configuration; prints a table and writes ``results.json``."""
    console = console or Console()
    out = prepare_output(config.out, "bench-speedup")
    base = TrainConfig(data=config.world, iterations=config.iterations, checkpoint_every=10**9)
    cases = [(f"F={f} + linear decoder", replace(base, feature_dim=f)) for f in config.feature_dims]
    if config.direct:
        m = base.teacher_dim
        cases.append((f"F=M={m} direct", replace(base, feature_dim=m, decoder="none")))
    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, case in cases:
            console.print(f"training {name} for {config.iterations} iterations ...")
            case = replace(case, out=Path(scratch) / name.replace(" ", "_"))
            with context.Pool(1) as pool:
                result = pool.apply(_run_case, (case, config.threads))
            rows.append(
                {"case": name, "feature_dim": case.feature_dim, "decoder": case.decoder, **result}
            )
    direct = next((r for r in rows if r["decoder"] == "none"), None)
    for row in rows:
        if direct is not None:
            row["iteration_speedup_vs_direct"] = (
                direct["seconds_per_iteration"] / row["seconds_per_iteration"]
            )
            row["miou_minus_direct"] = row["text_miou_vs_truth"] - direct["text_miou_vs_truth"]
    report = {
        "benchmark": "speedup",
        "command": "feature-splat bench speedup",
        "teacher": "synthetic oracle",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "results": rows,
    }
    write_json(out / "results.json", report)
    table = Table(
        title=f"speed-up decoder on '{config.world}' ({config.iterations} iterations, synthetic teacher)"
    )
    for column in ("case", "s/iter", "speed-up", "peak MB", "feat cos", "mIoU truth", "PSNR", "N"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["case"], f"{r['seconds_per_iteration']:.4f}", f"{r.get('iteration_speedup_vs_direct', 1.0):.1f}x",
            f"{r['peak_mb']:.0f}", f"{r['feature_cosine']:.3f}", f"{r['text_miou_vs_truth']:.3f}",
            f"{r['psnr']:.2f}", f"{r['gaussians']:,}",
        )  # fmt: skip
    console.print(table)
    console.print(f"results: {out / 'results.json'}")
    return report
