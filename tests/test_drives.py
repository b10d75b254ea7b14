"""Drives through the street world: seeds, rig geometry, virtual views, renders and their cache."""

from __future__ import annotations

import math

import pytest
import torch

from feature_splat.data.synthetic.classes import CLASS_NAMES
from feature_splat.data.synthetic.drives import (
    DRIVE_SPLITS,
    RIG_CAMERAS,
    VIRTUAL_CAMERA_NAMES,
    build_drive,
    build_drive_world,
    drive_seeds,
    load_drives,
    render_drive,
)
from feature_splat.data.synthetic.worlds import World, build_world
from feature_splat.errors import DatasetError

W, H = 32, 16


def _yaw_degrees(viewmat: torch.Tensor) -> float:
    """The world yaw of a camera's optical axis (the camera z axis is row 2 of R)."""
    axis = viewmat[2, :3].double()
    return math.degrees(math.atan2(axis[1], axis[0]))


def _angle(a: float, b: float) -> float:
    """Signed difference a - b in degrees, wrapped into [-180, 180)."""
    return (a - b + 180.0) % 360.0 - 180.0


@pytest.fixture(scope="module")
def drive():
    return build_drive(1000, n_frames=3, frame_spacing=2.5)


@pytest.fixture(scope="module")
def views(drive, tmp_path_factory):
    return render_drive(drive, W, H, cache_dir=tmp_path_factory.mktemp("drives"), supersample=1)


def test_split_seeds_are_disjoint_and_deterministic():
    seeds = {split: drive_seeds(split, 200) for split in DRIVE_SPLITS}
    assert all(len(set(s)) == 200 for s in seeds.values())
    assert not set(seeds["train"]) & set(seeds["val"])
    assert not set(seeds["train"]) & set(seeds["test"])
    assert not set(seeds["val"]) & set(seeds["test"])
    assert drive_seeds("val", 3) == drive_seeds("val", 5)[:3]


def test_seeds_vary_layout_and_light_deterministically():
    a, b = build_drive_world(1000), build_drive_world(1001)
    assert a.fingerprint() == build_drive_world(1000).fingerprint()
    assert [p.center for p in a.primitives] != [p.center for p in b.primitives]
    assert a.light_direction != b.light_direction
    assert a.sky_color != b.sky_color and a.ambient != b.ambient
    for world in (a, b):
        light = torch.tensor(world.light_direction)
        elevation = math.degrees(math.asin(light[2] / light.norm()))
        assert 30.0 <= elevation <= 70.0
        assert 0.3 <= world.ambient <= 0.5
    # The layout is the street's own; only the daylight changes.
    assert a.primitives == build_world("street", 1000).primitives
    assert build_drive(1000).start_x == build_drive(1000).start_x


def test_rig_cameras_yaw_fov_height_and_motion(drive):
    ego_heading = 0.0  # the ego drives along +x
    first, second = drive.cameras(0, W, H), drive.cameras(1, W, H)
    assert len(first) == len(RIG_CAMERAS) == 6
    for k, camera in enumerate(RIG_CAMERAS):
        viewmat = first.viewmats[k]
        assert _angle(_yaw_degrees(viewmat) - ego_heading, camera.yaw_degrees) == pytest.approx(
            0.0, abs=1e-4
        )
        assert abs(float(viewmat[2, 2])) < 1e-6  # level: the optical axis has no z component
        fov = math.degrees(2.0 * math.atan(0.5 * W / float(first.Ks[k, 0, 0])))
        assert fov == pytest.approx(camera.fov_x_degrees, abs=1e-4)
    assert torch.allclose(first.centers[:, 2], torch.full((6,), 1.6))
    step = second.centers - first.centers
    expected = torch.tensor([drive.frame_spacing, 0.0, 0.0]).expand(6, 3)
    assert torch.allclose(step, expected, atol=1e-5)
    # Every frame's cameras stay on the street, well inside the end facades.
    last = drive.cameras(drive.n_frames - 1, W, H).centers
    assert first.centers[:, 0].min() > -31.0 and last[:, 0].max() < 31.0


@pytest.mark.parametrize("seed", drive_seeds("train", 6) + drive_seeds("test", 4))
def test_every_frame_stays_on_the_road_clear_of_cars(seed):
    drive = build_drive(seed)
    car = CLASS_NAMES.index("car")  # the only objects on the road (the rest stand on sidewalks)
    centers = torch.cat([drive.cameras(t, W, H).centers for t in range(drive.n_frames)]).double()
    assert (centers[:, 0].abs() < 31.0).all() and (centers[:, 1] - -1.75).abs().max() < 1e-5
    for p in drive.world.primitives:
        if p.class_id == car:
            distance = (centers - torch.tensor(p.center, dtype=torch.float64)).norm(dim=1)
            assert distance.min() > p.bounding_radius


def test_ego_to_world_is_rigid_and_on_the_ground_below_the_rig(drive):
    for frame in range(drive.n_frames):
        pose = drive.ego_to_world(frame)
        assert pose.shape == (4, 4) and pose.dtype == torch.float32
        rotation = pose[:3, :3]
        assert torch.allclose(rotation.T @ rotation, torch.eye(3), atol=1e-6)
        assert float(torch.linalg.det(rotation)) == pytest.approx(1.0)
        assert torch.equal(pose[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
        origin = pose @ torch.tensor([0.0, 0.0, 0.0, 1.0])
        centers = drive.cameras(frame, W, H).centers
        assert float(origin[2]) == 0.0
        assert float(origin[1]) == pytest.approx(float(centers[:, 1].mean()))
        assert centers[:, 0].min() < float(origin[0]) < centers[:, 0].max()
        forward = pose[:3, :3] @ torch.tensor([1.0, 0.0, 0.0])
        assert torch.allclose(forward, torch.tensor([1.0, 0.0, 0.0]))


def test_virtual_cameras_lie_between_and_beyond_the_rig(drive):
    virtual = drive.virtual_cameras(1, W, H)
    rig = drive.cameras(1, W, H)
    assert len(virtual) == len(VIRTUAL_CAMERA_NAMES) == 12
    assert torch.equal(virtual.viewmats, drive.virtual_cameras(1, W, H).viewmats)
    for k in range(12):
        fov = math.degrees(2.0 * math.atan(0.5 * W / float(virtual.Ks[k, 0, 0])))
        assert fov == pytest.approx(70.0, abs=1e-4)
    for k in range(6):
        a = RIG_CAMERAS[k].yaw_degrees
        b = RIG_CAMERAS[(k + 1) % 6].yaw_degrees
        yaw = _yaw_degrees(virtual.viewmats[k])
        gap = abs(_angle(a, b))
        assert abs(_angle(yaw, a)) == pytest.approx(gap / 2, abs=1e-3)
        assert abs(_angle(yaw, b)) == pytest.approx(gap / 2, abs=1e-3)
    shifts = virtual.centers[6:] - rig.centers
    assert torch.allclose(shifts[:, 2], torch.full((6,), 0.5), atol=1e-5)
    assert torch.allclose(shifts[:, 1].abs(), torch.ones(6), atol=1e-5)
    assert (shifts[0::2, 1] > 0).all() and (shifts[1::2, 1] < 0).all()
    for k in range(6):
        assert _angle(_yaw_degrees(virtual.viewmats[6 + k]), _yaw_degrees(rig.viewmats[k])) == (
            pytest.approx(0.0, abs=1e-4)
        )


def test_road_depth_matches_the_ground_plane(views):
    """The bottom-centre pixel of the front and back cameras sees the road (z = 0)."""
    road = CLASS_NAMES.index("road")
    row, col = H - 1, W // 2
    for frame, cameras in enumerate(views.cameras):
        for k in (0, 3):
            K, viewmat = cameras.Ks[k].double(), cameras.viewmats[k].double()
            direction_cam = torch.tensor(
                [(col + 0.5 - K[0, 2]) / K[0, 0], (row + 0.5 - K[1, 2]) / K[1, 1], 1.0]
            )
            rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
            center = -rotation.T @ translation
            direction = rotation.T @ direction_cam  # world direction with camera z = 1
            t = -center[2] / direction[2]  # ray-plane intersection with z = 0
            assert t > 0
            assert int(views.labels[frame, k, row, col]) == road
            assert float(views.depth[frame, k, row, col]) == pytest.approx(float(t), rel=1e-4)


def test_render_shapes_and_ground_truth(views, drive):
    T = drive.n_frames
    assert views.rgb.shape == (T, 6, H, W, 3) and views.rgb.dtype == torch.float32
    assert views.depth.shape == views.labels.shape == views.instances.shape == (T, 6, H, W)
    assert views.labels.dtype == views.instances.dtype == torch.int64
    assert (views.width, views.height, views.n_frames) == (W, H, T)
    assert float(views.rgb.min()) >= 0.0 and float(views.rgb.max()) <= 1.0
    sky = views.labels == 0
    assert sky.any() and (~sky).any()
    assert torch.isinf(views.depth[sky]).all() and torch.isfinite(views.depth[~sky]).all()
    assert (views.instances[sky] == -1).all() and (views.instances[~sky] >= 0).all()
    sky_rgb = views.rgb[sky][:, None]
    assert torch.allclose(sky_rgb, torch.tensor(drive.world.sky_color).expand_as(sky_rgb))


def test_dataset_flattens_frames(views):
    dataset = views.dataset([2, 0])
    assert len(dataset) == 12 and dataset.points is None
    assert dataset.image_names[0] == "frame_002_CAM_FRONT"
    assert dataset.image_names[9] == "frame_000_CAM_BACK"
    assert dataset.train_indices == list(range(12)) and dataset.test_indices == []
    assert torch.equal(dataset.images[9], views.rgb[0, 3])
    assert torch.equal(dataset.cameras.viewmats[9], views.cameras[0].viewmats[3])
    assert torch.equal(dataset.depths[6:], views.depth[0])
    assert len(views.dataset()) == 6 * views.n_frames


def test_cache_reuses_renders_and_is_keyed_by_size(tmp_path, monkeypatch):
    drive = build_drive(2000, n_frames=2)
    first = render_drive(drive, 16, 8, cache_dir=tmp_path, supersample=1)
    assert len(list(tmp_path.iterdir())) == 1

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although cached")

    with monkeypatch.context() as patch:
        patch.setattr(World, "render", no_render)
        again = render_drive(drive, 16, 8, cache_dir=tmp_path, supersample=1)
    for name in ("rgb", "depth", "labels", "instances"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    other = render_drive(drive, 24, 8, cache_dir=tmp_path, supersample=1)
    assert other.rgb.shape[3] == 24 and len(list(tmp_path.iterdir())) == 2
    # A damaged file is rendered again and replaced.
    for path in tmp_path.iterdir():
        path.write_bytes(b"not an archive")
    repaired = render_drive(drive, 16, 8, cache_dir=tmp_path, supersample=1)
    assert torch.equal(repaired.rgb, first.rgb)


def test_load_drives_uses_the_split_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path))
    loaded = load_drives("test", 1, 8, 8, n_frames=2)
    assert [v.drive.seed for v in loaded] == drive_seeds("test", 1)
    assert loaded[0].rgb.shape == (2, 6, 8, 8, 3)
    assert len(list((tmp_path / "drives").iterdir())) == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: drive_seeds("training", 2), "split"),
        (lambda: drive_seeds("train", -1), "count"),
        (lambda: build_drive(1000, n_frames=1), "n_frames"),
        (lambda: build_drive(1000, frame_spacing=0.0), "frame_spacing"),
        (lambda: build_drive(1000, n_frames=40), "n_frames"),
        (lambda: build_drive(1000, n_frames=2).cameras(0, 0, 8), "width"),
        (lambda: build_drive(1000, n_frames=2).cameras(2, 8, 8), "frame"),
        (lambda: render_drive(build_drive(1000, n_frames=2), -4, 8), "width"),
        (lambda: render_drive(build_drive(1000, n_frames=2), 8, 8, supersample=0), "supersample"),
        (lambda: load_drives("dev", 1, 8, 8), "split"),
    ],
)
def test_bad_values_name_the_field(call, field):
    with pytest.raises(DatasetError, match=field):
        call()
