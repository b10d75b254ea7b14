"""Benchmark: ``ns-train feature-splat`` against ``feature-splat train``, on the CPU, same world.

Both run in nerfstudio's environment (``.venv-ns``: the same torch and numba builds), one after the
other, on the built-in ``room`` (128 x 96, 48 views, every 8th held out) with the synthetic
oracle's features from one cache, for the same number of iterations:

- ``ours``: ``feature-splat train room`` with its defaults;
- ``ns matched``: ``ns-train feature-splat`` with our trainer's densification (gsplat's
  DefaultStrategy from step 300 to 1000 every 100, gradient threshold 3e-4, pruning below opacity
  0.005 and above 0.1 of the scene scale, no screen-size split, no opacity reset) and the means'
  learning rate decaying over the run;
- ``ns defaults``: the method's defaults (splatfacto's schedule: refinement from step 500 to
  15000, screen-size splits to step 4000, culling below opacity 0.1, an opacity reset every 3000
  steps), cut to the same number of iterations.

The nerfstudio runs are imported (``feature-splat import-ns``) and all three are scored by the
same evaluator (``feature-splat eval``). Seconds per iteration: ours from its training time,
nerfstudio's from its "Train Iter (time)" log (evaluation excluded in both). Not a test.
Run: ``.venv-ns/bin/python tests/bench_nerfstudio.py OUT [--iterations 1500]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from feature_splat.data.nerfstudio import export_nerfstudio
from feature_splat.data.synthetic import load_world
from feature_splat.io.feature_cache import FeatureCache
from feature_splat.run_folder import make_teacher
from feature_splat.training.config import TrainConfig

BIN = Path(sys.executable).parent
FIGURES = ("psnr", "ssim", "feature_cosine", "text_miou_vs_truth", "near_field_veils", "gaussians")


def _matched(iterations: int) -> list[str]:
    model = "--pipeline.model."
    return [
        f"{model}warmup-length", "300", f"{model}stop-split-at", "1000",
        f"{model}refine-every", "100", f"{model}reset-alpha-every", "1000",
        f"{model}densify-grad-thresh", "3e-4", f"{model}cull-alpha-thresh", "0.005",
        f"{model}stop-screen-size-at", "0", f"{model}cull-scale-thresh", "0.1",
        "--optimizers.means.scheduler.max-steps", str(iterations),
    ]  # fmt: skip


def _run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _ns_run(root: Path, name: str, iterations: int, cache: Path, extra: list[str]) -> dict:
    wall = _run(
        [
            str(BIN / "ns-train"), "feature-splat", "--data", "room",
            "--machine.device-type", "cpu", "--max-num-iterations", str(iterations),
            "--vis", "tensorboard", "--output-dir", "outputs", "--experiment-name", name,
            "--timestamp", "run", "--steps-per-eval-image", str(10 * iterations),
            "--steps-per-eval-all-images", str(10 * iterations),
            "--steps-per-save", str(iterations), "--pipeline.datamanager.feature-cache",
            str(cache), *extra,
        ],
        root,
    )  # fmt: skip
    config = root / "outputs" / name / "feature-splat" / "run" / "config.yml"
    (events,) = config.parent.glob("events.out.tfevents.*")
    log = EventAccumulator(str(events))
    log.Reload()
    steps = [e.value for e in log.Scalars("Train Iter (time)")][1:]  # the first one compiles
    # --data room: the export is the world itself, so the import is scored against its truth
    _run([str(BIN / "feature-splat"), "import-ns", str(config), name, "--data", "room"], root)
    _run([str(BIN / "feature-splat"), "eval", name], root)
    metrics = json.loads((root / name / "metrics.json").read_text())
    return {**metrics, "seconds_per_iteration": statistics.median(steps), "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=1500)
    args = parser.parse_args()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    world = load_world("room")
    export_nerfstudio(world, root / "room", overwrite=True)
    _run([str(BIN / "feature-splat"), "encode", "room", "--cache-dir", "cache"], root)
    cache = FeatureCache(root / "cache", make_teacher(TrainConfig(data="room"), world))
    folder = cache.folder_of(world.images)
    n = args.iterations
    rows: dict[str, dict] = {}
    wall = _run(
        [str(BIN / "feature-splat"), "train", "room", "--iterations", str(n), "--out", "ours",
         "--cache-dir", "cache"],
        root,
    )  # fmt: skip
    rows["ours"] = {
        **json.loads((root / "ours" / "metrics.json").read_text()),
        "wall_seconds": wall,
    }
    rows["ns matched"] = _ns_run(root, "ns-matched", n, folder, _matched(n))
    rows["ns defaults"] = _ns_run(root, "ns-defaults", n, folder, [])
    (root / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"| run ({n} iterations) | s / iteration | wall s | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---:|" * (len(FIGURES) + 2))
    for name, row in rows.items():
        cells = [
            f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k)) for k in FIGURES
        ]
        print(f"| {name} | {row['seconds_per_iteration']:.4f} | {row['wall_seconds']:.0f} | "
              + " | ".join(cells) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
