"""The feed-forward predictor, its training loop, the 3D feature function and the object-mode
evaluation, checked against analytic cases and the object categories' ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.synthetic.object_views import ObjectViews, load_objects
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, quat_to_rotmat
from feature_splat.generalizable.config import (
    GenTrainConfig,
    ObjectDataConfig,
    PredictorConfig,
    TeacherConfig,
)
from feature_splat.generalizable.evaluation import FeatureSource, evaluate_category, headline
from feature_splat.generalizable.network import GaussianPredictor
from feature_splat.generalizable.training import GenTrainer, prepare_targets

TINY = PredictorConfig(feature_dim=4, teacher_dim=8, widths=(8, 16))


def _cameras(n: int, size: int = 16) -> Cameras:
    angles = torch.arange(n) * 2.0
    eyes = torch.stack([2.5 * torch.cos(angles), 2.5 * torch.sin(angles), torch.full((n,), 1.0)], 1)
    K = intrinsics_from_fov(40.0, size, size)
    return Cameras(look_at(eyes, torch.zeros(3)), K.expand(n, 3, 3).clone(), size, size)


def test_predictor_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    model = GaussianPredictor(TINY)
    cameras = _cameras(2)
    fields = model(torch.rand(3, 2, 16, 16, 3), [cameras] * 3)
    assert len(fields) == 3
    assert fields[0].gaussians.means.shape == (2 * 16 * 16, 3)
    assert fields[0].gaussians.features.shape == (2 * 16 * 16, 4)
    render = fields[1].render(_cameras(3))
    assert render.rgb.shape == (3, 16, 16, 3) and render.features.shape == (3, 16, 16, 4)
    decoded = fields[1].decode(render.features)
    assert decoded.shape == (3, 16, 16, 8)
    (render.rgb.mean() + decoded.square().mean() + render.depth.mean()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_predictor_rejects_bad_inputs() -> None:
    model = GaussianPredictor(TINY)
    with pytest.raises(InputShapeError, match="images must be"):
        model(torch.rand(2, 16, 16, 3), [_cameras(1)])
    with pytest.raises(InputShapeError, match="expected 1 Cameras of 2 views"):
        model(torch.rand(1, 2, 16, 16, 3), [_cameras(3)])
    with pytest.raises(InputShapeError, match="divisible"):
        model(torch.rand(1, 1, 15, 15, 3), [_cameras(1, size=15)])


def test_zero_head_places_gaussians_on_pixel_rays_at_the_centre_depth() -> None:
    """With the head's weights at zero and its bias at zero, every Gaussian sits on its pixel's ray
    at the depth of the world origin, with the camera's own orientation (analytic placement)."""
    model = GaussianPredictor(TINY)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[7] = 1.0  # identity quaternion in camera axes
    cameras = _cameras(2)
    field = model(torch.rand(1, 2, 16, 16, 3), [cameras])[0]
    means = field.gaussians.means.view(2, 16, 16, 3)
    for view in range(2):
        camera = means[view] @ cameras.viewmats[view, :3, :3].T + cameras.viewmats[view, :3, 3]
        assert torch.allclose(
            camera[..., 2], cameras.viewmats[view, 2, 3].expand(16, 16), atol=1e-5
        )
        pixels = (camera @ cameras.Ks[view].T)[..., :2] / camera[..., 2:]
        cols, rows = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="xy")
        assert torch.allclose(pixels, torch.stack([cols, rows], -1), atol=1e-4)
        rotations = quat_to_rotmat(field.gaussians.quats.view(2, 256, 4)[view])
        assert torch.allclose(
            rotations, cameras.viewmats[view, :3, :3].T.expand(256, 3, 3), atol=1e-5
        )


def test_views_are_fused() -> None:
    """Changing one input view changes the Gaussians predicted from the other (bottleneck fusion)."""
    torch.manual_seed(0)
    model = GaussianPredictor(TINY)
    images = torch.rand(1, 2, 16, 16, 3)
    before = model(images, [_cameras(2)])[0].gaussians.means[:256]
    images[0, 1] = torch.rand(16, 16, 3)
    after = model(images, [_cameras(2)])[0].gaussians.means[:256]
    assert not torch.allclose(before, after)


def test_features_at_is_exact_for_isolated_gaussians_and_blends_between_two() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    gaussians = GaussianField.from_activated(
        means, torch.full((2, 3), 0.1), torch.tensor([0.9, 0.9]), torch.rand(2, 3),
        features=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    )  # fmt: skip
    field = FeatureField(gaussians, SpeedUpDecoder(2, 2), torch.zeros(5), 0)
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.05, 0.0], [0.5, 0.0, 0.0], [0.5, 3.0, 0.0]])
    features = field.features_at(points)
    assert torch.allclose(features[0], torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(features[1], torch.tensor([0.0, 1.0]), atol=1e-6)
    assert torch.allclose(features[2], torch.tensor([0.5, 0.5]), atol=1e-6)  # equidistant
    assert torch.allclose(features[3], torch.tensor([0.5, 0.5]), atol=1e-6)  # far, still defined


# ----------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("objects")
    data = ObjectDataConfig(
        categories=("chair",), instances=3, views=6, image_size=16, cache_dir=cache
    )
    teacher = TeacherConfig(dim=8, stride=4).build()
    return data, prepare_targets(data.load("train"), teacher)


def _config(out: Path, data: ObjectDataConfig, **overrides) -> GenTrainConfig:
    values = dict(
        out=out, data=data, teacher=TeacherConfig(dim=8), model=TINY, batch_size=2, target_views=2,
        iterations=30, lr=3e-3, checkpoint_every=10,
    )  # fmt: skip
    return GenTrainConfig(**(values | overrides))


def test_a_teacher_stride_that_does_not_divide_the_image_trains(tiny_targets, tmp_path) -> None:
    """Stride 3 on 16-pixel images: 6 cells per side, the last one partial (it used to be read as
    16 // 6 = 2 pixels per cell, and the shapes did not meet)."""
    data, _ = tiny_targets
    teacher = TeacherConfig(dim=8, stride=3)
    targets = prepare_targets(data.load("train"), teacher.build())
    assert targets[0].teacher_maps.shape[-2:] == (6, 6)
    trainer = GenTrainer(_config(tmp_path, data, teacher=teacher, iterations=2), targets)
    losses = trainer.losses([0], [torch.arange(6)], 1)
    assert torch.isfinite(losses["feature"]) and float(losses["feature"]) > 0


def test_training_reduces_the_loss(tiny_targets, tmp_path: Path) -> None:
    data, targets = tiny_targets
    trainer = GenTrainer(_config(tmp_path, data), targets)
    batch = ([0, 1, 2], [torch.arange(6)] * 3, 1)  # a fixed batch, scored before and after
    with torch.no_grad():
        before = trainer.losses(*batch)
    trainer.train(show_progress=False)
    with torch.no_grad():
        after = trainer.losses(*batch)
    assert float(after["total"]) < 0.9 * float(before["total"])
    assert float(after["feature"]) < float(before["feature"])
    assert float(after["rgb"]) < float(before["rgb"])


def test_training_mixes_one_and_two_input_views(tiny_targets, tmp_path: Path) -> None:
    data, targets = tiny_targets
    trainer = GenTrainer(_config(tmp_path, data, input_views=2, iterations=2), targets)
    assert {trainer._sample()[2] for _ in range(20)} == {1, 2}
    trainer.train(show_progress=False)
    assert trainer.step == 2


def test_no_distillation_leaves_the_feature_head_alone(tiny_targets, tmp_path: Path) -> None:
    data, targets = tiny_targets
    trainer = GenTrainer(_config(tmp_path, data, feature_weight=0.0, iterations=3), targets)
    decoder = [p.detach().clone() for p in trainer.model.decoder.parameters()]
    trainer.train(show_progress=False)
    for initial, trained in zip(decoder, trainer.model.decoder.parameters(), strict=True):
        assert torch.equal(initial, trained.detach())


def test_resume_continues_exactly(tiny_targets, tmp_path: Path) -> None:
    data, targets = tiny_targets
    straight = GenTrainer(_config(tmp_path / "a", data, iterations=20), targets)
    straight.train(show_progress=False)
    first = GenTrainer(_config(tmp_path / "b", data, iterations=20), targets)
    first.train(show_progress=False, until=10)
    resumed = GenTrainer(_config(tmp_path / "b", data, iterations=20), targets)
    resumed.load_checkpoint()
    assert resumed.step == 10
    resumed.train(show_progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_without_checkpoint_names_the_file(tiny_targets, tmp_path: Path) -> None:
    data, targets = tiny_targets
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        GenTrainer(_config(tmp_path, data), targets).load_checkpoint()


# ----------------------------------------------------------------------------------------------
# Evaluation against ground truth


class TruthFeatures(FeatureSource):
    """Features from ground truth: the part (one-hot) and closeness to each keypoint in 3D."""

    def __init__(self, objects: list[ObjectViews]) -> None:
        self.name = "truth"
        self.objects = objects

    def point_features(self, index: int, points: Tensor, parts: Tensor | None = None) -> Tensor:
        instance = self.objects[index].instance
        if parts is None:  # the part of the nearest labelled surface point
            surface, labels, _ = self.objects[index].surface_points()
            parts = labels[torch.cdist(points, surface).argmin(1)]
        keypoints = torch.as_tensor(instance.keypoints, dtype=torch.float32)
        closeness = torch.exp(
            -torch.cdist(points, keypoints).square() / (2 * (0.03 * instance.size) ** 2)
        )
        one_hot = torch.nn.functional.one_hot(parts, len(instance.part_names)).float()
        return torch.cat([one_hot, 0.5 * closeness], dim=1)  # the part always dominates

    def view_maps(self, index: int) -> Tensor:
        views = self.objects[index]
        points, parts, _ = views.surface_points()
        features = self.point_features(index, points, parts)
        maps = torch.zeros(*views.parts.shape, features.shape[1])
        maps[views.masks()] = features  # surface_points follows the mask's nonzero order
        return maps


class RandomFeatures(FeatureSource):
    def __init__(self, objects: list[ObjectViews]) -> None:
        self.name = "random"
        self.objects = objects

    def view_maps(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(index)
        return torch.randn(*self.objects[index].parts.shape, 16, generator=generator)

    def point_features(self, index: int, points: Tensor) -> Tensor:
        return torch.randn(points.shape[0], 16, generator=torch.Generator().manual_seed(index))


@pytest.fixture(scope="module")
def chairs(tmp_path_factory: pytest.TempPathFactory) -> list[ObjectViews]:
    cache = tmp_path_factory.mktemp("chairs")
    loaded = load_objects(
        "chair", "test", n_instances=8, n_views=4, size=64, cache_dir=cache, progress=False
    )
    # Label transfer can only be perfect when every instance has the same parts: keep armless chairs.
    arms = loaded[0].instance.part_names.index("arms")
    chosen = [views for views in loaded if not bool((views.parts == arms).any())]
    assert len(chosen) >= 3
    return chosen


def test_evaluation_with_truth_features_is_perfect_and_random_is_chance(chairs) -> None:
    results = evaluate_category(
        chairs, [TruthFeatures(chairs), RandomFeatures(chairs)], pairs=12, surface_points=800
    )
    for task in ("kp2d_cross", "kp2d_novel"):
        scores = results[task]["truth"]["all"]
        assert scores["queries"] > 20
        assert scores["pck"]["10"] == 1.0 and scores["pck"]["5"] >= 0.95, scores
        assert results[task]["random"]["all"]["pck"]["10"] < 0.25
    assert results["kp3d_cross"]["truth"]["all"]["pck"]["0.1"] > 0.9
    assert results["kp3d_cross"]["random"]["all"]["pck"]["0.1"] < 0.25
    for task in ("parts2d_cross", "parts2d_novel", "parts3d_cross"):
        assert headline(results, task, "truth") == 1.0
        assert headline(results, task, "random") < 0.45
    assert results["parts3d_cross"]["truth"]["hidden"]["points"] > 0
    assert not math.isnan(headline(results, "kp3d_cross", "truth", "hidden"))


# ----------------------------------------------------------------------------------------------
# The command line


def test_gen_commands_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """fit-fields -> train with the offline fields -> eval against a baseline -> predict."""
    import json

    from cli_errors import cli_error

    from feature_splat.cli import main

    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path / "cache"))
    data = ["--data.categories", "chair", "table", "--data.views", "6", "--data.image-size", "16"]
    small = ["--model.widths", "8", "16", "--model.feature-dim", "4", "--model.teacher-dim", "8"]
    teacher = ["--teacher.dim", "8"]
    fields = tmp_path / "fields"
    main(["gen", "fit-fields", str(fields), *data, "--data.instances", "2", *teacher,
          "--iterations", "10", "--feature-dim", "4"])  # fmt: skip
    assert len(list(fields.glob("*/*/decoder.pt"))) == 4
    run = tmp_path / "run"
    main(["gen", "train", str(run), *data, "--data.instances", "2", *small, *teacher,
          "--iterations", "4", "--batch-size", "2", "--target-views", "2",
          "--offline-fields", str(fields)])  # fmt: skip
    history = json.loads((run / "history.json").read_text())
    assert "offline_feature" in history[-1]
    wider = ["--model.teacher-dim", "12", "--teacher.dim", "12"]
    error = cli_error(["gen", "train", str(tmp_path / "other"), *data, "--data.instances", "2",
                       *small, *wider, "--offline-fields", str(fields)], capsys)  # fmt: skip
    assert "decodes to 8 channels, the teacher has 12" in error
    args = ["gen", "train", str(run), *data, "--data.instances", "2", *small, *teacher]
    assert "already exists" in cli_error([*args, "--iterations", "4"], capsys)
    changed = cli_error([*args, "--iterations", "6", "--lr", "0.01", "--resume"], capsys)
    assert "--resume with other settings" in changed and "lr: 0.001 -> 0.01" in changed
    main([*args, "--iterations", "6", "--batch-size", "2", "--target-views", "2",
          "--offline-fields", str(fields), "--resume"])  # fmt: skip
    assert json.loads((run / "history.json").read_text())[-1]["step"] == 6
    main(["gen", "eval", str(run), "--baseline", str(run), *data, "--data.instances", "3",
          "--pairs", "4", "--surface-points", "200"])  # fmt: skip
    report = json.loads((run / "eval" / "eval.json").read_text())
    scores = report["categories"]["table"]["kp3d_cross"]
    assert set(scores) == {"model", "no distillation", "teacher 2D"}
    assert (run / "eval" / "chair_transfer.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "predicted"
    main(["gen", "predict", str(run), "--out", str(out), "--views", "0", "1",
          "--image-size", "16", "--orbit", "3"])  # fmt: skip
    field = FeatureField.load(out / "field")
    assert len(field.gaussians) == 2 * 16 * 16 and field.gaussians.feature_dim == 4
    assert (out / "predict.png").read_bytes()[:4] == b"\x89PNG"
