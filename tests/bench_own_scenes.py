"""Benchmark: feature-splat on scenes it did not make, trained from the command line as a user would.

Writes nerfstudio folders with the tests' own ray caster (``foreign_scene.py``: no point cloud, no
split lists, a plain or gradient sky) and trains on them with ``feature-splat train``:

- RGB only (``--teacher none``) on each scene (sharp textures under a plain and a gradient sky, and
  soft textures, the smoothness of the built-in worlds), and on the built-in ``tabletop`` world (same
  trainer, same settings; started from its surface points, and without them) for comparison:
  held-out PSNR, the spread over held-out views, the near-field veils left, and an orbit
  contact sheet;
- precomputed features with known truth (``--teacher precomputed``): label-set segmentation
  (argmax against the label embeddings) of held-out views by the field, against ground-truth
  labels, beside the same argmax of the features themselves.

Not a test (nothing here is pass/fail). Run: ``.venv/bin/python tests/bench_own_scenes.py OUT [--runs ...]``;
it prints a Markdown table and writes ``OUT/summary.json`` and ``OUT/*_orbit.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from foreign_scene import CLASS_NAMES, FeatureSpec, write_foreign_scene

from feature_splat.cli import main
from feature_splat.eval.metrics import segment_by_text, segmentation_scores
from feature_splat.io import write_png
from feature_splat.render import orbit_around
from feature_splat.run_folder import Run


def _train(args: list[str]) -> dict:
    try:
        main(["train", *args])
    except SystemExit as exit_:
        if exit_.code:
            raise
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


def _rgb_figures(metrics: dict) -> dict[str, float]:
    views = [row["psnr"] for row in metrics["views"]]
    median = statistics.median(views)
    return {
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "median_view_psnr": median,
        "worst_view_psnr": min(views),
        "worst_below_median": median - min(views),
        "near_field_veils": metrics["near_field_veils"],
        "gaussians": metrics["gaussians"],
        "train_seconds": metrics["train_seconds"],
    }


@torch.no_grad()
def _orbit_sheet(run_dir: Path, out: Path, views: int = 8) -> None:
    """RGB of ``views`` orbit cameras around the field, side by side."""
    run = Run(run_dir)
    cameras = orbit_around(run.field.gaussians.means, run.dataset.cameras, views)
    images = [run.field.render(cameras[i]).rgb[0].clamp(0, 1) for i in range(views)]
    write_png(out, torch.cat(images, dim=1))


@torch.no_grad()
def _segmentation(run_dir: Path, scene) -> dict[str, float]:
    """Held-out label-set segmentation against ground truth: the field's (rendered, decoded per
    pixel) and the precomputed features' own (each pixel takes its cell's argmax)."""
    run = Run(run_dir)
    field, dataset = run.field, run.dataset
    labels = torch.from_numpy(scene.class_embeddings)
    stride = 8
    field_pred, feature_pred, truth = [], [], []
    for view in dataset.test_indices:
        decoded = field.decode(field.render(dataset.cameras[view]).features[0])
        field_pred.append(segment_by_text(decoded, labels).reshape(-1))
        cells = segment_by_text(torch.from_numpy(scene.features[view]), labels)
        pixels = cells.repeat_interleave(stride, 0).repeat_interleave(stride, 1)
        feature_pred.append(pixels[: dataset.height, : dataset.width].reshape(-1))
        truth.append(torch.from_numpy(scene.labels[view]).reshape(-1))
    truth_all = torch.cat(truth)
    result = {}
    for name, pred in (("field", field_pred), ("features", feature_pred)):
        scores = segmentation_scores(torch.cat(pred), truth_all, len(CLASS_NAMES))
        result[f"{name}_accuracy"] = scores["accuracy"]
        result[f"{name}_miou"] = scores["miou"]
    return result


FOREIGN_SCENES = {
    # name: (sky, textures, seed); "plain" also gets precomputed features with known truth.
    "plain": ("plain", "sharp", 0),
    "gradient": ("gradient", "sharp", 1),
    "soft": ("plain", "soft", 0),
}
RUNS = (*FOREIGN_SCENES, "tabletop", "precomputed")


def run(out: Path, iterations: int, runs: tuple[str, ...] = RUNS) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = ["--iterations", str(iterations)]
    summary: dict[str, dict] = {}
    scenes = {}
    for name, (sky, textures, seed) in FOREIGN_SCENES.items():
        if name not in runs and not (name == "plain" and "precomputed" in runs):
            continue
        features = FeatureSpec(dim=32, stride=8, noise=0.3) if name == "plain" else None
        scenes[name] = write_foreign_scene(
            out / f"scene_{name}", views=40, size=128, sky=sky, textures=textures, seed=seed,
            features=features,
        )  # fmt: skip
    for name, scene in scenes.items():
        if name not in runs:
            continue
        sky, textures, _ = FOREIGN_SCENES[name]
        run_dir = out / f"rgb_{name}"
        start = time.perf_counter()
        metrics = _train([str(scene.folder), "--teacher", "none", "--out", str(run_dir), *common])
        summary[f"foreign {sky} sky, {textures} textures, RGB only"] = _rgb_figures(metrics) | {
            "wall_seconds": time.perf_counter() - start
        }
        _orbit_sheet(run_dir, out / f"rgb_{name}_orbit.png")
    for init, label in (("auto", "its surface points"), ("rays", "no points: --init rays")):
        if "tabletop" not in runs:
            break
        world = out / f"rgb_tabletop_{init}"
        metrics = _train(["tabletop", "--teacher", "none", "--width", "128", "--height", "128",
                          "--init", init, "--out", str(world), *common])  # fmt: skip
        summary[f"built-in tabletop ({label}), RGB only"] = _rgb_figures(metrics)
        _orbit_sheet(world, out / f"rgb_tabletop_{init}_orbit.png")
    if "precomputed" in runs:
        plain = scenes["plain"]
        features_run = out / "features_plain"
        metrics = _train([str(plain.folder), "--teacher", "precomputed", "--features",
                          str(plain.features_folder), "--out", str(features_run), *common])  # fmt: skip
        summary[PRECOMPUTED_ROW] = _rgb_figures(metrics) | _segmentation(features_run, plain)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


PRECOMPUTED_ROW = "foreign plain sky, precomputed features"


def _table(summary: dict) -> str:
    keys = ["psnr", "median_view_psnr", "worst_view_psnr", "worst_below_median",
            "near_field_veils", "gaussians", "train_seconds"]  # fmt: skip
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in summary.items():
        cells = [f"{row[k]:.2f}" if isinstance(row[k], float) else f"{row[k]:,}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if PRECOMPUTED_ROW not in summary:
        return "\n".join(lines)
    segmentation = summary[PRECOMPUTED_ROW]
    lines.append("")
    lines.append(
        f"segmentation vs truth (held out): field accuracy {segmentation['field_accuracy']:.4f}, "
        f"mIoU {segmentation['field_miou']:.4f}; features' own accuracy "
        f"{segmentation['features_accuracy']:.4f}, mIoU {segmentation['features_miou']:.4f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=RUNS, help="rows to measure")
    options = parser.parse_args()
    np.set_printoptions(precision=3)
    print(_table(run(options.out, options.iterations, tuple(options.runs))))
