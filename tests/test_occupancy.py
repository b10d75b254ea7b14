"""3D semantic occupancy: ground truth, camera visibility, field prediction and scores against
hand-counted and analytic truth."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.data.synthetic import CLASS_NAMES, World, build_world
from feature_splat.data.synthetic.primitives import Box, Primitive, Rectangle, Sphere, rotation_z
from feature_splat.data.synthetic.textures import Texture
from feature_splat.data.synthetic.worlds import OrbitRig
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import ConfigError, InputShapeError
from feature_splat.eval.occupancy import (
    FREE,
    OccupancyGrid,
    bev_image,
    camera_visibility,
    field_occupancy,
    occupancy_metrics,
    voxelize,
)
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField

CAR, ROAD, TREE, PERSON = (CLASS_NAMES.index(n) for n in ("car", "road", "tree", "person"))
GREY = Texture((0.5, 0.5, 0.5))
RIG = OrbitRig((0.0, 0.0, 0.0), 5.0, (20.0, 40.0), 60.0, 0)


def world_of(*primitives: Primitive) -> World:
    return World("test", 0, tuple(primitives), RIG)


def box(center: tuple, half: tuple, class_id: int = CAR, **kwargs: object) -> Box:
    return Box(
        center=center, half_extents=half, class_id=class_id, instance_id=0, texture=GREY, **kwargs
    )


def pose(x: float = 0.0, y: float = 0.0, yaw: float = 0.0) -> Tensor:
    matrix = torch.eye(4)
    matrix[:3, :3] = torch.tensor(rotation_z(yaw))
    matrix[:3, 3] = torch.tensor([x, y, 0.0])
    return matrix


SMALL = OccupancyGrid(voxel_size=0.5, x_range=(-2.0, 2.0), y_range=(-2.0, 2.0), z_range=(0.0, 2.0))


# -- the grid ----------------------------------------------------------------------------------


def test_default_grid_is_occ3d_nuscenes() -> None:
    grid = OccupancyGrid()
    assert grid.shape == (200, 200, 16)
    centers = grid.centers()
    assert centers.shape == (200, 200, 16, 3)
    assert torch.allclose(centers[0, 0, 0], torch.tensor([-39.8, -39.8, -0.8]))
    assert torch.allclose(centers[-1, -1, -1], torch.tensor([39.8, 39.8, 5.2]))
    moved = grid.centers(pose(10.0, -2.0, math.pi / 2))
    assert torch.allclose(moved[0, 0, 0], torch.tensor([10.0 + 39.8, -2.0 - 39.8, -0.8]), atol=1e-4)
    half = grid.scaled(0.5)
    assert half.shape == grid.shape and half.voxel_size == pytest.approx(0.2)
    assert half.z_range == pytest.approx((-0.5, 2.7))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"voxel_size": 0.0}, "voxel_size"),
        ({"voxel_size": -0.4}, "voxel_size"),
        ({"x_range": (1.0, -1.0)}, "x_range"),
        ({"y_range": (0.0, 0.0)}, "y_range"),
        ({"z_range": (-1.0, 5.5)}, "z_range"),
        ({"z_range": (0.0, float("nan"))}, "z_range"),
    ],
)
def test_bad_grids_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        OccupancyGrid(**kwargs)


def test_bad_scale_and_pose_are_refused() -> None:
    with pytest.raises(ConfigError, match="factor"):
        OccupancyGrid().scaled(0.0)
    world = world_of(box((0.0, 0.0, 1.0), (0.5, 0.5, 0.5)))
    with pytest.raises(InputShapeError, match="ego_to_world"):
        voxelize(world, SMALL, torch.eye(3))
    with pytest.raises(InputShapeError, match="ego_to_world"):
        voxelize(world, SMALL, 2 * torch.eye(4))


# -- ground truth ------------------------------------------------------------------------------


def test_box_on_voxel_boundaries_fills_exactly_its_voxels() -> None:
    # x in [-0.5, 1.0], y in [-1.0, 0.0], z in [0.0, 1.5]: voxels 3..5, 2..3, 0..2.
    world = world_of(box((0.25, -0.5, 0.75), (0.75, 0.5, 0.75), CAR))
    labels = voxelize(world, SMALL, torch.eye(4))
    expected = torch.full(SMALL.shape, FREE, dtype=torch.int64)
    expected[3:6, 2:4, 0:3] = CAR
    assert labels.dtype == torch.int64 and labels.shape == (8, 8, 4)
    assert torch.equal(labels, expected)


def test_the_ego_pose_is_honoured() -> None:
    world = world_of(box((0.25, -0.5, 0.75), (0.75, 0.5, 0.75), CAR))
    still = voxelize(world, SMALL, torch.eye(4))
    # The ego one voxel forward and two to the left: the box moves back and to the right.
    moved = voxelize(world, SMALL, pose(0.5, 1.0))
    expected = torch.full(SMALL.shape, FREE, dtype=torch.int64)
    expected[2:5, 0:2, 0:3] = CAR
    assert torch.equal(moved, expected)
    # Turned by 90 degrees (ego x = world y): ego (x, y) sees world (-y, x).
    turned = voxelize(world, SMALL, pose(yaw=math.pi / 2))
    assert torch.equal(turned, still.flip(0).transpose(0, 1))


def test_sphere_voxel_count_matches_its_volume() -> None:
    radius, size = 2.0, 0.1
    grid = OccupancyGrid(size, (-2.4, 2.4), (-2.4, 2.4), (-2.4, 2.4))
    sphere = Sphere(
        center=(0.03, -0.02, 0.01), radius=radius, class_id=TREE, instance_id=0, texture=GREY
    )
    labels = voxelize(world_of(sphere), grid, torch.eye(4))
    count = int((labels == TREE).sum())
    assert set(labels.unique().tolist()) == {FREE, TREE}
    volume = 4 / 3 * math.pi * radius**3 / size**3
    # Any inside sub-sample occupies a voxel, so the count exceeds the volume: a plane at normal n
    # dilates by (v / 3) |n|_1 for 3 sub-samples, v / 2 on average over a sphere's normals.
    dilated = 4 / 3 * math.pi * (radius + size / 2) ** 3 / size**3
    assert volume < count < 1.08 * volume
    assert count == pytest.approx(dilated, rel=0.01)


def test_rectangle_fills_one_voxel_layer() -> None:
    grid = OccupancyGrid(0.4, (-2.0, 2.0), (-2.0, 2.0), (-0.2, 1.0))  # layer 0: z in [-0.2, 0.2]
    road = Rectangle(
        center=(0.0, 0.0, 0.0), half_size=(1.2, 0.8), class_id=ROAD, instance_id=0, texture=GREY
    )
    labels = voxelize(world_of(road), grid, torch.eye(4))
    expected = torch.full(grid.shape, FREE, dtype=torch.int64)
    expected[2:8, 3:7, 0] = ROAD
    assert torch.equal(labels, expected)


def test_overlaps_majority_then_later_primitive() -> None:
    grid = OccupancyGrid(0.5, (0.0, 1.0), (0.0, 0.5), (0.0, 0.5))  # two voxels along x
    car = box((0.5, 0.25, 0.25), (0.5, 0.25, 0.25), CAR)
    # Later boxes win their points: a tree filling voxel 1 and a person over a third of voxel 0.
    tree = box((0.75, 0.25, 0.25), (0.25, 0.25, 0.25), TREE)
    person = box((0.0, 0.25, 0.25), (0.5 / 3 + 0.01, 0.3, 0.3), PERSON)
    labels = voxelize(world_of(car, tree, person), grid, torch.eye(4))
    assert labels[:, 0, 0].tolist() == [CAR, TREE]
    # Voxel 0 split into equal halves: car first, tree later -> tree.
    halves = [box((0.125, 0.25, 0.25), (0.125, 0.25, 0.25), CAR)]
    halves.append(box((0.375, 0.25, 0.25), (0.125, 0.25, 0.25), TREE))
    grid_two = OccupancyGrid(0.5, (0.0, 0.5), (0.0, 0.5), (0.0, 0.5))
    labels = voxelize(world_of(*halves), grid_two, torch.eye(4), subsamples=2)
    assert int(labels[0, 0, 0]) == TREE


def test_street_ground_truth() -> None:
    world = build_world("street", 0)
    labels = voxelize(world, OccupancyGrid(), pose(0.0, -1.75))
    present = {CLASS_NAMES[c] for c in labels.unique().tolist() if c != FREE}
    assert present == set(world.classes())
    assert int(labels[100, 100, 2]) == ROAD  # just ahead of the ego, on the ground layer
    assert bool((labels[:, :, 3:] == FREE)[95:105, 95:105].all())  # above the ego's lane: air


# -- visibility --------------------------------------------------------------------------------

VIS_GRID = OccupancyGrid(0.4, (-2.0, 8.0), (-4.0, 4.0), (-1.0, 5.4))  # 25 x 20 x 16
EYE = (0.2, 0.2, 1.6)  # voxel (5, 10, 6)


def forward_camera(width: int = 128, height: int = 96) -> Cameras:
    eye = torch.tensor([EYE])
    viewmat = look_at(eye, eye + torch.tensor([[1.0, 0.0, 0.0]]))
    return Cameras(viewmat, intrinsics_from_fov(60.0, width, height)[None], width, height)


def test_visibility_stops_at_the_first_wall() -> None:
    wall = box((4.4, 0.0, 2.5), (0.4, 6.0, 3.5))  # x in [4.0, 4.8]: voxel layers 15 and 16
    cameras = forward_camera()
    visible = camera_visibility(world_of(wall), VIS_GRID, torch.eye(4), cameras)
    assert visible.dtype == torch.bool and visible.shape == VIS_GRID.shape
    assert bool(visible[5:16, 10, 6].all())  # from the camera's voxel to the wall's front layer
    assert not bool(visible[16:].any())  # inside and behind the wall
    assert not bool(visible[:5].any())  # behind the camera
    # The front layer: the voxels whose square lies inside the image's footprint on the wall are
    # visible, those wholly outside it are not.
    K, distance = cameras.Ks[0], 4.0 - EYE[0]
    half_y = distance * (cameras.width / 2 - 0.5) / float(K[0, 0])
    half_z = distance * (cameras.height / 2 - 0.5) / float(K[1, 1])
    lo_y = torch.arange(20) * 0.4 - 4.0
    lo_z = torch.arange(16) * 0.4 - 1.0
    inside_y = (lo_y >= EYE[1] - half_y) & (lo_y + 0.4 <= EYE[1] + half_y)
    inside_z = (lo_z >= EYE[2] - half_z) & (lo_z + 0.4 <= EYE[2] + half_z)
    outside_y = (lo_y + 0.4 < EYE[1] - half_y) | (lo_y > EYE[1] + half_y)
    outside_z = (lo_z + 0.4 < EYE[2] - half_z) | (lo_z > EYE[2] + half_z)
    front = visible[15]
    assert bool(front[inside_y[:, None] & inside_z[None, :]].all())
    assert not bool(front[outside_y[:, None] | outside_z[None, :]].any())
    # Between camera and wall, every voxel whose centre is in view is visible.
    centers = VIS_GRID.centers()[6:15].reshape(-1, 3)
    pixels, depth = cameras.project(centers)
    margin = 2.0
    in_view = (
        (pixels[0, :, 0] > margin) & (pixels[0, :, 0] < cameras.width - margin)
        & (pixels[0, :, 1] > margin) & (pixels[0, :, 1] < cameras.height - margin)
        & (depth[0] > 0)
    )  # fmt: skip
    assert bool(visible[6:15].reshape(-1)[in_view].all())


def test_sky_rays_run_to_the_grid_edge() -> None:
    far_behind = Sphere(
        center=(-50.0, 0.0, 0.0), radius=1.0, class_id=CAR, instance_id=0, texture=GREY
    )
    visible = camera_visibility(
        world_of(far_behind), VIS_GRID, torch.eye(4), forward_camera(32, 24)
    )
    assert bool(visible[5:, 10, 6].all())
    assert not bool(visible[:5].any())
    # rays_scale 0.25 casts the rays of the quarter-size images.
    fewer = camera_visibility(
        world_of(far_behind), VIS_GRID, torch.eye(4), forward_camera(128, 96), rays_scale=0.25
    )
    assert torch.equal(fewer, visible)


# -- prediction from a field -------------------------------------------------------------------

FIELD_GRID = OccupancyGrid(0.4, (-2.0, 2.0), (-2.0, 2.0), (-0.4, 2.0))  # 10 x 10 x 6
WEIGHT = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # decoder F = 2 -> M = 3
TEXTS = torch.stack([WEIGHT @ torch.tensor([1.0, 0.0]), WEIGHT @ torch.tensor([0.0, 1.0])])


def decoder() -> SpeedUpDecoder:
    linear = SpeedUpDecoder(2, 3)
    with torch.no_grad():
        linear.layers[0].weight.copy_(WEIGHT)
        linear.layers[0].bias.zero_()
    return linear


def field_of(
    means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor, quats=None
) -> FeatureField:
    n = len(means)
    gaussians = GaussianField.from_activated(
        means, scales, opacities, torch.full((n, 3), 0.5), features, quats
    )
    return FeatureField(gaussians, decoder(), torch.zeros(3 + features.shape[1]), 0)


def test_gaussians_occupy_their_voxels_with_their_labels() -> None:
    centers = FIELD_GRID.centers()
    a, b = centers[2, 3, 1], centers[7, 5, 4]
    outside = torch.tensor([2.1, 0.2, 0.6])  # beyond x = 2: ignored, though it reaches inside
    means = torch.stack([a, b, outside])
    scales = torch.tensor([[0.15] * 3, [0.15] * 3, [0.3] * 3])
    opacities = torch.tensor([0.9, 0.7, 0.99])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    field = field_of(means, scales, opacities, features)
    labels, density = field_occupancy(field, FIELD_GRID, torch.eye(4), TEXTS, [CAR, TREE])
    assert labels.dtype == torch.int64 and density.dtype == torch.float32
    expected = torch.full(FIELD_GRID.shape, FREE, dtype=torch.int64)
    expected[2, 3, 1], expected[7, 5, 4] = CAR, TREE
    assert torch.equal(labels, expected)
    # The density at a Gaussian's own centre is its opacity (the other is far away).
    assert float(density[2, 3, 1]) == pytest.approx(0.9, abs=1e-6)
    assert float(density[7, 5, 4]) == pytest.approx(0.7, abs=1e-6)
    assert float(density[9].max()) < 0.1  # the outside Gaussian adds nothing
    # The ego one voxel forward: everything moves one voxel back.
    shifted, _ = field_occupancy(field, FIELD_GRID, pose(0.4), TEXTS, [CAR, TREE])
    expected_shifted = torch.full(FIELD_GRID.shape, FREE, dtype=torch.int64)
    expected_shifted[1, 3, 1], expected_shifted[6, 5, 4] = CAR, TREE
    assert torch.equal(shifted[:8], expected_shifted[:8])
    assert int(shifted[9, 5, 2]) == CAR  # the third Gaussian, now at x = 1.7, inside the grid


def test_density_of_a_rotated_gaussian_matches_the_formula() -> None:
    mean, scales, angle, opacity = torch.tensor([0.13, -0.27, 0.9]), (0.5, 0.2, 0.3), 0.7, 0.8
    quat = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]])
    field = field_of(
        mean[None],
        torch.tensor([scales]),
        torch.tensor([opacity]),
        torch.tensor([[1.0, 0.0]]),
        quat,
    )
    _, density = field_occupancy(
        field, FIELD_GRID, torch.eye(4), TEXTS, [CAR, TREE], max_radius_voxels=6
    )
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    covariance = rotation @ torch.diag(torch.tensor(scales, dtype=torch.float64) ** 2) @ rotation.T
    d = FIELD_GRID.centers().double() - mean.double()
    m2 = torch.einsum("...i,ij,...j->...", d, torch.linalg.inv(covariance), d)
    expected = torch.where(m2 <= 9.0, opacity * torch.exp(-0.5 * m2), 0.0)
    assert torch.allclose(density.double(), expected, atol=2e-6)
    # The radius cap cuts the Gaussian's reach (3 sigma ~ 1.3 m here) to one voxel.
    _, capped = field_occupancy(
        field, FIELD_GRID, torch.eye(4), TEXTS, [CAR, TREE], max_radius_voxels=1
    )
    assert int((capped > 0).sum()) <= 27 < int((density > 0).sum())


def test_field_occupancy_refuses_bad_inputs() -> None:
    means = torch.zeros(1, 3)
    rgb_only = FeatureField(
        GaussianField.from_activated(means, torch.ones(1, 3), torch.ones(1) / 2, torch.ones(1, 3)),
        SpeedUpDecoder(0, 0, identity=True),
        torch.zeros(3),
        0,
    )
    with pytest.raises(InputShapeError, match="feature_dim 0"):
        field_occupancy(rgb_only, FIELD_GRID, torch.eye(4), torch.zeros(1, 0), [CAR])
    field = field_of(means, torch.ones(1, 3) * 0.2, torch.ones(1) / 2, torch.ones(1, 2))
    with pytest.raises(InputShapeError, match="text_embeddings"):
        field_occupancy(field, FIELD_GRID, torch.eye(4), torch.zeros(2, 4), [CAR, TREE])
    with pytest.raises(InputShapeError, match="text_embeddings"):
        field_occupancy(field, FIELD_GRID, torch.eye(4), TEXTS, [CAR])
    with pytest.raises(ConfigError, match="density_threshold"):
        field_occupancy(field, FIELD_GRID, torch.eye(4), TEXTS, [CAR, TREE], density_threshold=0)
    with pytest.raises(InputShapeError, match="ego_to_world"):
        field_occupancy(field, FIELD_GRID, torch.zeros(4, 4), TEXTS, [CAR, TREE])


# -- scores ------------------------------------------------------------------------------------


def hand_case() -> tuple[Tensor, Tensor, Tensor]:
    truth = torch.full((4, 4, 4), FREE)
    truth[0], truth[1] = CAR, ROAD
    predicted = torch.full((4, 4, 4), FREE)
    predicted[0, :2] = CAR
    predicted[1, :1] = CAR
    predicted[1, 1:] = ROAD
    predicted[3, 0, 0] = TREE  # only in the prediction
    visible = torch.ones(4, 4, 4, dtype=torch.bool)
    visible[1, 3] = False  # four road voxels, right in both, left out
    return predicted, truth, visible


def test_metrics_on_a_hand_counted_case() -> None:
    predicted, truth, visible = hand_case()
    ids = [CAR, ROAD, TREE, PERSON]
    scores = occupancy_metrics(predicted, truth, visible, CLASS_NAMES, ids)
    # car: 8 right of 12 predicted and 16 true -> 8 / 20; road: 8 right, 8 predicted, 12 true.
    iou = scores["per_class_iou"]
    assert iou["car"] == pytest.approx(0.4)
    assert iou["road"] == pytest.approx(2 / 3)
    assert iou["tree"] == 0.0
    assert math.isnan(iou["person"])
    assert scores["miou"] == pytest.approx((0.4 + 2 / 3 + 0.0) / 3)
    assert scores["foreground_miou"] == pytest.approx((0.4 + 0.0) / 2)  # car, tree (person absent)
    # 28 true and 21 predicted occupied voxels in view, 20 of them shared.
    assert scores["geometric_iou"] == pytest.approx(20 / 29)
    assert (scores["visible_voxels"], scores["truth_occupied"], scores["predicted_occupied"]) == (
        60,
        28,
        21,
    )
    # "street lamp" is a synonym of lamp; a foreground list of only absent classes gives NaN.
    only_lamp = occupancy_metrics(predicted, truth, visible, CLASS_NAMES, ids, ("street lamp",))
    assert math.isnan(only_lamp["foreground_miou"])


def test_metrics_extremes() -> None:
    _, truth, visible = hand_case()
    ids = [CAR, ROAD]
    perfect = occupancy_metrics(truth, truth, visible, CLASS_NAMES, ids)
    assert perfect["miou"] == 1.0 and perfect["geometric_iou"] == 1.0
    assert perfect["per_class_iou"] == {"car": 1.0, "road": 1.0}
    empty = occupancy_metrics(torch.zeros_like(truth), truth, visible, CLASS_NAMES, ids)
    assert empty["geometric_iou"] == 0.0 and empty["miou"] == 0.0
    # Nothing in view: errors outside the mask do not count.
    wrong = torch.full_like(truth, TREE)
    hidden = occupancy_metrics(wrong, truth, torch.zeros_like(visible), CLASS_NAMES, ids)
    assert math.isnan(hidden["miou"]) and math.isnan(hidden["geometric_iou"])
    assert hidden["visible_voxels"] == 0


def test_metrics_refuse_bad_inputs() -> None:
    predicted, truth, visible = hand_case()
    with pytest.raises(InputShapeError, match="predicted"):
        occupancy_metrics(predicted[:2], truth, visible, CLASS_NAMES, [CAR])
    with pytest.raises(InputShapeError, match="predicted"):
        occupancy_metrics(predicted.float(), truth, visible, CLASS_NAMES, [CAR])
    with pytest.raises(InputShapeError, match="truth"):
        occupancy_metrics(predicted, truth + 100, visible, CLASS_NAMES, [CAR])
    with pytest.raises(InputShapeError, match="visible"):
        occupancy_metrics(predicted, truth, visible.long(), CLASS_NAMES, [CAR])
    with pytest.raises(ConfigError, match="class_ids"):
        occupancy_metrics(predicted, truth, visible, CLASS_NAMES, [FREE, CAR])
    with pytest.raises(ConfigError, match="foreground"):
        occupancy_metrics(predicted, truth, visible, CLASS_NAMES, [CAR], ("spaceship",))


def test_bev_image_shows_the_highest_class_forward_up() -> None:
    labels = torch.full((4, 5, 3), FREE)
    labels[0, 0, 0], labels[0, 0, 2] = CAR, TREE  # rear right column: tree on top of a car
    labels[3, 4, 0] = ROAD  # front left column
    palette = torch.zeros(len(CLASS_NAMES), 3)
    palette[TREE], palette[ROAD], palette[CAR] = (
        torch.tensor([0.0, 1.0, 0.0]),
        torch.tensor([0.0, 0.0, 1.0]),
        torch.tensor([1.0, 0.0, 0.0]),
    )
    image = bev_image(labels, palette)
    assert image.shape == (4, 5, 3)
    assert image[3, 4].tolist() == [0.0, 1.0, 0.0]  # bottom right
    assert image[0, 0].tolist() == [0.0, 0.0, 1.0]  # top left
    assert int((image.sum(-1) > 0).sum()) == 2
    default = bev_image(labels)
    assert default.shape == (4, 5, 3) and float(default.min()) >= 0 and float(default.max()) <= 1
    top = torch.full((4, 5), FREE)
    top[0, 0], top[3, 4] = TREE, ROAD
    assert torch.equal(bev_image(top, palette), image)  # a top-down map [X, Y] works too
    with pytest.raises(InputShapeError, match="palette"):
        bev_image(labels, palette[:5])
