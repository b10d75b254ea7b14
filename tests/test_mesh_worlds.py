"""Real-mesh worlds (pybullet's tiny renderer): projection and depth against analytic truth,
labels, edits, determinism, the cache, and the error without pybullet."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pybullet", reason="the real-mesh worlds render with pybullet")

from feature_splat.cameras import Cameras, intrinsics, look_at
from feature_splat.data.synthetic import (
    MESH_WORLD_NAMES,
    SKY_COLOR,
    WORLD_NAMES,
    MeshObject,
    MeshWorld,
    build_world,
    load_world,
)
from feature_splat.data.synthetic.worlds import OrbitRig
from feature_splat.errors import BackendUnavailableError, DatasetError

WIDTH, HEIGHT = 64, 48
# Unequal focal lengths and an off-centre principal point, so a half-pixel or axis slip shows.
K = intrinsics(58.0, 63.0, 30.3, 26.8)
RIG = OrbitRig(target=(0, 0, 0), radius=3, elevations_degrees=(20, 40), fov_x_degrees=60, seed=0)


def world_of(*objects: MeshObject) -> MeshWorld:
    vocabulary = ("sky", *sorted({o.class_name for o in objects}))
    return MeshWorld("test", 0, objects, RIG, vocabulary)


def tilted_cameras() -> Cameras:
    """Three cameras looking down at the origin, rolled by different tilts of 'up'."""
    eyes = torch.tensor([[2.2, -1.4, 1.6], [-1.8, -1.5, 1.1], [0.4, 2.3, 2.0]])
    ups = torch.tensor([[0.3, 0.2, 1.0], [0.0, 0.0, 1.0], [-0.4, 0.1, 1.0]])
    viewmats = torch.cat([look_at(e, torch.zeros(3), u) for e, u in zip(eyes, ups, strict=True)])
    return Cameras(viewmats, K.expand(3, 3, 3).clone(), WIDTH, HEIGHT)


@pytest.fixture(scope="module")
def tabletop() -> tuple[MeshWorld, Cameras, dict[str, torch.Tensor]]:
    world = build_world("tabletop-real")
    assert isinstance(world, MeshWorld)
    cameras = world.cameras(64, 48, 4)
    return world, cameras, world.render(cameras)


def test_sphere_blobs_lie_where_the_cameras_project_their_centres() -> None:
    cameras = tilted_cameras()
    for centre in [(0.0, 0.0, 0.1), (0.45, -0.3, 0.25), (-0.35, 0.4, 0.0)]:
        sphere = MeshObject("ball", "sphere_small.urdf", centre, scale=5.0)  # radius 0.15 m
        out = world_of(sphere).render(cameras)
        assert set(out["labels"].unique().tolist()) == {0, 1}
        pixels, _ = cameras.project(torch.tensor([centre], dtype=torch.float64))
        for view in range(len(cameras)):
            rows, cols = torch.nonzero(out["instances"][view] == 0, as_tuple=True)
            blob = torch.stack([cols.double().mean() + 0.5, rows.double().mean() + 0.5])
            assert float((blob - pixels[view, 0]).norm()) < 0.35, (centre, view)
            # Its area is about that of a disc of angular radius asin(r / distance).
            distance = float((cameras.centers[view].double() - torch.tensor(centre)).norm())
            radius = math.sqrt(58.0 * 63.0) * math.tan(math.asin(0.15 / distance))
            assert len(rows) == pytest.approx(math.pi * radius**2, rel=0.15), (centre, view)


def test_floor_depth_is_the_analytic_ray_plane_depth() -> None:
    floor = MeshObject("floor", "plane.obj", (0.0, 0.0, 0.0))  # the 30 x 30 m plane z = 0
    cameras = tilted_cameras()
    out = world_of(floor).render(cameras)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    Kd = K.double().numpy()
    rays = np.stack([(u - Kd[0, 2]) / Kd[0, 0], (v - Kd[1, 2]) / Kd[1, 1], np.ones_like(u)], -1)
    for view in range(len(cameras)):
        viewmat = cameras.viewmats[view].double().numpy()
        rotation = viewmat[:3, :3]
        centre = -rotation.T @ viewmat[:3, 3]
        world_rays = rays @ rotation  # camera z = 1 along each ray
        z = -centre[2] / world_rays[..., 2]  # camera depth where the ray meets z = 0
        ground = centre + z[..., None] * world_rays
        hits = (z > 0) & (np.abs(ground[..., :2]) < 15.0).all(-1)
        clear = (z > 0) & (np.abs(ground[..., :2]) < 14.5).all(-1) | (z < 0)
        depth = out["depth"][view].double().numpy()
        assert np.array_equal(np.isfinite(depth)[clear], hits[clear])
        assert hits.sum() > 1000
        np.testing.assert_allclose(depth[hits & clear], z[hits & clear], rtol=1e-3, atol=1e-3)
        assert (out["labels"][view].numpy()[hits & clear] == 1).all()
        assert (out["instances"][view].numpy()[~hits & clear] == -1).all()


def test_labels_instances_and_depth_agree_with_the_placed_objects(
    tabletop: tuple[MeshWorld, Cameras, dict[str, torch.Tensor]],
) -> None:
    world, _, out = tabletop
    labels, instances, depth = out["labels"], out["instances"], out["depth"]
    assert out["rgb"].shape == (4, 48, 64, 3) and out["rgb"].dtype == torch.float32
    assert float(out["rgb"].min()) >= 0.0 and float(out["rgb"].max()) <= 1.0
    assert labels.dtype == instances.dtype == torch.int64 and depth.dtype == torch.float32
    class_of = {o.instance_id: world.class_names.index(o.class_name) for o in world.objects}
    assert len(class_of) == len(world.objects)  # every object its own instance
    for instance in instances.unique().tolist():
        seen = labels[instances == instance].unique().tolist()
        assert seen == ([0] if instance == -1 else [class_of[instance]])
    assert torch.equal(depth.isinf(), labels == 0)
    present = {world.class_names[k] for k in labels.unique().tolist()}
    assert {"floor", "table", "mug", "rubber duck", "bunny"} <= present
    assert present <= {*world.classes(), "sky"}


def test_without_and_only_edit_exactly_the_chosen_classes(
    tabletop: tuple[MeshWorld, Cameras, dict[str, torch.Tensor]],
) -> None:
    world, cameras, full = tabletop
    names = world.class_names
    mug, duck, table = names.index("mug"), names.index("rubber duck"), names.index("table")
    removed = world.without(["MUGS", "ducks"]).render(cameras)  # case and plurals
    assert removed["labels"].shape == full["labels"].shape
    gone = torch.isin(full["labels"], torch.tensor([mug, duck]))
    assert bool(gone.any())
    assert not bool(torch.isin(removed["labels"], torch.tensor([mug, duck])).any())
    for key in ("labels", "instances", "depth"):
        assert torch.equal(removed[key][~gone], full[key][~gone]), key
    assert bool((removed["depth"][gone] > full["depth"][gone]).all())  # what was behind them

    alone = world.only("Table").render(cameras)
    assert set(alone["labels"].unique().tolist()) == {0, table}
    assert bool((alone["labels"][full["labels"] == table] == table).all())
    (table_id,) = {o.instance_id for o in world.objects if o.class_name == "table"}
    assert set(alone["instances"].unique().tolist()) == {-1, table_id}  # ids survive edits
    assert world.only("table").class_names == world.class_names
    assert world.without(["teddy bears", "bunnies", "dominoes", "cup"]).classes() == [
        c for c in world.classes() if c not in ("teddy bear", "bunny", "domino", "mug")
    ]
    with pytest.raises(DatasetError, match=r"unknown class 'unicorn'.*rubber duck"):
        world.without(["unicorn"])
    with pytest.raises(DatasetError, match="unknown class 'wall'"):
        world.only("wall")  # a class of the playroom, not of this world


def test_renders_are_deterministic_and_anti_aliased(
    tabletop: tuple[MeshWorld, Cameras, dict[str, torch.Tensor]],
) -> None:
    world, cameras, first = tabletop
    again = world.render(cameras)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    ball = world.only("soccer ball").render(cameras[2], supersample=3)
    sky = ball["labels"][0] == 0
    inner = sky.clone()  # sky pixels whose 8 neighbours are sky too
    padded = torch.nn.functional.pad(sky[None, None].float(), (1, 1, 1, 1), value=1.0)
    inner &= torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] == -1.0
    assert bool(inner.any()) and bool((~sky).any())
    expected = torch.tensor(SKY_COLOR, dtype=torch.float32)
    assert torch.allclose(ball["rgb"][0][inner], expected.expand(int(inner.sum()), 3))
    edge = sky & ~inner
    blended = (ball["rgb"][0][edge] - expected).abs().amax(-1) > 1e-3
    assert bool(blended.any())  # some sky pixels next to the ball mix in its colour


def test_mesh_worlds_are_built_in_worlds() -> None:
    assert set(MESH_WORLD_NAMES) <= set(WORLD_NAMES)
    for name in MESH_WORLD_NAMES:
        world = build_world(name)
        assert world.name == name and world.rig.default_views == 48
        assert world.class_names[0] == "sky" and len(world.classes()) >= 10
        assert world.classes() == world.class_names[1:]
        assert world.fingerprint() == build_world(name).fingerprint()
        assert world.fingerprint() != build_world(name, seed=1).fingerprint()
        assert world.without("floor").fingerprint() != world.fingerprint()
    playroom = build_world("playroom-real")
    assert {"wall", "toy robot"} <= set(playroom.classes())
    counts = {c: sum(o.class_name == c for o in playroom.objects) for c in playroom.classes()}
    assert sum(n >= 2 for n in counts.values()) >= 3  # a few classes with several instances


def test_load_world_renders_caches_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"width": 40, "height": 30, "n_views": 9, "n_points": 300, "cache_dir": tmp_path}
    data = load_world("playroom-real", **options)
    world = build_world("playroom-real")
    assert data.class_names == world.class_names
    assert data.images.shape == (9, 30, 40, 3) and data.test_indices == [0, 8]
    assert torch.equal(data.depths.isinf(), data.labels == 0)
    assert torch.equal(data.instances == -1, data.labels == 0)
    assert len(data.labels.unique()) >= 8
    # Points lie on the depth map of the training view they were drawn from: re-project them.
    train = torch.tensor(data.train_indices)
    pixels, z = data.cameras[train].project(data.points)
    col = pixels[..., 0].floor().long().clamp(0, 39)
    row = pixels[..., 1].floor().long().clamp(0, 29)
    views = torch.arange(len(train))[:, None].expand_as(col)
    on_map = (data.depths[train][views, row, col] - z).abs() < 1e-3
    assert data.points.shape == (300, 3) and bool(on_map.any(dim=0).all())

    def no_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered although the cache holds this world")

    monkeypatch.setattr(MeshWorld, "render", no_render)
    cached = load_world("playroom-real", **options)
    for field in ("images", "labels", "instances", "depths", "points", "point_colors"):
        assert torch.equal(getattr(data, field), getattr(cached, field)), field
    assert len(list(tmp_path.glob("playroom-real-*.npz"))) == 1


def test_rendering_without_pybullet_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pybullet", None)  # `import pybullet` now fails
    world = build_world("tabletop-real")
    assert "rubber duck" in world.classes()  # building and naming need no pybullet
    message = "world 'tabletop-real' needs pybullet: pip install 'feature-splat[worlds]'"
    with pytest.raises(BackendUnavailableError) as error:
        world.render(world.cameras(16, 12, 1))
    assert str(error.value) == message


def test_bad_objects_are_refused() -> None:
    with pytest.raises(DatasetError, match=r"MeshObject\.asset"):
        MeshObject("thing", "thing.stl", (0.0, 0.0, 0.0))
    with pytest.raises(DatasetError, match=r"MeshObject\.scale"):
        MeshObject("ball", "soccerball.urdf", (0.0, 0.0, 0.0), scale=(1.0, 2.0, 1.0))
    with pytest.raises(DatasetError, match="not in the vocabulary"):
        MeshWorld("test", 0, (MeshObject("ball", "soccerball.urdf", (0, 0, 0)),), RIG, ("sky",))
    missing = world_of(MeshObject("ball", "no/such.urdf", (0.0, 0.0, 0.0)))
    with pytest.raises(DatasetError, match=r"no file 'no/such\.urdf'"):
        missing.render(tilted_cameras()[0])


def test_every_world_can_be_exported_from_the_command_line() -> None:
    """``worlds export`` lists its world names literally (for tyro's help); they must be all."""
    from typing import get_args, get_type_hints

    from feature_splat.config import WorldsExportConfig
    from feature_splat.data.synthetic import WORLD_NAMES

    hint = get_type_hints(WorldsExportConfig, include_extras=True)["name"]
    literal = get_args(hint)[0]
    assert set(get_args(literal)) == set(WORLD_NAMES)
