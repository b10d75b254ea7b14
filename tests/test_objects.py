"""Object mode: procedural categories with parts and keypoints, their renders and cache, the oracle."""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.synthetic import (
    CATEGORY_NAMES,
    KEYPOINT_NAMES,
    PART_NAMES,
    SPLITS,
    ObjectInstance,
    ObjectViews,
    build_object,
    load_objects,
    render_object_views,
)
from feature_splat.data.synthetic.objects import FRAME_FILL
from feature_splat.errors import DatasetError
from feature_splat.teachers.object_oracle import ObjectOracleTeacher

OPTIONAL_PARTS = {"arms"}


def keypoint_canonical(instance: ObjectInstance) -> torch.Tensor:
    """The keypoints of ``instance`` in part-normalised coordinates [K, 3]."""
    return instance.canonical_coordinates(
        torch.from_numpy(instance.keypoints), torch.from_numpy(instance.keypoint_parts)
    )


def axis_cameras(instance: ObjectInstance, size: int, elevation_degrees: float) -> Cameras:
    """Two cameras at the usual distance, on +x (the front) and on -x, looking at the origin."""
    distance = FRAME_FILL * instance.size / (2.0 * math.tan(math.radians(20.0)))
    elevation = math.radians(elevation_degrees)
    x, z = distance * math.cos(elevation), distance * math.sin(elevation)
    viewmats = look_at(torch.tensor([[x, 0.0, z], [-x, 0.0, z]]), torch.zeros(3))
    return Cameras(viewmats, intrinsics_from_fov(40.0, size, size).expand(2, 3, 3), size, size)


@pytest.fixture(scope="module")
def views() -> dict[str, list[ObjectViews]]:
    """Two instances per category, 8 views of 64 px (a chair with arms among them)."""
    with_arms = next(
        i for i in range(50) if any(p.class_id == 4 for p in build_object("chair", i).primitives)
    )
    indices = {"chair": [0, with_arms], "table": [0, 1], "car": [0, 1]}
    result = {}
    for category, chosen in indices.items():
        instances = [build_object(category, i) for i in chosen]
        result[category] = [render_object_views(o, o.cameras(8, 64)) for o in instances]
    return result


# ----------------------------------------------------------------------------------------------
# Instances


def test_building_is_deterministic_and_instances_differ() -> None:
    for category in CATEGORY_NAMES:
        first, again = build_object(category, 3), build_object(category, 3)
        assert repr(first) == repr(again)
        cameras = first.cameras(3, 32)
        assert torch.equal(cameras.viewmats, again.cameras(3, 32).viewmats)
        renders = first.render(cameras), again.render(cameras)
        for key in renders[0]:
            assert torch.equal(renders[0][key], renders[1][key]), key
        other = build_object(category, 4)
        assert not np.allclose(first.part_boxes, other.part_boxes)
        assert abs(first.size - other.size) > 1e-3
        assert not np.allclose(first.part_boxes, build_object(category, 3, seed=1).part_boxes)


def test_object_frame_and_camera_rig() -> None:
    for category in CATEGORY_NAMES:
        instance = build_object(category, 0)
        boxes = instance.part_boxes[1:][(instance.part_boxes[1:, 1] > 0).all(axis=1)]
        low, high = (boxes[:, 0] - boxes[:, 1]).min(axis=0), (boxes[:, 0] + boxes[:, 1]).max(axis=0)
        np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-12)  # centred on the origin
        assert instance.size == pytest.approx(float(np.linalg.norm(high - low)))
        assert 0.6 < float((high - low).max()) < 1.6
        assert instance.part_names == PART_NAMES[category]
        assert instance.part_names[0] == "background"
        assert all(0 < p.class_id < len(instance.part_names) for p in instance.primitives)
        cameras = instance.cameras(6, 48, seed=2)
        assert (cameras.width, cameras.height, len(cameras)) == (48, 48, 6)
        assert cameras.viewmats.dtype == torch.float32
        centers = cameras.centers.double()
        distance = FRAME_FILL * instance.size / (2.0 * math.tan(math.radians(20.0)))
        torch.testing.assert_close(
            centers.norm(dim=1), torch.full((6,), distance).double(), rtol=1e-5, atol=0
        )
        elevations = torch.rad2deg(torch.asin(centers[:, 2] / centers.norm(dim=1)))
        assert bool(((elevations >= 10.0 - 1e-3) & (elevations <= 55.0 + 1e-3)).all())
        assert not torch.equal(cameras.viewmats, instance.cameras(6, 48, seed=3).viewmats)


def test_keypoint_names_counts_and_parts_are_shared_by_all_instances() -> None:
    for category in CATEGORY_NAMES:
        names = KEYPOINT_NAMES[category]
        assert len(names) >= 9 and len(set(names)) == len(names)
        reference = build_object(category, 0)
        for index in (1, 2, 5, 100_000):
            instance = build_object(category, index)
            assert instance.keypoint_names == names
            assert instance.part_names == reference.part_names
            assert instance.keypoints.shape == (len(names), 3)
            assert instance.keypoints.dtype == np.float64
            assert instance.keypoint_parts.dtype == np.int64
            np.testing.assert_array_equal(instance.keypoint_parts, reference.keypoint_parts)
        used = {instance.part_names[p] for p in reference.keypoint_parts}
        assert not used & OPTIONAL_PARTS


def test_keypoints_lie_on_the_surface_of_their_part() -> None:
    """For each keypoint, some ray from outside reaches it on its part's surface (to 1e-6)."""
    directions = torch.tensor(
        [d for d in itertools.product((-1.0, 0.0, 1.0), repeat=3) if any(d)], dtype=torch.float64
    )
    directions = directions / directions.norm(dim=1, keepdim=True)
    for category, index in itertools.product(CATEGORY_NAMES, (0, 1, 7)):
        instance = build_object(category, index)
        for point, part in zip(instance.keypoints, instance.keypoint_parts, strict=True):
            target = torch.from_numpy(point).expand_as(directions)
            origins = target + 3.0 * instance.size * directions
            nearest = torch.full((len(directions),), math.inf, dtype=torch.float64)
            for primitive in instance.primitives:
                if primitive.class_id == part:
                    t, _ = primitive.intersect(origins, -directions)
                    nearest = torch.minimum(nearest, t)
            assert float((nearest - 3.0 * instance.size).abs().min()) < 1e-6


def test_keypoint_canonical_coordinates_agree_across_instances() -> None:
    for category in CATEGORY_NAMES:
        canonical = torch.stack([keypoint_canonical(build_object(category, i)) for i in range(8)])
        assert bool((canonical.abs() <= 1.0 + 1e-9).all())
        spread = canonical.amax(dim=0) - canonical.amin(dim=0)
        assert float(spread.max()) < 0.4, (category, spread)  # wheel hubs vary most
    seat = KEYPOINT_NAMES["chair"].index("seat_front_left")
    torch.testing.assert_close(
        keypoint_canonical(build_object("chair", 5))[seat], torch.ones(3, dtype=torch.float64)
    )


def test_canonical_coordinates_of_background_and_missing_parts_are_zero() -> None:
    without_arms = next(
        instance
        for instance in (build_object("chair", i) for i in range(50))
        if not any(p.class_id == 4 for p in instance.primitives)
    )
    points = torch.randn(3, 3, dtype=torch.float64)
    canonical = without_arms.canonical_coordinates(points, torch.tensor([0, 4, 1]))
    assert bool((canonical[:2] == 0).all()) and bool((canonical[2] != 0).all())


def test_unknown_names_raise() -> None:
    with pytest.raises(DatasetError, match="chair"):
        build_object("sofa", 0)
    with pytest.raises(DatasetError, match="table"):
        load_objects("sofa", cache_dir="/nonexistent")
    with pytest.raises(DatasetError, match="train"):
        load_objects("chair", "val", cache_dir="/nonexistent")


# ----------------------------------------------------------------------------------------------
# Renders


def test_rendered_arrays_are_consistent(views: dict[str, list[ObjectViews]]) -> None:
    for category, items in views.items():
        for item in items:
            assert item.rgb.shape == (8, 64, 64, 3) and item.rgb.dtype == torch.float32
            assert item.parts.dtype == torch.int64 and item.keypoints_visible.dtype == torch.bool
            assert item.keypoints_2d.shape == (8, len(KEYPOINT_NAMES[category]), 2)
            background = item.parts == 0
            assert torch.equal(background, item.depth == 0)
            assert torch.equal(item.masks(), ~background)
            assert bool((item.depth[~background] > 0).all())
            assert bool((item.normals[background] == 0).all())
            # White background away from the anti-aliased silhouette (except rare slivers of
            # parts seen edge-on, which only the sub-pixel rays hit).
            padded = torch.nn.functional.pad(item.masks()[:, None].float(), (1, 1, 1, 1))
            far = torch.nn.functional.max_pool2d(padded, 3, 1)[:, 0] == 0
            assert float((item.rgb[far] == 1.0).all(dim=1).float().mean()) > 0.998
            assert 0.05 < float(item.masks().float().mean()) < 0.6


def test_every_part_appears_in_some_view(views: dict[str, list[ObjectViews]]) -> None:
    for category, items in views.items():
        for item in items:
            # The fixture's views plus a front and a back view (small parts like lights face them).
            extra = render_object_views(item.instance, axis_cameras(item.instance, 64, 15.0))
            seen = set(item.parts.unique().tolist()) | set(extra.parts.unique().tolist())
            names = PART_NAMES[category]
            required = {k for k, name in enumerate(names) if name not in OPTIONAL_PARTS}
            assert required <= seen, (category, item.instance.index, seen)
    chair_with_arms = views["chair"][1]
    assert 4 in set(chair_with_arms.parts.unique().tolist())


def test_keypoint_visibility_agrees_with_an_analytic_ray_cast(
    views: dict[str, list[ObjectViews]],
) -> None:
    """Keypoints marked visible have no surface more than the tolerance in front of them on the ray
    from the camera (cast against the primitives, not read from the depth maps), and most such
    unoccluded keypoints are marked (a corner seen at a grazing angle can fail the depth test)."""
    marked, clear = [], []
    for items in views.values():
        for item in items:
            instance = item.instance
            keypoints = torch.from_numpy(instance.keypoints)
            inside = ((item.keypoints_2d >= 0) & (item.keypoints_2d < 64)).all(dim=-1)
            for view, center in enumerate(item.cameras.centers.double()):
                offsets = keypoints - center
                distance = offsets.norm(dim=1)
                directions = offsets / distance[:, None]
                origins = center.expand_as(directions)
                nearest = torch.full_like(distance, math.inf)
                for primitive in instance.primitives:
                    nearest = torch.minimum(nearest, primitive.intersect(origins, directions)[0])
                marked.append(item.keypoints_visible[view])
                clear.append(inside[view] & (nearest > distance - 0.02 * instance.size))
    marked, clear = torch.cat(marked), torch.cat(clear)
    assert float(marked.float().mean()) > 0.3
    assert int((marked & ~clear).sum()) <= 0.02 * int(marked.sum())
    assert int((marked & clear).sum()) >= 0.6 * int(clear.sum())


def test_keypoints_project_with_pixel_centres_at_half_integers() -> None:
    instance = build_object("table", 2)
    cameras = instance.cameras(4, 40)
    item = render_object_views(instance, cameras, supersample=1)
    for view in range(4):
        K, viewmat = cameras.Ks[view].double(), cameras.viewmats[view].double()
        camera = torch.from_numpy(instance.keypoints) @ viewmat[:3, :3].T + viewmat[:3, 3]
        pixels = camera @ K.T
        torch.testing.assert_close(item.keypoints_2d[view], (pixels[:, :2] / pixels[:, 2:]).float())
    # The optical axis goes through the image centre (20, 20), between pixels 19 and 20.
    assert cameras.Ks[0, 0, 2] == 20.0 and cameras.Ks[0, 1, 2] == 20.0


def test_surface_points_land_in_their_part_boxes(views: dict[str, list[ObjectViews]]) -> None:
    for items in views.values():
        item = items[0]
        points, parts, view = item.surface_points()
        assert points.shape == (int(item.masks().sum()), 3)
        assert bool((parts > 0).all())
        canonical = item.instance.canonical_coordinates(points.double(), parts)
        assert float(canonical.abs().max()) < 1.02
        subset_points, _, subset_view = item.surface_points([2, 5])
        assert set(subset_view.tolist()) == {2, 5}
        torch.testing.assert_close(subset_points, points[(view == 2) | (view == 5)])


def test_front_and_back_look_different() -> None:
    """Seen from +x and from -x (mirrored or not), the part maps differ for every category."""
    for category, index in itertools.product(CATEGORY_NAMES, (0, 1, 2)):
        instance = build_object(category, index)
        item = render_object_views(instance, axis_cameras(instance, 64, 15.0))
        front, back = item.parts[0], item.parts[1]
        assert int((front != back).sum()) >= 8, (category, index)
        assert int((front != back.flip(1)).sum()) >= 8, (category, index)
        counts = [
            torch.bincount(p.reshape(-1), minlength=len(instance.part_names)) for p in (front, back)
        ]
        feature = {"chair": "seat", "table": "drawer", "car": "body"}[category]
        assert (
            counts[0][instance.part_names.index(feature)]
            > counts[1][instance.part_names.index(feature)]
        )


# ----------------------------------------------------------------------------------------------
# Splits and the cache


def test_splits_are_disjoint(tmp_path: Path) -> None:
    train = load_objects("car", "train", n_instances=2, n_views=2, size=16, cache_dir=tmp_path)
    test = load_objects("car", "test", n_instances=2, n_views=2, size=16, cache_dir=tmp_path)
    assert SPLITS == ("train", "test")
    assert [v.instance.index for v in train] == [0, 1]
    assert [v.instance.index for v in test] == [100_000, 100_001]
    for a, b in itertools.product(train, test):
        assert not np.allclose(a.instance.part_boxes, b.instance.part_boxes)


def test_cache_round_trip_and_repair(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    options = {"n_instances": 2, "n_views": 3, "size": 32, "cache_dir": tmp_path, "progress": False}
    first = load_objects("chair", **options)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 2
    again = load_objects("chair", **options)
    fresh = render_object_views(first[1].instance, first[1].instance.cameras(3, 32))
    fields = ("rgb", "depth", "normals", "parts", "keypoints_2d", "keypoints_visible")
    for a, b in ((first[0], again[0]), (first[1], again[1]), (first[1], fresh)):
        assert torch.equal(a.cameras.viewmats, b.cameras.viewmats)
        for name in fields:
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    files[0].write_bytes(b"not an npz archive")
    with caplog.at_level(logging.WARNING):
        repaired = load_objects("chair", **options)
    assert "unreadable" in caplog.text
    for name in fields:
        assert torch.equal(getattr(repaired[0], name), getattr(first[0], name)), name
    with np.load(files[0]) as archive:  # the file was rewritten
        assert archive["rgb"].shape == (3, 32, 32, 3)


# ----------------------------------------------------------------------------------------------
# The oracle teacher


def test_teacher_shapes_unit_norm_and_determinism(views: dict[str, list[ObjectViews]]) -> None:
    teacher = ObjectOracleTeacher()
    item = views["chair"][0]
    features = teacher.encode_views(item)
    assert features.shape == (8, 64, 16, 16) and features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(8, 16, 16))
    assert torch.equal(features, ObjectOracleTeacher().encode_views(item))
    assert not torch.equal(features, ObjectOracleTeacher(seed=1).encode_views(item))
    odd = ObjectOracleTeacher(dim=16, stride=3).encode_views(item)
    assert odd.shape == (8, 16, 22, 22)
    ids = {
        ObjectOracleTeacher(**option).config_id() for option in ({}, {"noise": 0.1}, {"seed": 2})
    }
    assert len(ids) == 3 and teacher.config_id() == ObjectOracleTeacher().config_id()


def test_point_features_are_the_same_across_instances() -> None:
    teacher = ObjectOracleTeacher()
    for category in CATEGORY_NAMES:
        parts = torch.from_numpy(build_object(category, 0).keypoint_parts)
        features = torch.stack(
            [
                teacher.point_features(
                    category, keypoint_canonical(build_object(category, i)), parts
                )
                for i in range(6)
            ]
        )
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(6, len(parts)))
        similarity = (features[:, None] * features[None]).sum(-1)  # [6, 6, K]
        assert float(similarity.min()) > 0.9
        same_point = torch.ones(4, 3, dtype=torch.float64) * 0.3
        same_part = torch.full((4,), 1)
        once = teacher.point_features(category, same_point, same_part)
        assert torch.equal(once, once[:1].expand(4, -1))
    background = teacher.point_features("car", torch.randn(2, 3), torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(background[0], background[1])
    other_part = teacher.point_features("car", torch.zeros(2, 3), torch.tensor([1, 2]))
    assert float(other_part[0] @ other_part[1]) < 0.5
    near = teacher.point_features(
        "car",
        torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [1.0, 0, 0]]),
        torch.ones(3, dtype=torch.int64),
    )
    assert float(near[0] @ near[1]) > float(near[0] @ near[2]) + 0.1
    assert float(near[0] @ near[1]) < 0.999


def test_teacher_cells_are_pooled_point_features() -> None:
    """Without noise and view term, at stride 1, a pixel's feature is its point's feature."""
    teacher = ObjectOracleTeacher(stride=1, noise=0.0, view_weight=0.0)
    instance = build_object("table", 0)
    item = render_object_views(instance, instance.cameras(2, 24))
    features = teacher.encode_views(item)
    points, parts, _ = item.surface_points()
    expected = teacher.point_features(
        "table", instance.canonical_coordinates(points.double(), parts), parts
    )
    torch.testing.assert_close(features.permute(0, 2, 3, 1)[item.masks()], expected)
    assert torch.equal(
        features.permute(0, 2, 3, 1)[~item.masks()][0],
        teacher.point_features("table", torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64))[0],
    )


def test_same_keypoint_across_views_is_closer_than_other_parts(
    views: dict[str, list[ObjectViews]],
) -> None:
    teacher = ObjectOracleTeacher()
    for category, items in views.items():
        same, different = [], []
        for item in items:
            features = teacher.encode_views(item)
            cells = (item.keypoints_2d / teacher.stride).floor().long().clamp(0, 15)
            sampled = features[
                torch.arange(8)[:, None], :, cells[..., 1], cells[..., 0]
            ]  # [V, K, D]
            parts = item.instance.keypoint_parts
            for a, b in itertools.combinations(range(8), 2):
                cosine = sampled[a] @ sampled[b].T  # [K, K]
                both = item.keypoints_visible[a][:, None] & item.keypoints_visible[b][None, :]
                same.append(cosine.diagonal()[both.diagonal()])
                other_part = torch.from_numpy(parts[:, None] != parts[None, :])
                different.append(cosine[both & other_part])
        same_mean, different_mean = torch.cat(same).mean(), torch.cat(different).mean()
        assert float(same_mean) > float(different_mean) + 0.1, (category, same_mean, different_mean)


def test_features_depend_on_the_view(views: dict[str, list[ObjectViews]]) -> None:
    teacher = ObjectOracleTeacher(noise=0.0)
    item = views["car"][0]
    features = teacher.encode_views(item)
    turned = teacher.encode_views(replace(item, normals=-item.normals))
    cells = torch.nn.functional.max_pool2d(item.masks()[:, None].float(), 4)[:, 0] > 0
    difference = (features - turned).norm(dim=1)
    assert float(difference[cells].min()) > 1e-3
    assert float(difference[~cells].max()) == 0.0
    flat = ObjectOracleTeacher(noise=0.0, view_weight=0.0)
    assert torch.equal(
        flat.encode_views(item), flat.encode_views(replace(item, normals=-item.normals))
    )
