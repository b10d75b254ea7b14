"""``feature-splat bench train-step``: seconds per training step, and the losses it produced.

Each case (a built-in world at a size and feature width) is trained from the same seed for
``warmup + steps`` steps at each thread count, in this process; the warm-up steps (compilation,
first-touch memory) are not timed. The losses of every step are kept, so two runs of this benchmark
(``--baseline`` names the other one's results.json, for example one made on an earlier commit)
are compared both for speed and for whether they computed the same thing. Never run as a test.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from feature_splat.bench.config import TrainStepBenchConfig
from feature_splat.errors import ConfigError
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.training.config import TrainConfig


def _train_case(config: TrainConfig, threads: int, warmup: int, steps: int) -> dict[str, Any]:
    """Train ``warmup + steps`` steps; per-step seconds of the timed ones and every step's loss."""
    from feature_splat.io.feature_cache import encode_dataset
    from feature_splat.run_folder import load_scene, make_teacher, resolved
    from feature_splat.teachers import grid_stride
    from feature_splat.training.trainer import Trainer

    config = resolved(config)
    torch.set_num_threads(threads)
    dataset = load_scene(config)
    teacher = make_teacher(config, dataset)
    maps = encode_dataset(teacher, dataset.images)
    trainer = Trainer(config, dataset, maps, teacher.dim, grid_stride(teacher))
    losses, seconds = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        stats = trainer.train_step()
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
        losses.append(float(stats["loss"]))
    return {
        "seconds_per_step": statistics.median(seconds),
        "mean_seconds_per_step": statistics.fmean(seconds),
        "gaussians": len(trainer.params["means"]),
        "losses": losses,
    }


def _case_key(case: dict[str, Any]) -> tuple:
    return case["world"], case["width"], case["height"], case["feature_dim"], case["threads"]


def _compare(results: list[dict[str, Any]], baseline: Path) -> None:
    """Add, per case, the speed-up over the baseline's same case and the largest loss change."""
    try:
        before = {_case_key(c): c for c in json.loads(baseline.read_text())["results"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"--baseline {baseline}: not a bench train-step results.json ({err})"
        ) from None
    for case in results:
        old = before.get(_case_key(case))
        if old is None or len(old["losses"]) != len(case["losses"]):
            continue
        case["speedup_vs_baseline"] = old["seconds_per_step"] / case["seconds_per_step"]
        case["max_loss_difference_vs_baseline"] = max(
            abs(a - b) for a, b in zip(old["losses"], case["losses"], strict=True)
        )


def run_train_step_bench(
    config: TrainStepBenchConfig, console: Console | None = None
) -> dict[str, Any]:
    """Time the training step of every case at every thread count; writes ``results.json``."""
    console = console or Console()
    out = prepare_output(config.out, "bench-train-step")
    results = []
    cases = [(c, t) for c in config.cases() for t in config.threads]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench train-step", total=len(cases))
        for train_config, threads in cases:
            progress.update(
                task, description=f"{train_config.data} {train_config.width}px {threads} thr"
            )
            measured = _train_case(train_config, threads, config.warmup, config.steps)
            results.append({
                "world": train_config.data, "width": train_config.width,
                "height": train_config.height, "feature_dim": train_config.feature_dim,
                "threads": threads, **measured,
            })  # fmt: skip
            progress.advance(task)
    for case in results:  # thread scaling within this run
        one = next((c for c in results if _case_key(c)[:4] == _case_key(case)[:4]
                    and c["threads"] == 1), None)  # fmt: skip
        if one is not None:
            case["speedup_vs_1_thread"] = one["seconds_per_step"] / case["seconds_per_step"]
    if config.baseline is not None:
        _compare(results, config.baseline)
    report = {
        "benchmark": "train-step",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "results": results,
    }
    write_json(out / "results.json", report)
    console.print(_table(results))
    console.print(f"results: {out / 'results.json'}")
    return report


def _table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="training step (median seconds after warm-up)")
    columns = ("world", "size", "F", "threads", "s/step", "x 1 thread", "x baseline",
               "max |loss diff|")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for c in results:
        table.add_row(
            c["world"], f"{c['width']}x{c['height']}", str(c["feature_dim"]), str(c["threads"]),
            f"{c['seconds_per_step']:.4f}", f"{c.get('speedup_vs_1_thread', float('nan')):.2f}",
            f"{c.get('speedup_vs_baseline', float('nan')):.2f}",
            f"{c.get('max_loss_difference_vs_baseline', float('nan')):.2e}",
        )  # fmt: skip
    return table
