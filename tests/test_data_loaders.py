"""Dataset loaders against independent truth: round trips, hand-written files, error messages."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from feature_splat.cameras import intrinsics, orbit
from feature_splat.data import (
    Dataset,
    export_blender,
    export_nerfstudio,
    load_blender,
    load_colmap,
    load_dataset,
    load_nerfstudio,
)
from feature_splat.data.colmap import write_colmap_text
from feature_splat.errors import DatasetError

W, H = 16, 12


def make_dataset() -> Dataset:
    """Six orbit views of random 8-bit images, with masks, points and a custom split."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, H, W, 3), generator=generator).float() / 255
    return Dataset(
        images=images,
        cameras=orbit(6, radius=3.0, width=W, height=H),
        image_names=[f"view_{i:03d}" for i in range(6)],
        train_indices=[1, 2, 3, 5],
        test_indices=[0, 4],
        masks=torch.rand((6, H, W), generator=generator) > 0.3,
        points=torch.randn((10, 3), generator=generator),
        point_colors=torch.randint(0, 256, (10, 3), generator=generator).float() / 255,
    )


def assert_same_views(loaded: Dataset, expected: Dataset) -> None:
    torch.testing.assert_close(
        loaded.cameras.viewmats, expected.cameras.viewmats, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(loaded.cameras.Ks, expected.cameras.Ks, atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.images, expected.images, atol=1 / 255, rtol=0)
    assert (loaded.width, loaded.height) == (expected.width, expected.height)


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def error_message(load: Callable[[], Any]) -> str:
    with pytest.raises(DatasetError) as info:
        load()
    return str(info.value)


# ---- nerfstudio ----


def test_nerfstudio_round_trip_keeps_cameras_images_masks_points_and_split(tmp_path: Path) -> None:
    dataset = make_dataset()
    dataset.cameras.Ks[2] = intrinsics(20.0, 22.0, 7.5, 6.5)  # per-view intrinsics survive
    out = export_nerfstudio(dataset, tmp_path / "ns")
    loaded = load_nerfstudio(out)
    assert_same_views(loaded, dataset)
    assert loaded.image_names == [f"images/view_{i:03d}" for i in range(6)]
    assert (loaded.train_indices, loaded.test_indices) == ([1, 2, 3, 5], [0, 4])
    assert loaded.masks is not None and torch.equal(loaded.masks, dataset.masks)
    torch.testing.assert_close(loaded.points, dataset.points, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.point_colors, dataset.point_colors, atol=1 / 255, rtol=0)
    assert loaded.root == out
    # The format detector finds the same dataset, from the folder or from the JSON file.
    assert_same_views(load_dataset(out), dataset)
    assert_same_views(load_dataset(out / "transforms.json"), dataset)


def test_nerfstudio_export_refuses_an_existing_export_and_the_source_folder(
    tmp_path: Path,
) -> None:
    out = export_nerfstudio(make_dataset(), tmp_path / "ns")
    message = error_message(lambda: export_nerfstudio(make_dataset(), out))
    assert "transforms.json" in message and "overwrite=True" in message
    export_nerfstudio(make_dataset(), out, overwrite=True)
    loaded = load_nerfstudio(out)
    assert "loaded from" in error_message(lambda: export_nerfstudio(loaded, out, overwrite=True))


def nerfstudio_scene(root: Path, count: int = 3) -> dict[str, Any]:
    """Images images/<i>.png (grey level 40 i) and a valid transforms.json content, not yet written."""
    frames = []
    for i in range(count):
        save_png(root / "images" / f"{i}.png", np.full((H, W, 3), 40 * i))
        matrix = [[1, 0, 0, i], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]]
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": matrix})
    return {"fl_x": 20.0, "fl_y": 21.0, "cx": 8.0, "cy": 6.0, "w": W, "h": H, "frames": frames}


def save_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def test_nerfstudio_hand_written_transforms_give_known_cameras(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path, count=5)
    meta["frames"][1].update(fl_x=30.0, cx=7.0)  # per-frame values override the global ones
    meta["camera_model"] = "OPENCV"
    meta["k1"] = 0.0  # zero distortion is fine
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    save_png(tmp_path / "masks" / "3.png", mask)
    meta["frames"][3]["mask_path"] = "masks/3.png"
    save_json(tmp_path / "transforms.json", meta)

    dataset = load_nerfstudio(tmp_path / "transforms.json", holdout_every=2)
    # OpenGL camera at (i, 2, 3) looking down -z, y up -> OpenCV world->camera: y and z flipped.
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 2], [0, 0, -1, 3], [0, 0, 0, 1]])
    expected = expected.repeat(5, 1, 1)
    expected[:, 0, 3] = -torch.arange(5.0)
    torch.testing.assert_close(dataset.cameras.viewmats, expected)
    Ks = intrinsics(20.0, 21.0, 8.0, 6.0).repeat(5, 1, 1)
    Ks[1] = intrinsics(30.0, 21.0, 7.0, 6.0)
    torch.testing.assert_close(dataset.cameras.Ks, Ks)
    # A world point one unit in front of camera 0 projects onto its principal point.
    camera_point = dataset.cameras.viewmats[0] @ torch.tensor([0.0, 2.0, 2.0, 1.0])
    assert camera_point[:3].tolist() == [0.0, 0.0, 1.0]
    assert (dataset.train_indices, dataset.test_indices) == ([1, 3], [0, 2, 4])
    assert torch.allclose(dataset.images[2], torch.full((H, W, 3), 80 / 255))
    assert dataset.masks is not None
    assert dataset.masks[3, :, : W // 2].all() and not dataset.masks[3, :, W // 2 :].any()
    assert dataset.masks[0].all()  # frames without a mask are all valid
    assert dataset.points is None


def test_nerfstudio_split_from_filenames(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path, count=4)
    meta["train_filenames"] = ["./images/0.png", "images/2.png", "images/3.png"]
    meta["val_filenames"] = ["images/1.png"]
    save_json(tmp_path / "transforms.json", meta)
    dataset = load_nerfstudio(tmp_path)
    assert (dataset.train_indices, dataset.test_indices) == ([0, 2, 3], [1])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            lambda m: m["frames"][1].pop("transform_matrix"),
            ["transforms.json: frames[1].transform_matrix: missing"],
            id="missing-matrix",
        ),
        pytest.param(
            lambda m: m.pop("fl_x"),
            ["transforms.json: frames[0].fl_x: missing"],
            id="missing-focal",
        ),
        pytest.param(
            lambda m: m["frames"][2].update(transform_matrix=[[1, 0, 0, 0]] * 3),
            [
                "transforms.json: frames[2].transform_matrix: expected a 4x4 list of numbers, got 3 rows"
            ],
            id="three-row-matrix",
        ),
        pytest.param(
            lambda m: m["frames"][1].update(file_path="images/9.png"),
            ["transforms.json: frames[1].file_path: images/9.png does not exist"],
            id="missing-image",
        ),
        pytest.param(
            lambda m: m["frames"][0].pop("file_path"),
            ["transforms.json: frames[0].file_path: expected a file path"],
            id="missing-file-path",
        ),
        pytest.param(
            lambda m: m.update(k1=0.1),
            ["transforms.json: k1", "distortion-free pinhole"],
            id="global-distortion",
        ),
        pytest.param(
            lambda m: m["frames"][2].update(p2=0.01),
            ["transforms.json: frames[2].p2", "distortion-free pinhole"],
            id="frame-distortion",
        ),
        pytest.param(
            lambda m: m.update(camera_model="OPENCV_FISHEYE"),
            ["transforms.json: camera_model", "OPENCV_FISHEYE"],
            id="fisheye",
        ),
        pytest.param(
            lambda m: m.update(w=20),
            ["transforms.json: frames[0].file_path: images/0.png is 16x12", "20x12"],
            id="size-disagrees-with-w",
        ),
        pytest.param(
            lambda m: m.update(train_filenames=["images/0.png"], test_filenames=["images/7.png"]),
            ["transforms.json: test_filenames[0]", "images/7.png"],
            id="unknown-split-file",
        ),
    ],
)
def test_nerfstudio_errors_name_the_file_and_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], expected: list[str]
) -> None:
    meta = nerfstudio_scene(tmp_path)
    change(meta)
    save_json(tmp_path / "transforms.json", meta)
    message = error_message(lambda: load_nerfstudio(tmp_path))
    for part in expected:
        assert part in message


def test_nerfstudio_malformed_json_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text(
        '{\n  "frames": [\n    {"file_path": "a.png",,}\n  ]\n}'
    )
    message = error_message(lambda: load_nerfstudio(tmp_path))
    assert message.startswith("transforms.json: invalid JSON (line 3, column")


def test_nerfstudio_images_of_different_sizes_name_the_first_odd_one(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path)
    save_png(tmp_path / "images" / "2.png", np.zeros((6, 8, 3)))
    meta["frames"][2].update(w=8, h=6, cx=4.0, cy=3.0)  # consistent with its own image
    save_json(tmp_path / "transforms.json", meta)
    message = error_message(lambda: load_nerfstudio(tmp_path))
    assert "transforms.json: frames[2].file_path: images/2.png is 8x6" in message
    assert "all images must share one size" in message


# ---- Blender ----


def test_blender_round_trip(tmp_path: Path) -> None:
    dataset = make_dataset()
    out = export_blender(dataset, tmp_path / "blender")
    loaded = load_blender(out)
    expected = dataset.subset(dataset.train_indices + dataset.test_indices)
    assert_same_views(loaded, expected)
    assert loaded.image_names == [f"train/view_{i:03d}" for i in (1, 2, 3, 5)] + [
        f"test/view_{i:03d}" for i in (0, 4)
    ]
    assert (loaded.train_indices, loaded.test_indices) == ([0, 1, 2, 3], [4, 5])
    assert loaded.masks is None and loaded.points is None
    assert_same_views(load_dataset(out), expected)


def test_blender_export_needs_one_square_centred_focal_length(tmp_path: Path) -> None:
    dataset = make_dataset()
    dataset.cameras.Ks[3] = intrinsics(20.0, 22.0, 8.0, 6.0)
    message = error_message(lambda: export_blender(dataset, tmp_path / "blender"))
    assert "Dataset.cameras.Ks[3]" in message and "fx == fy" in message
    assert not (tmp_path / "blender" / "transforms_train.json").exists()


def test_blender_hand_written_scene_composites_rgba_and_uses_val_without_test(
    tmp_path: Path,
) -> None:
    pixels = np.zeros((H, W, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:, : W // 2, 3] = 255  # left half opaque red, right half transparent
    identity = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    for split in ("train", "val"):
        save_png(tmp_path / split / "r_0.png", pixels)
        frames = [{"file_path": f"./{split}/r_0", "transform_matrix": identity}]
        # camera_angle_x = 2 atan(0.5) gives a focal length of exactly W pixels.
        save_json(
            tmp_path / f"transforms_{split}.json",
            {"camera_angle_x": 2 * math.atan(0.5), "frames": frames},
        )
    dataset = load_blender(tmp_path, background=(0.0, 0.0, 1.0))
    assert dataset.image_names == ["train/r_0", "val/r_0"]
    assert (dataset.train_indices, dataset.test_indices) == ([0], [1])
    torch.testing.assert_close(dataset.cameras.Ks[0], intrinsics(16.0, 16.0, 8.0, 6.0))
    torch.testing.assert_close(
        dataset.cameras.viewmats[0], torch.diag(torch.tensor([1.0, -1, -1, 1]))
    )
    assert dataset.images[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert dataset.images[0, 0, -1].tolist() == [0.0, 0.0, 1.0]  # the background shows through
    assert load_blender(tmp_path).images[0, 0, -1].tolist() == [1.0, 1.0, 1.0]


def test_blender_missing_image_names_the_file_and_field(tmp_path: Path) -> None:
    for split in ("train", "test"):
        frames = [{"file_path": f"./{split}/r_7", "transform_matrix": np.eye(4).tolist()}]
        save_json(tmp_path / f"transforms_{split}.json", {"camera_angle_x": 0.7, "frames": frames})
    message = error_message(lambda: load_blender(tmp_path))
    assert (
        message
        == "transforms_train.json: frames[0].file_path: neither ./train/r_7 nor ./train/r_7.png exists"
    )


# ---- COLMAP ----

# Two cameras and three images, written by hand. Quaternions are (QW, QX, QY, QZ).
CAMERAS_TXT = """\
# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
1 PINHOLE 16 12 20.0 21.0 8.0 6.0
2 SIMPLE_RADIAL 16 12 18.0 7.5 6.5 0.0
"""
IMAGES_TXT = """\
# Image list with two lines of data per image:
#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME
#   POINTS2D[] as (X, Y, POINT3D_ID)
3 1 0 0 0 1 2 3 1 b.png
4.0 5.0 1 9.0 9.0 -1
1 0.7071067811865476 0 0 0.7071067811865476 0 0 4 2 a.png

2 0.7071067811865476 0.7071067811865476 0 0 0.5 -1 2 1 c.png
10.0 20.0 2
"""
POINTS_TXT = """\
# 3D point list with one line of data per point:
1 0.0 0.0 5.0 255 0 0 0.5 3 0
2 1.0 -1.0 2.0 0 255 128 0.1 2 0 1 1
"""


def write_colmap_images(scene: Path) -> None:
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        save_png(scene / "images" / name, np.full((H, W, 3), 100 + k))


def check_hand_written_model(dataset: Dataset) -> None:
    """The views of the hand-written model, sorted by name: a (camera 2), b (camera 1), c (camera 1)."""
    assert dataset.image_names == ["a", "b", "c"]
    expected_viewmats = torch.tensor(
        [
            # a: 90 degrees about z, t = (0, 0, 4)
            [[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]],
            # b: identity rotation, t = (1, 2, 3)
            [[1.0, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]],
            # c: 90 degrees about x, t = (0.5, -1, 2)
            [[1.0, 0, 0, 0.5], [0, 0, -1, -1], [0, 1, 0, 2], [0, 0, 0, 1]],
        ]
    )
    torch.testing.assert_close(dataset.cameras.viewmats, expected_viewmats, atol=1e-6, rtol=0)
    expected_Ks = torch.stack(
        [
            intrinsics(18.0, 18.0, 7.5, 6.5),
            intrinsics(20.0, 21.0, 8.0, 6.0),
            intrinsics(20.0, 21.0, 8.0, 6.0),
        ]
    )
    torch.testing.assert_close(dataset.cameras.Ks, expected_Ks)
    assert torch.allclose(dataset.images[1], torch.full((H, W, 3), 101 / 255))
    assert (dataset.train_indices, dataset.test_indices) == ([1, 2], [0])
    torch.testing.assert_close(dataset.points, torch.tensor([[0.0, 0.0, 5.0], [1.0, -1.0, 2.0]]))
    torch.testing.assert_close(
        dataset.point_colors, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 128 / 255]])
    )


def write_text_model(folder: Path, cameras: str = CAMERAS_TXT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(cameras)
    (folder / "images.txt").write_text(IMAGES_TXT)
    (folder / "points3D.txt").write_text(POINTS_TXT)


def test_colmap_hand_written_text_model(tmp_path: Path) -> None:
    write_colmap_images(tmp_path)
    write_text_model(tmp_path / "sparse" / "0")
    dataset = load_colmap(tmp_path)
    check_hand_written_model(dataset)
    assert dataset.root == tmp_path
    check_hand_written_model(load_dataset(tmp_path))


def binary_model() -> dict[str, bytes]:
    """The hand-written model above in COLMAP's binary layout."""
    cameras = struct.pack("<Q", 2)
    cameras += struct.pack("<iiQQ4d", 1, 1, 16, 12, 20.0, 21.0, 8.0, 6.0)  # PINHOLE = 1
    cameras += struct.pack("<iiQQ4d", 2, 2, 16, 12, 18.0, 7.5, 6.5, 0.0)  # SIMPLE_RADIAL = 2
    s = math.sqrt(0.5)
    records = [
        (3, (1, 0, 0, 0, 1, 2, 3), 1, b"b.png", [(4.0, 5.0, 1), (9.0, 9.0, -1)]),
        (1, (s, 0, 0, s, 0, 0, 4), 2, b"a.png", []),
        (2, (s, s, 0, 0, 0.5, -1, 2), 1, b"c.png", [(10.0, 20.0, 2)]),
    ]
    images = struct.pack("<Q", len(records))
    for image_id, pose, camera_id, name, points2d in records:
        images += struct.pack("<i7di", image_id, *pose, camera_id) + name + b"\0"
        images += struct.pack("<Q", len(points2d))
        images += b"".join(struct.pack("<ddq", *p) for p in points2d)
    points = struct.pack("<Q", 2)
    points += struct.pack("<Q3d3BdQ", 1, 0.0, 0.0, 5.0, 255, 0, 0, 0.5, 1) + struct.pack(
        "<ii", 3, 0
    )
    points += struct.pack("<Q3d3BdQ", 2, 1.0, -1.0, 2.0, 0, 255, 128, 0.1, 2)
    points += struct.pack("<iiii", 2, 0, 1, 1)
    return {"cameras.bin": cameras, "images.bin": images, "points3D.bin": points}


def test_colmap_binary_model_written_with_struct(tmp_path: Path) -> None:
    write_colmap_images(tmp_path)
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    for name, data in binary_model().items():
        (model / name).write_bytes(data)
    check_hand_written_model(load_colmap(model))  # the model folder itself; images at ../../images


def test_colmap_truncated_binary_file_is_named(tmp_path: Path) -> None:
    write_colmap_images(tmp_path)
    model = tmp_path / "sparse"
    model.mkdir()
    for name, data in binary_model().items():
        (model / name).write_bytes(data[:-30] if name == "images.bin" else data)
    message = error_message(lambda: load_colmap(tmp_path))
    assert message.startswith("images.bin: image 2") and "truncated" in message


def test_colmap_nonzero_distortion_is_refused(tmp_path: Path) -> None:
    write_colmap_images(tmp_path)
    write_text_model(tmp_path / "sparse", CAMERAS_TXT.replace("6.5 0.0", "6.5 0.01"))
    message = error_message(lambda: load_colmap(tmp_path))
    assert message.startswith("cameras.txt: camera 2: SIMPLE_RADIAL distortion k=0.01 is not zero")


def test_colmap_bad_number_and_missing_image_are_named(tmp_path: Path) -> None:
    write_colmap_images(tmp_path)
    write_text_model(tmp_path / "sparse", CAMERAS_TXT.replace("21.0", "x"))
    assert error_message(lambda: load_colmap(tmp_path)) == (
        "cameras.txt: line 3: PARAMS: expected a number, got 'x'"
    )
    write_text_model(tmp_path / "sparse")
    (tmp_path / "images" / "c.png").unlink()
    message = error_message(lambda: load_colmap(tmp_path))
    assert message.startswith("images.txt: image 2 (c.png):") and "does not exist" in message


def test_colmap_text_writer_round_trip(tmp_path: Path) -> None:
    dataset = make_dataset()
    out = write_colmap_text(dataset, tmp_path / "colmap")
    loaded = load_colmap(out, holdout_every=3)
    assert_same_views(loaded, dataset)
    assert loaded.image_names == dataset.image_names
    assert (loaded.train_indices, loaded.test_indices) == ([1, 2, 4, 5], [0, 3])
    torch.testing.assert_close(loaded.points, dataset.points, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.point_colors, dataset.point_colors, atol=1 / 255, rtol=0)


def test_load_dataset_lists_what_it_looked_for(tmp_path: Path) -> None:
    message = error_message(lambda: load_dataset(tmp_path))
    for looked_for in ("transforms.json", "transforms_train.json", "cameras.txt", "cameras.bin"):
        assert looked_for in message
    assert "does not exist" in error_message(lambda: load_dataset(tmp_path / "nowhere"))
