"""Synthetic worlds: the ray-caster against analytic truth, generation, caching and editing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_splat.cameras import Cameras, intrinsics, look_at
from feature_splat.data.synthetic import (
    CLASS_NAMES,
    SKY,
    WORLD_NAMES,
    World,
    build_world,
    load_world,
    render_views,
    resolve_class,
)
from feature_splat.data.synthetic.primitives import (
    Box,
    Capsule,
    Cone,
    Cylinder,
    Primitive,
    Rectangle,
    Sphere,
    compose,
    rotation_x,
    rotation_z,
)
from feature_splat.data.synthetic.textures import Texture
from feature_splat.data.synthetic.worlds import OrbitRig
from feature_splat.errors import DatasetError

WIDTH, HEIGHT, FOCAL = 65, 49, 60.0  # odd sizes: pixel (24, 32) is centred on the optical axis
GREY = Texture((0.5, 0.5, 0.5))
BALL = CLASS_NAMES.index("ball")


def world_of(*primitives: Primitive) -> World:
    rig = OrbitRig(
        target=(0, 0, 0), radius=5, elevations_degrees=(10, 20), fov_x_degrees=60, seed=0
    )
    return World("test", 0, primitives, rig)


def camera_on_x(distance: float) -> Cameras:
    """One camera on the +x axis looking at the origin."""
    viewmat = look_at(torch.tensor([distance, 0.0, 0.0]), torch.zeros(3))
    K = intrinsics(FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2)
    return Cameras(viewmat, K[None], WIDTH, HEIGHT)


def pixel_rays(cams: Cameras) -> np.ndarray:
    """World directions [H, W, 3] of the rays through the pixel centres, scaled to camera z = 1."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    cam = np.stack([(u - WIDTH / 2) / FOCAL, (v - HEIGHT / 2) / FOCAL, np.ones_like(u)], -1)
    rot = cams.viewmats[0, :3, :3].double().numpy()
    return cam @ rot  # rot^T @ d for row vectors


def test_sphere_depth_normals_and_silhouette_match_the_analytic_sphere() -> None:
    distance, radius = 5.0, 1.0
    sphere = Sphere(center=(0, 0, 0), radius=radius, class_id=BALL, instance_id=7, texture=GREY)
    cams = camera_on_x(distance)
    out = render_views(world_of(sphere), cams, supersample=1)
    depth = out["depth"][0].double().numpy()
    assert depth[HEIGHT // 2, WIDTH // 2] == pytest.approx(distance - radius, abs=1e-5)

    # Ray-sphere by hand: |e + t d|^2 = r^2 with d the unnormalised camera ray (z = 1), so t = depth.
    world_dirs = pixel_rays(cams)
    eye = np.array([distance, 0.0, 0.0])
    a = (world_dirs**2).sum(-1)
    half_b = world_dirs @ eye
    disc = half_b**2 - a * (eye @ eye - radius**2)
    hit = disc >= 0
    expected = np.where(hit, (-half_b - np.sqrt(np.clip(disc, 0, None))) / a, np.inf)
    assert np.array_equal(np.isfinite(depth), hit)
    np.testing.assert_allclose(depth[hit], expected[hit], rtol=0, atol=1e-5)

    normals = out["normals"][0].double().numpy()
    points = eye + np.where(hit, expected, 0.0)[..., None] * world_dirs
    np.testing.assert_allclose(np.linalg.norm(normals[hit], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normals[hit], points[hit] / radius, atol=1e-5)
    assert not normals[~hit].any()

    # The silhouette is a circle of angular radius asin(r / D) around the optical axis.
    radius_px = FOCAL * math.tan(math.asin(radius / distance))
    centre_row = np.isfinite(depth[HEIGHT // 2])
    assert abs(centre_row.sum() / 2 - radius_px) <= 1.0
    labels, instances = out["labels"][0].numpy(), out["instances"][0].numpy()
    assert (labels[hit] == BALL).all() and (labels[~hit] == SKY).all()
    assert (instances[hit] == 7).all() and (instances[~hit] == -1).all()


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2])
def test_box_face_has_constant_depth_and_a_normal_towards_the_camera(yaw: float) -> None:
    # The same box either axis-aligned or rotated a quarter turn with its x and y extents swapped.
    half = (0.5, 0.8, 0.6) if yaw == 0 else (0.8, 0.5, 0.6)
    box = Box(center=(0, 0, 0), rotation=rotation_z(yaw), half_extents=half, class_id=1,
              instance_id=0, texture=GREY)  # fmt: skip
    out = render_views(world_of(box), camera_on_x(4.0), supersample=1)
    depth, normals = out["depth"][0], out["normals"][0]
    hit = depth.isfinite()
    torch.testing.assert_close(depth[hit], torch.full_like(depth[hit], 3.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normals[hit], torch.tensor([[1.0, 0.0, 0.0]]).expand(int(hit.sum()), 3)
    )
    # The face spans |y| <= 0.8, |z| <= 0.6 at distance 3.5: 2 * 0.8 / 3.5 * f pixels wide.
    assert abs(int(hit[HEIGHT // 2].sum()) - 2 * 0.8 / 3.5 * FOCAL) <= 1.0
    assert abs(int(hit[:, WIDTH // 2].sum()) - 2 * 0.6 / 3.5 * FOCAL) <= 1.0


Z_TO_X = compose(rotation_z(math.pi / 2), rotation_x(math.pi / 2))  # local z along world +x


@pytest.mark.parametrize(
    ("primitive", "nearest_x"),
    [
        (Cylinder(center=(0, 0, 0), radius=0.4, half_height=1.0, class_id=1, instance_id=0, texture=GREY), 0.4),
        (Capsule(center=(0, 0, 0), rotation=Z_TO_X, radius=0.3, half_length=0.5, class_id=1, instance_id=0,
                 texture=GREY), 0.8),
        (Cone(center=(0, 0, 0), radius_bottom=0.6, radius_top=0.2, half_height=0.5, class_id=1, instance_id=0,
              texture=GREY), 0.4),
        (Rectangle(center=(0.25, 0, 0), rotation=compose(Z_TO_X, rotation_z(0.3)), half_size=(1.0, 1.0),
                   class_id=1, instance_id=0, texture=GREY), 0.25),
    ],
)  # fmt: skip
def test_primitive_nearest_point_on_the_optical_axis(
    primitive: Primitive, nearest_x: float
) -> None:
    out = render_views(world_of(primitive), camera_on_x(4.0), supersample=1)
    centre = (HEIGHT // 2, WIDTH // 2)
    assert float(out["depth"][0][centre]) == pytest.approx(4.0 - nearest_x, abs=1e-5)
    normal = out["normals"][0][centre]
    assert float(normal.norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(normal[0]) > 0.9  # faces the camera (the cone's side is tilted: cos = 0.93)


def test_generation_is_deterministic_and_the_cache_is_used_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"width": 40, "height": 30, "n_views": 9, "seed": 3}
    first = load_world("tabletop", cache_dir=tmp_path / "a", **options)
    second = load_world("tabletop", cache_dir=tmp_path / "b", **options)
    (cache_file,) = (tmp_path / "a").glob("*.npz")

    def no_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered although the cache holds this world")

    with monkeypatch.context() as patch:
        patch.setattr(World, "render", no_render)
        cached = load_world("tabletop", cache_dir=tmp_path / "a", **options)
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # truncated: must be regenerated
    repaired = load_world("tabletop", cache_dir=tmp_path / "a", **options)
    assert np.load(cache_file)["images"].shape == (9, 30, 40, 3)  # the file is whole again

    for other in (second, cached, repaired):
        for field in ("images", "labels", "instances", "depths", "points", "point_colors"):
            assert torch.equal(getattr(first, field), getattr(other, field)), field
        assert torch.equal(first.cameras.viewmats, other.cameras.viewmats)
    different = load_world("tabletop", cache_dir=tmp_path / "a", **{**options, "seed": 4})
    assert not torch.equal(first.images, different.images)
    assert len(list((tmp_path / "a").glob("*.npz"))) == 2


def test_dataset_fields_split_and_points(tmp_path: Path) -> None:
    data = load_world("room", width=40, height=30, n_views=17, n_points=500, cache_dir=tmp_path)
    assert data.test_indices == [0, 8, 16]
    assert sorted(data.train_indices + data.test_indices) == list(range(17))
    assert data.images.dtype == torch.float32 and data.images.shape == (17, 30, 40, 3)
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert data.class_names == CLASS_NAMES
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < len(CLASS_NAMES)
    assert torch.equal(data.depths.isinf(), data.labels == SKY)
    assert torch.equal(data.instances == -1, data.labels == SKY)
    assert data.points.shape == (500, 3) and data.point_colors.shape == (500, 3)
    # Points lie inside the 8 x 6 x 2.8 m room, each on the depth map of some training view.
    assert bool((data.points.abs() <= torch.tensor([4.0, 3.0, 2.8]) + 1e-3).all())
    assert float(data.points[:, 2].min()) >= -1e-3
    train = data.train_indices
    cams = data.cameras[torch.tensor(train)]
    cam = (cams.viewmats[:, None, :3, :3] @ data.points[None, :, :, None])[..., 0]
    cam = cam + cams.viewmats[:, None, :3, 3]  # [V, P, 3]
    uv = (cams.Ks[:, None] @ cam[..., None])[..., 0]
    col = (uv[..., 0] / uv[..., 2]).floor().long().clamp(0, 39)
    row = (uv[..., 1] / uv[..., 2]).floor().long().clamp(0, 29)
    views = torch.arange(len(train))[:, None].expand_as(col)
    on_map = (data.depths[torch.tensor(train)][views, row, col] - cam[..., 2]).abs() < 1e-3
    assert bool(on_map.any(dim=0).all())
    assert len(set(data.labels.unique().tolist())) >= 6


def test_labels_and_instances_agree_with_the_placed_objects() -> None:
    world = build_world("room")
    out = world.render(world.cameras(48, 36, 6))
    class_of_instance = {p.instance_id: p.class_id for p in world.primitives}
    for primitive in world.primitives:  # one class per object
        assert class_of_instance[primitive.instance_id] == primitive.class_id
    labels, instances = out["labels"], out["instances"]
    for instance in instances.unique().tolist():
        seen = labels[instances == instance].unique().tolist()
        assert seen == ([SKY] if instance == -1 else [class_of_instance[instance]])
    present = {CLASS_NAMES[k] for k in labels.unique().tolist()}
    assert {"floor", "wall", "table", "chair"} <= present <= {*world.classes(), "sky"}


def test_worlds_use_enough_classes() -> None:
    used = set()
    for name in WORLD_NAMES:
        classes = build_world(name).classes()
        assert len(classes) >= 6, name
        used |= set(classes)
    assert len(used | {"sky"}) >= 12
    assert build_world("room").fingerprint() == build_world("room").fingerprint()
    assert build_world("room", seed=1).fingerprint() != build_world("room").fingerprint()
    with pytest.raises(DatasetError, match="name"):
        build_world("moon")


def test_without_and_only_edit_exactly_the_chosen_classes() -> None:
    world = build_world("room")
    cams = world.cameras(48, 36, 4)
    full = world.render(cams)
    chair, mug, table = (CLASS_NAMES.index(n) for n in ("chair", "mug", "table"))
    removed = world.without(["armchair", "cup"]).render(cams)  # synonyms resolve to chair and mug
    assert bool((full["labels"] == chair).any())
    assert not bool(torch.isin(removed["labels"], torch.tensor([chair, mug])).any())
    kept = ~torch.isin(full["labels"], torch.tensor([chair, mug]))
    assert torch.equal(removed["labels"][kept], full["labels"][kept])
    assert torch.equal(removed["depth"][kept], full["depth"][kept])

    alone = world.only("table").render(cams)
    assert set(alone["labels"].unique().tolist()) == {SKY, table}
    assert bool((alone["labels"][full["labels"] == table] == table).all())
    with pytest.raises(DatasetError, match="unknown class"):
        world.without(["unicorn"])


def test_street_rig_has_six_outward_cameras_per_position() -> None:
    cams = build_world("street").cameras(32, 24, 18)
    centres = cams.centers.view(3, 6, 3)
    torch.testing.assert_close(centres, centres[:, :1].expand(3, 6, 3))
    assert bool((centres[1:, 0, 0] > centres[:-1, 0, 0]).all())  # moving forward along +x
    forward = cams.viewmats[:, 2, :3].view(3, 6, 3)  # camera z axes in world coordinates
    yaw = torch.rad2deg(torch.atan2(forward[0, :, 1], forward[0, :, 0])) % 360
    torch.testing.assert_close(yaw, torch.arange(6.0) * 60, atol=1e-3, rtol=0)
    with pytest.raises(DatasetError, match="multiple of 6"):
        build_world("street").cameras(32, 24, 10)


def test_text_resolves_to_classes() -> None:
    assert resolve_class("a photo of a chair") == "chair"
    assert resolve_class("Armchairs!") == "chair"
    assert resolve_class("an automobile") == "car"
    assert resolve_class("a pedestrian crossing") == "person"
    assert resolve_class("a floor lamp") == "lamp"
    assert resolve_class("quantum chromodynamics") is None
