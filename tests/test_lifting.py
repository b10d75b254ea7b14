"""Feature lifting onto fixed Gaussians (``feature-splat lift``), checked against the world's truth.

The Gaussians are made here, independently of the trainer: every 3rd pixel of the training views
of ``room`` is put back on its true surface (the world's depth), coloured by its pixel, as a small
flat splat. Those Gaussians know nothing of classes, so what lifting gives them comes only from
the teacher's maps; the world's labels then say whether it is right.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from cli_errors import cli_error

from feature_splat.cli import main
from feature_splat.data.synthetic import load_world
from feature_splat.edit import delete
from feature_splat.errors import ConfigError
from feature_splat.eval.prompts import selection_scores, surface_labels
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField
from feature_splat.io import read_ply, write_ply
from feature_splat.lifting import (
    lift_features,
    lifted_basis,
    lifted_field,
    refine_features,
    teacher_basis,
)
from feature_splat.lifting.solve import solve_iterations
from feature_splat.near_field import scene_scale
from feature_splat.prompts import gaussian_scores, select_by_masks
from feature_splat.rasterizer import rasterize
from feature_splat.teachers import grid_stride, to_teacher_cells
from feature_splat.teachers.synthetic import SyntheticTeacher

W, H = 64, 48
ARGS = ["--width", str(W), "--height", str(H)]


def surface_gaussians(dataset, every: int = 3) -> GaussianField:
    """Every ``every``-th pixel of the training views on its true surface (the world's depth),
    as a round splat of 0.6 ``every`` pixels' standard deviation, coloured by its pixel."""
    means, colours, sizes = [], [], []
    for view in dataset.train_indices:
        depth = dataset.depths[view, ::every, ::every]
        v, u = torch.meshgrid(
            torch.arange(0, H, every).float(), torch.arange(0, W, every).float(), indexing="ij"
        )
        hit = torch.isfinite(depth)
        K, viewmat = dataset.cameras.Ks[view], dataset.cameras.viewmats[view]
        z = depth[hit]
        camera_points = torch.stack(
            [(u[hit] + 0.5 - K[0, 2]) / K[0, 0] * z, (v[hit] + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1
        )
        rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
        means.append((camera_points - translation) @ rotation)
        colours.append(dataset.images[view, ::every, ::every][hit])
        sizes.append(0.6 * every * z / K[0, 0])
    sizes = torch.cat(sizes)
    return GaussianField.from_activated(
        means=torch.cat(means),
        scales=torch.stack([sizes, sizes, sizes], 1),
        opacities=torch.full((len(sizes),), 0.8),
        rgb=torch.cat(colours).clamp(0.02, 0.98),
    )


@pytest.fixture(scope="module")
def room():
    dataset = load_world("room", width=W, height=H)
    teacher = SyntheticTeacher.for_dataset(dataset, dim=128)
    images = dataset.images.permute(0, 3, 1, 2)
    maps = torch.cat([teacher.encode(images[i : i + 8]) for i in range(0, len(images), 8)])
    return dataset, teacher, maps.permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def gaussians(room) -> GaussianField:
    return surface_gaussians(room[0])


def lift(room, gaussians, dim=16, min_weight=0.01, basis="teacher") -> FeatureField:
    dataset, teacher, maps = room
    train = torch.tensor(dataset.train_indices)
    near = 0.02 * scene_scale(dataset.cameras)
    cameras, maps, stride = dataset.cameras[train], maps[train], grid_stride(teacher)
    if basis == "teacher":
        pca = teacher_basis(maps, dim)
        lifted = lift_features(gaussians, cameras, maps, stride, near, pca)
    else:
        lifted = lift_features(gaussians, cameras, maps, stride, near)
        pca = lifted_basis(lifted.features, lifted.weights, dim)
    return lifted_field(gaussians, lifted, pca, min_weight, torch.zeros(3), 0, near)


def test_lifted_features_label_gaussians_as_the_world_does(room, gaussians):
    """Each Gaussian's decoded feature, matched to the world's class names, against the class of
    the surface it was placed on: most are right, and the large classes come out nearly pure."""
    dataset, teacher, _ = room
    field = lift(room, gaussians)
    truth = surface_labels(field, dataset)
    texts = torch.nn.functional.normalize(teacher.encode_text(dataset.class_names), dim=-1)
    decoded = torch.nn.functional.normalize(field.decode(field.gaussians.features), dim=-1)
    predicted = (decoded @ texts.T).argmax(1)
    judged = (truth >= 0) & field.selectable()
    accuracy = float((predicted[judged] == truth[judged]).float().mean())
    majority = float(torch.bincount(truth[judged]).max()) / int(judged.sum())
    assert accuracy > 0.7 and accuracy > majority + 0.25, (accuracy, majority)
    for name in ("floor", "wall", "ceiling", "chair"):
        class_id = dataset.class_names.index(name)
        scores = selection_scores((predicted == class_id) & judged, truth, class_id)
        assert scores["precision"] > 0.7, (name, scores)


def test_teacher_basis_lifts_the_projection_of_the_full_width_lift(room, gaussians):
    """Lifting is linear: projecting the maps before lifting equals lifting at the teacher's
    full width and projecting after."""
    dataset, _, maps = room
    train = torch.tensor(dataset.train_indices)
    near = 0.02 * scene_scale(dataset.cameras)
    pca = teacher_basis(maps[train], 8)
    args = (gaussians, dataset.cameras[train], maps[train], 8, near)
    projected = lift_features(*args, pca)
    full = lift_features(*args)
    seen = full.weights > 0
    torch.testing.assert_close(
        projected.features[seen], pca.project(full.features[seen]), atol=2e-4, rtol=1e-4
    )
    assert torch.equal(projected.weights, full.weights)


def test_pca_bases_are_exact_for_low_rank_features():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(40, generator=generator)
    rank_5 = torch.randn(300, 5, generator=generator) @ torch.randn(5, 40, generator=generator)
    features = mean + rank_5
    weights = torch.rand(300, generator=generator)
    basis = lifted_basis(features, weights, 5)
    decoded = basis.decoder()(basis.project(features))
    torch.testing.assert_close(decoded, features, atol=1e-4, rtol=1e-4)
    maps = features.reshape(3, 10, 10, 40)
    basis = teacher_basis(maps, 5)
    torch.testing.assert_close(basis.decoder()(basis.project(maps)), maps, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"feature_dim: expected 1\.\.40"):
        lifted_basis(features, weights, 41)


def test_unseen_gaussians_are_flagged_and_never_selected(room, gaussians, tmp_path):
    dataset, teacher, _ = room
    hidden = GaussianField.from_activated(  # far outside the room: no training view sees them
        means=torch.full((5, 3), 1e3), scales=torch.full((5, 3), 0.05),
        opacities=torch.full((5,), 0.9), rgb=torch.full((5, 3), 0.5),
    )  # fmt: skip
    field = lift(room, GaussianField.cat([gaussians, hidden]))
    n = len(gaussians)
    assert bool(field.unseen[n:].all())
    assert not bool(field.selectable()[n:].any())
    assert bool((field.gaussians.features[n:] == 0).all())  # never seen: the mean feature
    scores = gaussian_scores(field, teacher, "floor", mode="cosine")
    assert bool((scores[n:] == -1.0).all())
    everything = torch.ones(1, H, W, dtype=torch.bool)
    chosen = select_by_masks(field, dataset.cameras[0], everything, min_weight=0.0)
    assert not bool(chosen[field.unseen].any()) and bool(chosen.any())
    field.save(tmp_path)
    loaded = FeatureField.load(tmp_path)
    assert torch.equal(loaded.unseen, field.unseen)
    kept = delete(loaded, torch.arange(len(loaded.gaussians)) < 10)
    assert torch.equal(kept.unseen, field.unseen[10:])


def test_solver_steps_shrink_the_least_squares_residual(room, gaussians):
    """SIRT's steps lower the cell-level residual ||A x - b|| over the training views."""
    dataset, _, maps = room
    train = torch.tensor(dataset.train_indices)
    cameras, maps = dataset.cameras[train], maps[train]
    pca = teacher_basis(maps, 8)
    near = 0.02 * scene_scale(dataset.cameras)
    lifted = lift_features(gaussians, cameras, maps, 8, near, pca)
    field = lifted_field(gaussians, lifted, pca, 0.05, torch.zeros(3), 0, near)

    def residual(f: FeatureField) -> float:
        g, total = f.gaussians, 0.0
        for view in range(len(cameras)):
            out = rasterize(
                g.means, g.quats, g.scales, g.opacities, g.features, cameras.viewmats[view : view + 1],
                cameras.Ks[view : view + 1], W, H, near_plane=near,
            )  # fmt: skip
            target = pca.project(maps[view])
            pooled = to_teacher_cells(out.features.permute(0, 3, 1, 2), target.shape[:2], 8)
            total += float((pooled[0].permute(1, 2, 0) - target).square().sum())
        return total

    errors = [residual(field)]
    for _ in range(2):
        field = solve_iterations(field, cameras, maps, pca, 8, 1, lifted.weights)
        errors.append(residual(field))
    assert errors[2] < errors[1] < errors[0], errors


def test_refinement_lowers_the_distillation_loss(room, gaussians):
    dataset, _, maps = room
    train = torch.tensor(dataset.train_indices)
    field = lift(room, gaussians)
    refined, losses = refine_features(field, dataset.cameras[train], maps[train], 8, 40)
    assert len(losses) == 40
    assert sum(losses[-10:]) < sum(losses[:10])
    assert torch.equal(refined.gaussians.means, field.gaussians.means)  # geometry untouched
    assert not torch.equal(refined.gaussians.features, field.gaussians.features)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lift_command_writes_a_run_that_commands_open(room, gaussians, tmp_path, capsys):
    ply = write_ply(tmp_path / "scene.ply", gaussians)
    before = _digest(ply)
    run = tmp_path / "lifted"
    main(["lift", "room", "--gaussians", str(ply), "--out", str(run), "--teacher-dim", "128",
          "--solve-iterations", "1", "--refine", "5", *ARGS])  # fmt: skip
    assert _digest(ply) == before  # the input is never modified
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "lift.json").read_text())
    assert metrics["text_miou_vs_teacher"] > 0.5 and metrics["feature_cosine"] > 0.9
    assert record["gaussians"] == len(gaussians) and record["refine_iterations"] == 5
    assert metrics["psnr"] > 15  # the background was fitted to the views
    main(["query", str(run), "--text", "sofa", "--out", str(tmp_path / "q")])
    summary = json.loads((tmp_path / "q" / "query.json").read_text())
    assert summary["gaussians_selected"] > 0
    main(["eval", str(run)])
    again = tmp_path / "again"  # a run folder is a source too: same geometry, same near plane
    main(["lift", "room", "--gaussians", str(run), "--out", str(again), "--teacher-dim", "128",
          *ARGS])  # fmt: skip
    assert torch.equal(read_ply(again / "point_cloud.ply").means, gaussians.means)
    capsys.readouterr()


def test_lift_maps_a_ply_from_nerfstudios_frame(room, gaussians, tmp_path):
    """A PLY in nerfstudio's frame (rotated, scaled, moved) with its dataparser_transforms.json
    lifts to the same features as the PLY in the dataset's frame."""
    angle = torch.tensor(0.7)
    c, s = torch.cos(angle), torch.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    translation, scale = torch.tensor([0.3, -0.2, 0.5]), 0.4
    transforms = tmp_path / "dataparser_transforms.json"
    transforms.write_text(json.dumps({
        "transform": torch.cat([rotation, translation[:, None]], 1).tolist(), "scale": scale,
    }))  # fmt: skip
    ns_frame = gaussians.transformed(rotation, scale * translation, scale)  # s (R x + t)
    write_ply(tmp_path / "ns.ply", ns_frame)
    write_ply(tmp_path / "dataset.ply", gaussians)
    for name, extra in (("ns", ["--dataparser-transforms", str(transforms)]), ("dataset", [])):
        main(["lift", "room", "--gaussians", str(tmp_path / f"{name}.ply"), "--out",
              str(tmp_path / f"run_{name}"), "--teacher-dim", "128", *extra, *ARGS])  # fmt: skip
    mapped, plain = (read_ply(tmp_path / f"run_{n}" / "point_cloud.ply") for n in ("ns", "dataset"))
    torch.testing.assert_close(mapped.means, plain.means, atol=1e-4, rtol=1e-4)
    # float round-off in the mapped means moves a few splats across a pixel's alpha threshold
    difference = (mapped.features - plain.features).abs()
    assert float((difference > 1e-3).float().mean()) < 0.01
    assert float(difference.max()) < 0.1 * float(plain.features.abs().max())


def test_lift_errors_are_one_line(room, gaussians, tmp_path, capsys):
    empty = write_ply(tmp_path / "empty.ply", gaussians[torch.zeros(len(gaussians), dtype=bool)])
    out = str(tmp_path / "out")
    line = cli_error(["lift", "room", "--gaussians", str(empty), "--out", out, *ARGS], capsys)
    assert "empty.ply" in line and "no Gaussians" in line
    elsewhere = gaussians.transformed(torch.eye(3), torch.tensor([0.0, 0.0, -1e4]), 1.0)
    far = write_ply(tmp_path / "far.ply", elsewhere)
    line = cli_error(["lift", "room", "--gaussians", str(far), "--out", out, *ARGS], capsys)
    assert "share a frame" in line
    line = cli_error(["lift", "room", "--gaussians", str(tmp_path), "--dataparser-transforms",
                      str(tmp_path / "t.json"), "--out", out, *ARGS], capsys)  # fmt: skip
    assert "--dataparser-transforms" in line
    line = cli_error(["lift", "room", "--gaussians", str(empty), "--teacher", "none"], capsys)
    assert "--teacher none" in line
