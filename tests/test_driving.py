"""The driving model (``feature-splat drive``): depth bins, lifting geometry, training, resume,
evaluation and the command line, on tiny drives the tests render themselves."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from feature_splat.cli import main
from feature_splat.generalizable.driving.config import (
    DriveDataConfig,
    DriveEvalConfig,
    DriveTeacherConfig,
    DriveTrainConfig,
    DrivingModelConfig,
)
from feature_splat.generalizable.driving.network import DepthBins, DrivingPredictor
from feature_splat.generalizable.driving.training import (
    DriveTrainer,
    prepare_targets,
    resolve_teacher,
    run_training,
)

TINY = DrivingModelConfig(widths=(8, 16), depth_bins=16, feature_dim=4, teacher_dim=32)


def _data(tmp_path: Path, drives: int = 1) -> DriveDataConfig:
    return DriveDataConfig(
        drives=drives, frames=3, width=32, height=16, cache_dir=tmp_path / "cache"
    )


def _config(tmp_path: Path, name: str, **changes) -> DriveTrainConfig:
    values = dict(
        out=tmp_path / name, data=_data(tmp_path), model=TINY, depth_source="raycast",
        virtual_views=0, iterations=40, lr=3e-3, checkpoint_every=10**6,
        teacher=DriveTeacherConfig(oracle_text="random", dim=32),
    )  # fmt: skip
    values.update(changes)
    return DriveTrainConfig(**values)


@pytest.fixture(scope="module")
def offline_fields(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Offline fields of the one train and the one test drive (a short fit)."""
    from feature_splat.generalizable.driving.config import DriveFitConfig
    from feature_splat.generalizable.driving.offline import run_fit_fields

    root = tmp_path_factory.mktemp("offline")
    for split in ("train", "test"):
        run_fit_fields(
            DriveFitConfig(
                root / "fields",
                data=_data(root),
                split=split,
                iterations=150,
                points=3000,
                teacher=DriveTeacherConfig(oracle_text="random", dim=32),
            )
        )
    return root


def test_offline_fields_give_depth_and_virtual_targets(offline_fields: Path) -> None:
    """The fitted drive field's depth agrees with the world's (it saw every frame), and training
    with its targets at virtual cameras runs and lowers its losses."""
    from feature_splat.eval.metrics import depth_metrics

    config = _config(
        offline_fields, "virtual", data=_data(offline_fields), depth_source="offline",
        offline_fields=offline_fields / "fields", virtual_views=2, iterations=12,
    )  # fmt: skip
    resolve_teacher(config)
    (target,) = prepare_targets(config.data.load("train"), config)
    offline = target.offline
    assert offline.virtual_rgb.shape == (3, 12, 16, 32, 3)
    assert offline.maps.shape == (3, 6, 32, 4, 8)
    assert depth_metrics(target.depth, target.views.depth, 80.0)["delta1"] > 0.6
    trainer = DriveTrainer(config, [target])
    config.out.mkdir()
    trainer.train(show_progress=False)
    history = trainer.history
    assert {"virtual_rgb", "virtual_depth", "virtual_feature", "offline_feature"} <= set(history[0])
    assert all(math.isfinite(value) for value in history[-1].values())


def test_depth_bins_are_a_monotone_bijection_of_the_range() -> None:
    bins = DepthBins(near=0.5, linear_depth=20.0, far=150.0, count=32)
    depth = torch.tensor([0.5, 1.0, 10.0, 19.99, 20.0, 20.01, 80.0, 149.0], dtype=torch.float64)
    torch.testing.assert_close(bins.expand(bins.contract(depth)), depth)
    assert bool((bins.contract(depth).diff() > 0).all())
    # Uniform in depth below 20 m: bin width (20 - 0.5) / 20 m... per unit of s, i.e. linear.
    assert bins.contract(torch.tensor(10.0)).item() == pytest.approx(0.5)
    assert bins.contract(torch.tensor(40.0)).item() == pytest.approx(1.5)
    assert bins.bin_of(torch.tensor([math.inf, 1e9])).tolist() == [31, 31]
    assert bins.bin_of(torch.tensor([0.01])).tolist() == [0]
    # Refinement: a fraction of a bin stays inside that bin's depth interval.
    chosen = torch.arange(32)
    low = bins.depth_in_bin(chosen, torch.zeros(32))
    high = bins.depth_in_bin(chosen, torch.ones(32))
    middle = bins.depth_in_bin(chosen, torch.full((32,), 0.5))
    assert bool(((low < middle) & (middle < high)).all())
    torch.testing.assert_close(high[:-1], low[1:])
    assert bins.bin_of(middle.double()).tolist() == chosen.tolist()
    assert low[0].item() == pytest.approx(0.5) and high[-1].item() == pytest.approx(150.0)


def test_each_gaussian_lies_on_its_pixel_ray_at_the_predicted_depth(tmp_path: Path) -> None:
    """Gaussian (v * H + y) * W + x projects to pixel (x, y) of camera v (no offset), at the
    camera-space depth the head chose."""
    views = _data(tmp_path).load("train")[0]
    model = DrivingPredictor(replace(TINY, max_offset=0.0))
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.normal_(0, 0.5)  # varied depths and bins
        prediction = model(views.rgb[0], views.cameras[0])
    cameras, (w, h) = views.cameras[0], (views.width, views.height)
    means = prediction.field.gaussians.means.view(6, h, w, 3)
    for v in range(6):
        pixels, depth = cameras[v].project(means[v].reshape(-1, 3))
        cols = torch.arange(w).repeat(h) + 0.5
        rows = torch.arange(h).repeat_interleave(w) + 0.5
        torch.testing.assert_close(pixels[0], torch.stack([cols, rows], -1), atol=1e-3, rtol=0)
        torch.testing.assert_close(depth[0], prediction.depth[v].reshape(-1), atol=1e-3, rtol=1e-4)
    assert float(prediction.depth.min()) >= TINY.near - 1e-4
    assert float(prediction.depth.max()) <= TINY.far + 1e-3


def test_training_improves_the_held_out_drive(tmp_path: Path) -> None:
    """Forty steps on one drive: held-out drive's novel-view PSNR and depth error improve."""
    from feature_splat.generalizable.driving.evaluation import _score_views

    config = _config(tmp_path, "run")
    resolve_teacher(config)
    trainer = DriveTrainer(config, prepare_targets(config.data.load("train"), config))
    test = replace(config.data).load("test")[0]

    def scores() -> dict:
        with torch.no_grad():
            field = trainer.model(test.rgb[0], test.cameras[0]).field
        return _score_views(field, test, 1, None, None, config.teacher.stride)

    before = scores()
    trainer.train(show_progress=False)
    after = scores()
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)
    assert after["absrel"] < 0.7 * before["absrel"], (before, after)
    first, last = trainer.history[0]["total"], trainer.history[-1]["total"]
    assert last < first


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = run_training(_config(tmp_path, "straight", iterations=6), show_progress=False)
    halves = _config(tmp_path, "halves", iterations=6)
    resolve_teacher(halves)
    first = DriveTrainer(halves, prepare_targets(halves.data.load("train"), halves))
    first.config.out.mkdir()
    first.train(show_progress=False, until=3)
    resumed = DriveTrainer(halves, prepare_targets(halves.data.load("train"), halves))
    resumed.load_checkpoint()
    resumed.train(show_progress=False)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)


def test_eval_scores_every_method_and_writes_figures(tmp_path: Path, offline_fields: Path) -> None:
    from feature_splat.generalizable.driving.evaluation import run_eval

    run_training(_config(tmp_path, "run", iterations=4), show_progress=False)
    run_training(
        _config(tmp_path, "rgb", iterations=4, feature_weight=0.0, offline_feature_weight=0.0),
        show_progress=False,
    )
    results = run_eval(
        DriveEvalConfig(
            tmp_path / "run",
            rgb_only=tmp_path / "rgb",
            out=tmp_path / "eval",
            offline_fields=offline_fields / "fields",
            data=_data(tmp_path),
            frames_per_drive=1,
            voxel_scale=2.0,
        )
    )
    methods = results["methods"]
    assert set(methods) == {"model", "rgb-only", "teacher lifted", "offline"}
    assert "occupancy" not in methods["rgb-only"] and "queries" not in methods["rgb-only"]["novel"]
    for name in ("model", "teacher lifted", "offline"):
        occupancy = methods[name]["occupancy"]
        assert 0.0 <= occupancy["geometric_iou"] <= 1.0
        assert set(methods[name]["occupancy_sweep"]) == {"0.05", "0.2", "0.5"}
        assert set(methods[name]["novel"]["queries"]) == {
            "car",
            "road",
            "building",
            "person",
            "tree",
        }
    assert set(results["seconds_per_frame"]) >= {"encoder", "lifting", "fusion", "total"}
    stored = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert stored["drives"] == results["drives"]
    assert list((tmp_path / "eval").glob("drive_*.png"))


def test_teacher_lifted_gaussians_carry_their_pixels_teacher_cell(tmp_path: Path) -> None:
    from feature_splat.generalizable.driving.evaluation import lifted_teacher_field
    from feature_splat.generalizable.driving.offline import drive_teacher, teacher_maps

    views = _data(tmp_path).load("train")[0]
    teacher = drive_teacher(views, DriveTeacherConfig(oracle_text="random", dim=32, stride=4))
    maps = teacher_maps(views, teacher)[0]  # [6, M, h, w]
    with torch.no_grad():
        field = DrivingPredictor(TINY)(views.rgb[0], views.cameras[0]).field
    lifted = lifted_teacher_field(field, maps, (views.width, views.height), 4)
    features = lifted.gaussians.features.view(6, views.height, views.width, -1)
    for v, y, x in ((0, 0, 0), (3, 7, 13), (5, 15, 31)):
        torch.testing.assert_close(features[v, y, x], maps[v, :, y // 4, x // 4].float())
    torch.testing.assert_close(lifted.gaussians.means, field.gaussians.means)


def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the command line; it must fail with one line on stderr and exit code 2."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    error = capsys.readouterr().err
    assert info.value.code == 2 and len(error.strip().splitlines()) == 1, error
    return error


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(tmp_path / "run")
    assert "--offline-fields" in _cli_error(capsys, "drive", "train", run)
    sizes = ("--data.width", "36", "--depth-source", "raycast")
    assert "multiple of 8" in _cli_error(capsys, "drive", "train", run, *sizes)
    assert "--frames-per-drive" in _cli_error(
        capsys, "drive", "eval", run, "--data.frames", "3", "--frames-per-drive", "3"
    )
