"""A user's own scene: RGB-only training, precomputed features, commands without teacher weights,
split control, ray initialisation and near-field veils. Every folder here is written by the tests'
own ray caster (tests/foreign_scene.py), never by feature-splat."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import cli_error
from foreign_scene import FeatureSpec, ForeignScene, write_foreign_scene
from PIL import Image

from feature_splat.cameras import Cameras, look_at
from feature_splat.cli import main
from feature_splat.data import load_dataset
from feature_splat.errors import DatasetError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField
from feature_splat.near_field import find_veils
from feature_splat.run_folder import Run
from feature_splat.teachers import grid_stride
from feature_splat.teachers.precomputed import PrecomputedTeacher
from feature_splat.training.config import TrainConfig
from feature_splat.training.trainer import Trainer, focus_point, place_on_rays, points_on_rays

SMALL = ["--iterations", "12", "--init-points", "400"]


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> ForeignScene:
    """12 views of 32 x 32 with [8, 8, 12] feature maps (stride 4) and label embeddings."""
    folder = tmp_path_factory.mktemp("own") / "scene"
    return write_foreign_scene(folder, views=12, size=32, features=FeatureSpec(dim=12, stride=4))


def _copy_features(scene: ForeignScene, target: Path) -> Path:
    target.mkdir()
    for path in scene.features_folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _precomputed(scene: ForeignScene, out: Path, *more: str) -> list[str]:
    return ["train", str(scene.folder), "--teacher", "precomputed", "--features",
            str(scene.features_folder), "--out", str(out), "--feature-dim", "4", *SMALL, *more]  # fmt: skip


# -- RGB only -----------------------------------------------------------------------------------
def test_rgb_only_run_trains_evaluates_and_renders_without_features(scene, tmp_path, capsys):
    run = tmp_path / "rgb"
    main(["train", str(scene.folder), "--teacher", "none", "--out", str(run), *SMALL])
    field = FeatureField.load(run)
    assert field.gaussians.feature_dim == 0 and not (run / "teacher.npz").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher"] == "none" and "feature_cosine" not in metrics
    assert metrics["psnr"] > 5 and metrics["iterations"] == 12
    main(["eval", str(run)])
    again = json.loads((run / "metrics.json").read_text())
    assert again["psnr"] == pytest.approx(metrics["psnr"]) and again["train_seconds"] > 0
    main(["render", str(run), "--orbit", "2"])
    panel = Image.open(run / "rendered" / "orbit_000.png")
    assert panel.size == (2 * 32, 32)  # RGB | depth: no feature panel
    assert "no features to prompt" in cli_error(["query", str(run), "--text", "box"], capsys)
    edit = ["edit", str(run), "--op", "delete", "--text", "box", "--out", str(tmp_path / "e")]
    assert "RGB only" in cli_error(edit, capsys)
    assert not (tmp_path / "e").exists()
    wrong = ["train", str(scene.folder), "--teacher", "none", "--feature-dim", "8",
             "--out", str(tmp_path / "x")]  # fmt: skip
    assert "RGB only" in cli_error(wrong, capsys)


# -- precomputed features -----------------------------------------------------------------------
def test_precomputed_maps_are_read_as_written_in_every_layout_and_format(scene, tmp_path):
    dataset = load_dataset(scene.folder)
    images = dataset.images.permute(0, 3, 1, 2)
    expected = torch.from_numpy(scene.features).permute(0, 3, 1, 2)  # [V, M, h, w]
    for layout, file_format, dtype in [("hwc", "npy", "float16"), ("chw", "npz", "float32"),
                                       ("chw", "pt", "float16")]:  # fmt: skip
        spec = FeatureSpec(dim=12, stride=4, layout=layout, file_format=file_format, dtype=dtype)
        other = write_foreign_scene(tmp_path / f"{layout}-{file_format}", views=12, size=32,
                                    features=spec)  # fmt: skip
        teacher = PrecomputedTeacher(other.features_folder, dataset)
        assert teacher.layout == layout and teacher.dim == 12 and grid_stride(teacher) == 4
        torch.testing.assert_close(teacher.encode(images[:5]), expected[:5], atol=2e-3, rtol=0)
    assert teacher.language_aligned
    embeddings = teacher.encode_text(["Box", " sky "])
    truth = torch.nn.functional.normalize(torch.from_numpy(scene.class_embeddings[[2, 0]]), dim=-1)
    torch.testing.assert_close(embeddings, truth)


def test_precomputed_files_are_validated_and_named(scene, tmp_path):
    dataset = load_dataset(scene.folder)

    def error(folder: Path, layout: str = "auto") -> str:
        with pytest.raises(DatasetError) as info:
            PrecomputedTeacher(folder, dataset, layout)
        return str(info.value)

    missing = _copy_features(scene, tmp_path / "missing")
    (missing / "frame_00003.npy").unlink()
    assert "no feature map for image images/frame_00003" in error(missing)
    wide = _copy_features(scene, tmp_path / "wide")
    np.save(wide / "frame_00005.npy", np.zeros((8, 8, 7), np.float16))
    message = error(wide)
    assert "frame_00005.npy" in message and "same shape" in message
    nan = _copy_features(scene, tmp_path / "nan")
    values = np.load(nan / "frame_00002.npy")
    values[1, 1, 1] = np.nan
    np.save(nan / "frame_00002.npy", values)
    assert "frame_00002.npy: holds NaN" in error(nan)
    integer = _copy_features(scene, tmp_path / "int")
    np.save(integer / "frame_00001.npy", np.zeros((8, 8, 12), np.int32))
    assert "frame_00001.npy: dtype int32" in error(integer)
    flat = _copy_features(scene, tmp_path / "flat")
    np.save(flat / "frame_00000.npy", np.zeros((64, 12), np.float16))
    assert "frame_00000.npy: shape [64, 12]" in error(flat)
    assert "does not cover" in error(scene.features_folder, "chw")
    both = tmp_path / "both"
    _copy_features(scene, both)
    np.savez(both / "frame_00004.npz", features=np.zeros((8, 8, 12), np.float16))
    assert "several feature maps for image images/frame_00004" in error(both)
    outside = _copy_features(scene, tmp_path / "outside")
    (outside / "index.json").write_text(json.dumps({"images/frame_00000.png": "../x.npy"}))
    assert "lies outside the features folder" in error(outside)


def test_an_index_file_and_a_grid_that_does_not_tile_the_image(scene, tmp_path):
    dataset = load_dataset(scene.folder)
    folder = tmp_path / "indexed"
    (folder / "maps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    index = {}
    for i, name in enumerate(scene.file_names):
        np.save(folder / "maps" / f"{i}.npy", rng.normal(size=(5, 5, 6)).astype(np.float32))
        index[name] = f"maps/{i}.npy"
    (folder / "index.json").write_text(json.dumps(index))
    teacher = PrecomputedTeacher(folder, dataset)
    assert teacher.grid == (5, 5) and grid_stride(teacher) is None  # resampled, not pooled
    assert not teacher.language_aligned
    stored = torch.from_numpy(np.load(folder / "maps" / "7.npy")).permute(2, 0, 1)
    torch.testing.assert_close(teacher.encode(dataset.images[7:8].permute(0, 3, 1, 2))[0], stored)


def test_precomputed_run_answers_label_prompts_and_refuses_unknown_text(scene, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache-dir"
    main(_precomputed(scene, run, "--cache-dir", str(cache)))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher"] == "precomputed" and "feature_cosine" in metrics
    main(["query", str(run), "--text", "sphere", "--labels", "sky", "ground", "sphere"])
    folder = next((run / "queries").glob("sphere-*"))
    summary = json.loads((folder / "query.json").read_text())
    assert len(summary["views"]) == len(Run(run).dataset.test_indices)
    assert Image.open(next(folder.glob("*.png"))).size == (4 * 32, 32)
    message = cli_error(["query", str(run), "--text", "a chair"], capsys)
    assert "'a chair'" in message and "sky, ground, box, sphere, cylinder" in message
    cache_again = tmp_path / "filled-ahead"
    main(["encode", str(scene.folder), "--teacher", "precomputed", "--features",
          str(scene.features_folder), "--cache-dir", str(cache_again)])  # fmt: skip
    assert len(list(cache_again.rglob("frame*.npz"))) == 0  # files are named by image content
    maps = [f for f in cache_again.rglob("*.npz") if f.name != "teacher.npz"]
    assert len(maps) == len(scene.file_names)


def test_commands_on_a_run_need_no_teacher_weights(scene, tmp_path, capsys, caplog):
    """A CLIP run with a cache: after the weights are gone, eval reads the cache, text the run
    saved is answered, and new text names what is missing."""
    open_clip = pytest.importorskip("open_clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16,
              "head_width": 8, "patch_size": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2,
                           "layers": 1}}  # fmt: skip
    (tmp_path / "fs-own-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "fs-own-clip.json")
    weights = tmp_path / "weights" / "clip.pt"
    weights.parent.mkdir()
    torch.save(open_clip.create_model("fs-own-clip", pretrained=None).state_dict(), weights)
    run, cache = tmp_path / "run", tmp_path / "cache-dir"
    main(["train", str(scene.folder), "--teacher", "clip", "--teacher-model", "fs-own-clip",
          "--teacher-checkpoint", str(weights), "--cache-dir", str(cache), "--out", str(run),
          "--feature-dim", "4", *SMALL])  # fmt: skip
    trained = json.loads((run / "metrics.json").read_text())
    weights.unlink()
    main(["eval", str(run)])
    again = json.loads((run / "metrics.json").read_text())
    assert again["feature_cosine"] == pytest.approx(trained["feature_cosine"], abs=1e-5)
    assert again["teacher_config_id"] == trained["teacher_config_id"]
    main(["query", str(run), "--text", "object"])  # saved with the run: a relevancy negative
    message = cli_error(["query", str(run), "--text", "a red box"], capsys)
    assert "not among the texts saved with the run" in message and "clip.pt" in message
    for path in sorted(cache.rglob("*.npz")):  # neither cache nor weights: RGB is still scored
        path.unlink()
    with caplog.at_level("WARNING"):
        main(["eval", str(run)])
    last = json.loads((run / "metrics.json").read_text())
    assert "feature_cosine" not in last and last["psnr"] == pytest.approx(trained["psnr"])
    assert "feature metrics skipped" in caplog.text and "clip.pt" in caplog.text


def test_sam_prompts_on_a_run_need_no_sam_weights(scene, tmp_path):
    """SAM's prompt decoder is saved with the run: point prompts answer as they did with the
    checkpoint, after the checkpoint is gone."""
    pytest.importorskip("segment_anything")
    from feature_splat.teachers.sam import SamTeacher

    weights = tmp_path / "sam_tiny.pth"
    torch.save(SamTeacher.random("tiny").model.state_dict(), weights)
    run = tmp_path / "run"
    main(["train", str(scene.folder), "--teacher", "sam", "--teacher-model", "tiny",
          "--teacher-checkpoint", str(weights), "--cache-dir", str(tmp_path / "cache-dir"),
          "--out", str(run), "--feature-dim", "4", *SMALL])  # fmt: skip
    prompt = ["query", str(run), "--point", "16", "12", "--views", "1", "2"]
    main([*prompt, "--out", str(tmp_path / "with")])
    weights.unlink()
    main([*prompt, "--out", str(tmp_path / "without")])
    main(["eval", str(run)])  # from the cache
    with_weights = json.loads((tmp_path / "with" / "sam.json").read_text())["views"]
    without = json.loads((tmp_path / "without" / "sam.json").read_text())["views"]
    assert without == with_weights
    for name in ("frame_00001.png", "frame_00002.png"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()


# -- splits -------------------------------------------------------------------------------------
def test_split_is_chosen_on_the_command_line_and_stored(scene, tmp_path, capsys):
    run = tmp_path / "every4"
    main(["train", str(scene.folder), "--teacher", "none", "--holdout-every", "4",
          "--out", str(run), *SMALL])  # fmt: skip
    record = json.loads((run / "dataset.json").read_text())
    assert record["held_out"] == ["images/frame_00000", "images/frame_00004", "images/frame_00008"]
    assert record["train_views"] == 9
    named = tmp_path / "named"
    main(["train", str(scene.folder), "--teacher", "none", "--test-views", "frame_00003",
          "images/frame_00007", "--out", str(named), *SMALL])  # fmt: skip
    assert Run(named).dataset.test_indices == [3, 7]
    bad = ["train", str(scene.folder), "--teacher", "none", "--test-views", "frame_99",
           "--out", str(tmp_path / "bad")]  # fmt: skip
    assert "'frame_99' names no view" in cli_error(bad, capsys)
    both = [*bad[:-2], "--holdout-every", "2", "--out", str(tmp_path / "bad")]
    assert "give one of them" in cli_error(both, capsys)


# -- where Gaussians start ----------------------------------------------------------------------
def _ring(n: int, target: torch.Tensor, radius: float = 4.0, size: int = 32) -> Cameras:
    angles = torch.arange(n) * (2 * math.pi / n)
    eyes = torch.stack([radius * torch.cos(angles), radius * torch.sin(angles),
                        torch.full((n,), 1.5)], dim=-1)  # fmt: skip
    K = torch.tensor([[30.0, 0, size / 2], [0, 30.0, size / 2], [0, 0, 1]]).expand(n, 3, 3)
    return Cameras(look_at(eyes, target.expand(n, 3)), K, size, size)


def test_focus_point_is_where_the_cameras_look():
    target = torch.tensor([0.3, -0.2, 0.5])
    torch.testing.assert_close(focus_point(_ring(8, target)), target, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def finer_scene(tmp_path_factory) -> ForeignScene:
    """20 views of 64 x 64 (enough pixels for colours to tell depths apart)."""
    return write_foreign_scene(tmp_path_factory.mktemp("own") / "finer", views=20, size=64)


def _on_a_seen_surface(scene: ForeignScene, cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """[N] bool: the point lies (within 3 % of the depth) on the surface some view sees there."""
    pixels, depths = cameras.project(points)
    truth = torch.from_numpy(scene.depths)
    size = scene.width
    x, y = pixels.unbind(-1)
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size) & (depths > 0)
    xi, yi = x.clamp(0, size - 1).long(), y.clamp(0, size - 1).long()
    seen = truth[torch.arange(len(truth))[:, None], yi, xi]
    return (inside & ((depths - seen).abs() < 0.03 * seen)).any(dim=0)


def test_points_on_rays_start_on_surfaces_or_on_the_far_shell(finer_scene):
    dataset = load_dataset(finer_scene.folder)
    generator = torch.Generator().manual_seed(0)
    means, colors, far = place_on_rays(dataset, 3000, generator)
    focus = focus_point(dataset.cameras)
    radius = 3.0 * float((dataset.cameras.centers - focus).norm(dim=-1).max())
    assert (((means[far] - focus).norm(dim=-1) - radius).abs() < 1e-3 * radius).all()
    # Every point carries the colour of a pixel it projects to, in some training view.
    pixels, depths = dataset.cameras.project(means)
    x, y = pixels.unbind(-1)
    inside = (x >= 0) & (x < 64) & (y >= 0) & (y < 64) & (depths > 0)
    observed = dataset.images[torch.arange(len(dataset))[:, None], y.clamp(0, 63).long(),
                              x.clamp(0, 63).long()]  # fmt: skip
    same = ((observed - colors).abs().amax(-1) < 1e-6) & inside
    assert same.any(dim=0).float().mean() > 0.99
    # The plain sky's pixels go to the far shell, not into the scene.
    sky = torch.from_numpy(finer_scene.images[finer_scene.labels == 0][0])
    sky_coloured = (colors - sky).abs().amax(-1) < 2 / 255
    assert far[sky_coloured].float().mean() > 0.9
    # In the scene, colour agreement finds surfaces far more often than a depth drawn at random
    # in the same range along the same kind of ray.
    chosen = _on_a_seen_surface(finer_scene, dataset.cameras, means[~far]).float().mean()
    drawn = _on_a_seen_surface(finer_scene, dataset.cameras, _random_depths(dataset, 3000))
    assert chosen > 0.25 and chosen > 3 * drawn.float().mean()
    kept, _, on_shell = points_on_rays(dataset, 1000, torch.Generator().manual_seed(0))
    assert len(kept) == 1000 and int(on_shell.sum()) == 100  # the far share is capped at 10 %


def _random_depths(dataset, n: int) -> torch.Tensor:
    """Points on the rays of random training pixels at depths uniform in 0.3-1.7 times the
    camera's distance to the focus (the plain draw, without colour agreement)."""
    generator = torch.Generator().manual_seed(1)
    cameras = dataset.cameras
    views = torch.tensor(dataset.train_indices)[torch.randint(len(dataset.train_indices), (n,),
                                                              generator=generator)]  # fmt: skip
    pixels = torch.rand(n, 2, generator=generator) * torch.tensor([dataset.width, dataset.height])
    K = cameras.Ks[views]
    rays = torch.stack([(pixels[:, 0] - K[:, 0, 2]) / K[:, 0, 0],
                        (pixels[:, 1] - K[:, 1, 2]) / K[:, 1, 1], torch.ones(n)], dim=-1)  # fmt: skip
    distance = (cameras.centers - focus_point(cameras)).norm(dim=-1)[views]
    depth = distance * (0.3 + 1.4 * torch.rand(n, generator=generator))
    world = (rays[:, None, :] @ cameras.viewmats[views, :3, :3])[:, 0, :]
    return cameras.centers[views] + depth[:, None] * world


# -- near-field veils ---------------------------------------------------------------------------
def _one_gaussian(position: list[float], sigma: float, opacity: float = 0.99) -> GaussianField:
    return GaussianField.from_activated(
        torch.tensor([position]), torch.full((1, 3), sigma), torch.tensor([opacity]),
        torch.full((1, 3), 0.5),
    )  # fmt: skip


def test_veils_are_big_gaussians_near_a_camera():
    cameras = _ring(1, torch.zeros(3))
    eye = cameras.centers[0]
    forward = cameras.viewmats[0, 2, :3]
    near = (eye + 0.2 * forward).tolist()
    assert find_veils(_one_gaussian(near, 0.1), cameras, 0.5).tolist() == [True]
    assert find_veils(_one_gaussian(near, 0.001), cameras, 0.5).tolist() == [False]  # small
    assert find_veils(_one_gaussian(near, 0.1, 0.001), cameras, 0.5).tolist() == [False]  # clear
    far = (eye + 3.0 * forward).tolist()
    assert find_veils(_one_gaussian(far, 0.5), cameras, 0.5).tolist() == [False]  # not near
    behind = (eye - 0.2 * forward).tolist()
    assert find_veils(_one_gaussian(behind, 0.1), cameras, 0.5).tolist() == [False]


def test_training_prunes_a_planted_veil(scene):
    dataset = load_dataset(scene.folder)
    config = TrainConfig(str(scene.folder), teacher="none", iterations=5, init_points=200)
    trainer = Trainer(config, dataset, None, 0)
    view = dataset.train_indices[0]
    eye, forward = dataset.cameras.centers[view], dataset.cameras.viewmats[view, 2, :3]
    with torch.no_grad():
        trainer.params["means"][0] = eye + 0.05 * forward
        trainer.params["scales"][0] = math.log(0.2)
        trainer.params["opacities"][0] = 5.0
    assert trainer.prune_veils() >= 1
    cameras = dataset.cameras[torch.tensor(dataset.train_indices)]
    assert not find_veils(trainer.field().gaussians, cameras, 0.1 * trainer.scene_scale).any()
    trainer.train(show_progress=False)  # parameters and optimizer state still agree
    assert trainer.step == 5


def test_the_background_starts_at_the_colour_of_distant_pixels(finer_scene):
    dataset = load_dataset(finer_scene.folder)
    config = TrainConfig(str(finer_scene.folder), teacher="none", init_points=2000)
    background = Trainer(config, dataset, None, 0).background.detach()
    sky = torch.from_numpy(finer_scene.images[finer_scene.labels == 0]).median(dim=0).values
    assert background.shape == (3,)
    torch.testing.assert_close(background, sky, atol=2 / 255, rtol=0)
