"""Regression tests of the dataset and PLY readers' input checks, on files the tests write with
json, struct, PIL and plyfile: paths that leave the dataset, broken cameras, 16-bit images,
``images.txt`` without its points lines, overlapping splits, PLY headers that lie."""

from __future__ import annotations

import json
import logging
import math
import resource
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

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
from feature_splat.errors import CheckpointError, DatasetError, InputShapeError
from feature_splat.gaussians import GaussianField
from feature_splat.io import read_ply, write_ply
from feature_splat.io.ply import read_ply_points, write_ply_points

W, H = 8, 6
IDENTITY = [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
OUTSIDE_HINT = (
    "(absolute paths and '..' are refused; pass allow_outside_paths=True / "
    "--allow-outside-paths to read it)"
)


def save_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(path)


def grey(level: int) -> np.ndarray:
    return np.full((H, W, 3), level, np.uint8)


def error_message(load: Callable[[], Any], error: type[Exception] = DatasetError) -> str:
    with pytest.raises(error) as info:
        load()
    return str(info.value)


def nerfstudio_scene(root: Path, count: int = 3, **meta: Any) -> dict[str, Any]:
    """``root/images/<i>.png`` (grey level 40 i) and ``root/transforms.json``; returns the JSON."""
    frames = []
    for i in range(count):
        save_png(root / "images" / f"{i}.png", grey(40 * i))
        matrix = [[1.0, 0, 0, i], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": matrix})
    data = {"fl_x": 10.0, "fl_y": 10.0, "cx": 4.0, "cy": 3.0, "w": W, "h": H, "frames": frames}
    data.update(meta)
    write_json(root / "transforms.json", data)
    return data


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def blender_scene(root: Path, test_frames: list[dict[str, Any]] | None = None) -> None:
    save_png(root / "train" / "r_0.png", grey(10))
    save_png(root / "test" / "r_0.png", grey(20))
    angle = 2 * math.atan(0.5)
    train = [{"file_path": "./train/r_0", "transform_matrix": IDENTITY}]
    test = [{"file_path": "./test/r_0", "transform_matrix": IDENTITY}]
    write_json(root / "transforms_train.json", {"camera_angle_x": angle, "frames": train})
    test = test if test_frames is None else test_frames
    write_json(root / "transforms_test.json", {"camera_angle_x": angle, "frames": test})


def colmap_text_scene(root: Path, images_txt: str, cameras_txt: str | None = None) -> Path:
    """A text model in ``root/sparse/0`` with images ``root/images/{a,b,c,d}.png``."""
    for k, name in enumerate("abcd"):
        save_png(root / "images" / f"{name}.png", grey(50 + k))
    model = root / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    (model / "cameras.txt").write_text(cameras_txt or f"1 PINHOLE {W} {H} 10 11 4 3\n")
    (model / "images.txt").write_text(images_txt)
    return model


def colmap_binary_scene(
    root: Path,
    camera_params: tuple[float, ...] = (10.0, 11.0, 4.0, 3.0),
    pose: tuple[float, ...] = (1, 0, 0, 0, 0, 0, 2),
    point: tuple[float, float, float] = (0.0, 0.0, 5.0),
) -> None:
    """One PINHOLE camera, one image ``a.png`` and one 3D point, in COLMAP's binary layout."""
    save_png(root / "images" / "a.png", grey(90))
    model = root / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    cameras = struct.pack("<Q", 1) + struct.pack("<iiQQ4d", 1, 1, W, H, *camera_params)
    images = struct.pack("<Q", 1) + struct.pack("<i7di", 1, *pose, 1) + b"a.png\0"
    images += struct.pack("<Q", 0)
    points = struct.pack("<Q", 1) + struct.pack("<Q3d3BdQ", 1, *point, 255, 0, 0, 0.5, 0)
    for name, data in (("cameras.bin", cameras), ("images.bin", images), ("points3D.bin", points)):
        (model / name).write_bytes(data)


# ---- paths a dataset may read ----


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A PNG (level 200) and a point PLY beside the dataset folder ``tmp_path / 'scene'``."""
    save_png(tmp_path / "secret" / "image.png", grey(200))
    save_png(tmp_path / "secret" / "mask.png", np.full((H, W), 255, np.uint8))
    write_ply_points(tmp_path / "secret" / "points.ply", torch.ones(2, 3))
    return tmp_path / "secret"


def _nerfstudio_with(root: Path, field: str, value: str) -> None:
    meta = nerfstudio_scene(root)
    if field == "ply_file_path":
        meta["ply_file_path"] = value
    else:
        meta["frames"][1][field] = value
    write_json(root / "transforms.json", meta)


NERFSTUDIO_PATH_FIELDS = [
    ("file_path", "image.png", "frames[1].file_path"),
    ("mask_path", "mask.png", "frames[1].mask_path"),
    ("ply_file_path", "points.ply", "ply_file_path"),
]


@pytest.mark.parametrize(("field", "target", "named"), NERFSTUDIO_PATH_FIELDS)
@pytest.mark.parametrize("form", ["absolute", "dotdot"])
def test_nerfstudio_refuses_paths_outside_the_folder_whether_or_not_they_exist(
    tmp_path: Path, outside: Path, field: str, target: str, named: str, form: str
) -> None:
    root = tmp_path / "scene"
    messages = []
    for name in (target, "missing.png"):
        value = str(outside / name) if form == "absolute" else f"../secret/{name}"
        _nerfstudio_with(root, field, value)
        message = error_message(lambda: load_nerfstudio(root))
        assert message == (
            f"transforms.json: {named}: {value!r} is outside the dataset folder {root} "
            f"{OUTSIDE_HINT}"
        )
        messages.append(message.replace(value, "VALUE"))
    assert messages[0] == messages[1]  # existence of the target does not show


@pytest.mark.parametrize(("field", "target", "named"), NERFSTUDIO_PATH_FIELDS)
def test_nerfstudio_reads_outside_paths_when_allowed(
    tmp_path: Path, outside: Path, field: str, target: str, named: str
) -> None:
    root = tmp_path / "scene"
    _nerfstudio_with(root, field, str(outside / target))
    for load in (load_nerfstudio, load_dataset):
        dataset = load(root, allow_outside_paths=True)
        if field == "file_path":
            assert torch.allclose(dataset.images[1], torch.full((H, W, 3), 200 / 255))
        elif field == "mask_path":
            assert dataset.masks is not None and dataset.masks[1].all()
        else:
            assert torch.equal(dataset.points, torch.ones(2, 3))


def test_paths_that_stay_inside_and_symlinked_folders_are_read(tmp_path: Path) -> None:
    root = tmp_path / "scene"
    meta = nerfstudio_scene(root)
    meta["frames"][2]["file_path"] = "images/../images/./2.png"  # normalises to images/2.png
    save_png(tmp_path / "elsewhere" / "linked.png", grey(77))
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    meta["frames"][0]["file_path"] = "linked/linked.png"  # lexically inside: followed
    write_json(root / "transforms.json", meta)
    dataset = load_nerfstudio(root)
    assert torch.allclose(dataset.images[0], torch.full((H, W, 3), 77 / 255))
    assert torch.allclose(dataset.images[2], torch.full((H, W, 3), 80 / 255))


@pytest.mark.parametrize("form", ["absolute", "dotdot"])
def test_blender_refuses_paths_outside_the_folder(tmp_path: Path, outside: Path, form: str) -> None:
    root = tmp_path / "scene"
    for stem in ("image", "missing"):
        value = str(outside / stem) if form == "absolute" else f"../secret/{stem}"
        blender_scene(root, [{"file_path": value, "transform_matrix": IDENTITY}])
        assert error_message(lambda: load_blender(root)) == (
            f"transforms_test.json: frames[0].file_path: {value!r} is outside the dataset "
            f"folder {root} {OUTSIDE_HINT}"
        )
    blender_scene(root, [{"file_path": str(outside / "image"), "transform_matrix": IDENTITY}])
    dataset = load_dataset(root, allow_outside_paths=True)
    assert torch.allclose(dataset.images[1], torch.full((H, W, 3), 200 / 255))


@pytest.mark.parametrize("form", ["absolute", "dotdot"])
def test_colmap_refuses_image_names_outside_the_image_folder(
    tmp_path: Path, outside: Path, form: str
) -> None:
    root = tmp_path / "scene"
    for name in ("image.png", "missing.png"):
        value = str(outside / name) if form == "absolute" else f"../../secret/{name}"
        colmap_text_scene(root, f"1 1 0 0 0 0 0 2 1 a.png\n\n2 1 0 0 0 0 0 3 1 {value}\n\n")
        assert error_message(lambda: load_colmap(root)) == (
            f"images.txt: image 2 ({value}): NAME: {value!r} is outside the image folder "
            f"{root / 'images'} {OUTSIDE_HINT}"
        )
    colmap_text_scene(root, f"1 1 0 0 0 0 0 2 1 a.png\n\n2 1 0 0 0 0 0 3 1 {outside}/image.png\n")
    dataset = load_colmap(root, allow_outside_paths=True)
    assert torch.allclose(dataset.images[0], torch.full((H, W, 3), 200 / 255))


def test_colmap_images_dir_named_by_the_caller_is_always_allowed(tmp_path: Path) -> None:
    root = tmp_path / "scene"
    colmap_text_scene(root, "1 1 0 0 0 0 0 2 1 photo.png\n\n")
    save_png(tmp_path / "photos" / "photo.png", grey(33))
    dataset = load_colmap(root, images_dir=tmp_path / "photos", holdout_every=1)
    assert torch.allclose(dataset.images[0], torch.full((H, W, 3), 33 / 255))


# ---- cameras ----


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            {"fl_x": 0.0},
            "transforms.json: fl_x: expected a focal length > 0 (pixels), got 0",
            id="zero-focal",
        ),
        pytest.param(
            {"fl_y": -10.0},
            "transforms.json: fl_y: expected a focal length > 0 (pixels), got -10",
            id="negative-focal",
        ),
    ],
)
def test_nerfstudio_focal_lengths_must_be_positive(
    tmp_path: Path, change: dict[str, float], expected: str
) -> None:
    nerfstudio_scene(tmp_path, **change)
    assert error_message(lambda: load_nerfstudio(tmp_path)) == expected


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        pytest.param(
            [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]],
            "transforms.json: frames[2].transform_matrix: the rotation part is a reflection "
            "(determinant -1); expected a proper rotation (determinant +1)",
            id="reflection",
        ),
        pytest.param(
            [[1.1, 0, 0, 0], [0, 1.1, 0, 0], [0, 0, 1.1, 0], [0, 0, 0, 1]],
            "transforms.json: frames[2].transform_matrix: the rotation part is scaled or sheared "
            "(R^T R differs from I by 0.21); expected a rigid camera pose",
            id="scaled",
        ),
        pytest.param(
            [[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            "transforms.json: frames[2].transform_matrix: the rotation part is scaled or sheared "
            "(R^T R differs from I by 0.5); expected a rigid camera pose",
            id="sheared",
        ),
        pytest.param(
            [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
            "transforms.json: frames[2].transform_matrix: the last row is [0.0, 0.0, 1.0, 1.0]; "
            "expected [0, 0, 0, 1]",
            id="bottom-row",
        ),
    ],
)
def test_nerfstudio_poses_must_be_rigid(tmp_path: Path, matrix: list, expected: str) -> None:
    meta = nerfstudio_scene(tmp_path)
    meta["frames"][2]["transform_matrix"] = matrix
    write_json(tmp_path / "transforms.json", meta)
    assert error_message(lambda: load_nerfstudio(tmp_path)) == expected


def test_nerfstudio_pose_within_tolerance_is_accepted(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path)
    meta["frames"][0]["transform_matrix"][0][0] = 1.0004  # R^T R - I = 8e-4 <= 1e-3
    write_json(tmp_path / "transforms.json", meta)
    assert len(load_nerfstudio(tmp_path)) == 3


def test_blender_reflected_pose_is_refused(tmp_path: Path) -> None:
    reflected = [[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    blender_scene(tmp_path, [{"file_path": "./test/r_0", "transform_matrix": reflected}])
    assert error_message(lambda: load_blender(tmp_path)).startswith(
        "transforms_test.json: frames[0].transform_matrix: the rotation part is a reflection"
    )


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        ("1 PINHOLE 8 6 0 11 4 3", "cameras.txt: camera 1: fx: expected a focal length > 0"),
        ("1 PINHOLE 8 6 10 -1 4 3", "cameras.txt: camera 1: fy: expected a focal length > 0"),
        ("1 SIMPLE_PINHOLE 8 6 -2 4 3", "cameras.txt: camera 1: f: expected a focal length > 0"),
    ],
)
def test_colmap_focal_lengths_must_be_positive(tmp_path: Path, camera: str, expected: str) -> None:
    colmap_text_scene(tmp_path, "1 1 0 0 0 0 0 2 1 a.png\n\n", camera + "\n")
    assert error_message(lambda: load_colmap(tmp_path)).startswith(expected)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"pose": (math.nan, 0, 0, 0, 0, 0, 2)},
            "images.bin: image 1 (a.png): QW QX QY QZ TX TY TZ: expected finite numbers, "
            "got nan 0.0 0.0 0.0 0.0 0.0 2.0",
            id="nan-quaternion",
        ),
        pytest.param(
            {"pose": (1, 0, 0, 0, 0, math.inf, 2)},
            "images.bin: image 1 (a.png): QW QX QY QZ TX TY TZ: expected finite numbers, "
            "got 1.0 0.0 0.0 0.0 0.0 inf 2.0",
            id="inf-translation",
        ),
        pytest.param(
            {"camera_params": (10.0, 11.0, math.nan, 3.0)},
            "cameras.bin: camera 1: PARAMS: expected finite numbers, got [10.0, 11.0, nan, 3.0]",
            id="nan-principal-point",
        ),
        pytest.param(
            {"camera_params": (math.inf, 11.0, 4.0, 3.0)},
            "cameras.bin: camera 1: PARAMS: expected finite numbers, got [inf, 11.0, 4.0, 3.0]",
            id="inf-focal",
        ),
        pytest.param(
            {"point": (0.0, math.nan, 5.0)},
            "points3D.bin: point 1: X Y Z: expected finite numbers within float32 range, "
            "got 0.0 nan 5.0",
            id="nan-point",
        ),
        pytest.param(
            {"point": (1e300, 0.0, 5.0)},
            "points3D.bin: point 1: X Y Z: expected finite numbers within float32 range, "
            "got 1e+300 0.0 5.0",
            id="point-beyond-float32",
        ),
    ],
)
def test_colmap_binary_non_finite_numbers_are_named(
    tmp_path: Path, kwargs: dict[str, Any], expected: str
) -> None:
    colmap_binary_scene(tmp_path, **kwargs)
    assert error_message(lambda: load_colmap(tmp_path, holdout_every=1)) == expected


def test_colmap_binary_valid_scene_loads(tmp_path: Path) -> None:
    colmap_binary_scene(tmp_path)
    dataset = load_colmap(tmp_path, holdout_every=1)
    torch.testing.assert_close(dataset.cameras.Ks[0], intrinsics(10.0, 11.0, 4.0, 3.0))
    assert dataset.points is not None and dataset.points.tolist() == [[0.0, 0.0, 5.0]]


# ---- images.txt without its points lines ----

POSES = {  # IMAGE_ID: (QW QX QY QZ, TX TY TZ, NAME)
    4: ((1.0, 0.0, 0.0, 0.0), (1.0, 2.0, 3.0), "d.png"),
    1: ((math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)), (0.0, 0.0, 4.0), "a.png"),
    3: ((math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0), (0.5, -1.0, 2.0), "c.png"),
    2: ((0.0, 1.0, 0.0, 0.0), (0.0, 1.0, 1.0), "b.png"),
}
EXPECTED_ROTATIONS = {  # by NAME
    "a.png": [[0.0, -1, 0], [1, 0, 0], [0, 0, 1]],
    "b.png": [[1.0, 0, 0], [0, -1, 0], [0, 0, -1]],
    "c.png": [[1.0, 0, 0], [0, 0, -1], [0, 1, 0]],
    "d.png": [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]],
}


def image_line(image_id: int) -> str:
    quaternion, translation, name = POSES[image_id]
    return " ".join(str(v) for v in (image_id, *quaternion, *translation, 1, name))


def check_all_four_images(dataset: Dataset) -> None:
    assert dataset.image_names == ["a", "b", "c", "d"]
    for k, name in enumerate(["a.png", "b.png", "c.png", "d.png"]):
        _, translation, _ = next(p for p in POSES.values() if p[2] == name)
        expected = torch.eye(4)
        expected[:3, :3] = torch.tensor(EXPECTED_ROTATIONS[name])
        expected[:3, 3] = torch.tensor(translation)
        torch.testing.assert_close(dataset.cameras.viewmats[k], expected, atol=1e-6, rtol=0)
        assert torch.allclose(dataset.images[k], torch.full((H, W, 3), (50 + k) / 255))


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda lines: "\n".join(lines) + "\n", id="no-points-lines"),
        pytest.param(lambda lines: "\n\n".join(lines) + "\n\n", id="blank-points-lines"),
        pytest.param(
            lambda lines: (
                f"# comment\n{lines[0]}\n1.5 2.5 -1 3 4 7\n{lines[1]}\n{lines[2]}\n\n{lines[3]}"
            ),
            id="mixed",
        ),
    ],
)
def test_images_txt_with_or_without_points_lines_loads_every_image(
    tmp_path: Path, layout: Callable[[list[str]], str]
) -> None:
    colmap_text_scene(tmp_path, layout([image_line(i) for i in POSES]))
    check_all_four_images(load_colmap(tmp_path))


def test_images_txt_repeated_id_or_name_names_both_lines(tmp_path: Path) -> None:
    lines = [image_line(1), image_line(2), image_line(1).replace("a.png", "e.png")]
    colmap_text_scene(tmp_path, "\n".join(lines) + "\n")
    assert error_message(lambda: load_colmap(tmp_path)) == (
        "images.txt: line 3: IMAGE_ID 1 repeats images.txt: line 1; each image must have its "
        "own IMAGE_ID and NAME"
    )
    lines = [image_line(1), "", image_line(2).replace("b.png", "./a.png"), ""]
    colmap_text_scene(tmp_path, "\n".join(lines) + "\n")
    assert error_message(lambda: load_colmap(tmp_path)) == (
        "images.txt: line 3: NAME 'a.png' repeats images.txt: line 1; each image must have its "
        "own IMAGE_ID and NAME"
    )


# ---- 16-bit and greyscale images ----


PALETTE = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0]])


def palette_image() -> Image.Image:
    image = Image.fromarray((np.arange(H * W).reshape(H, W) % 3).astype(np.uint8), mode="P")
    image.putpalette(PALETTE.astype(np.uint8).flatten().tolist())
    return image


def pattern16() -> np.ndarray:
    return (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 1361 % 65536).astype(np.uint16)


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        pytest.param(
            lambda p: Image.fromarray(pattern16()).save(p),
            lambda: np.repeat(pattern16()[..., None] / 65535, 3, axis=-1),
            id="16-bit-grey-png",
        ),
        pytest.param(
            lambda p: Image.frombytes("I;16B", (W, H), pattern16().astype(">u2").tobytes()).save(
                p.with_suffix(".tif")
            ),
            lambda: np.repeat(pattern16()[..., None] / 65535, 3, axis=-1),
            id="16-bit-big-endian-tiff",
        ),
        pytest.param(
            lambda p: Image.fromarray(pattern16().astype(np.int32)).save(p.with_suffix(".tif")),
            lambda: np.repeat(pattern16()[..., None] / 65535, 3, axis=-1),
            id="32-bit-integer-mode-I-tiff",
        ),
        pytest.param(
            lambda p: Image.fromarray((pattern16() >> 8).astype(np.uint8)).save(p),
            lambda: np.repeat((pattern16() >> 8)[..., None] / 255, 3, axis=-1),
            id="8-bit-grey",
        ),
        pytest.param(
            lambda p: Image.fromarray(
                np.stack([np.full((H, W), 100, np.uint8), np.full((H, W), 51, np.uint8)], -1),
                mode="LA",
            ).save(p),
            lambda: np.full((H, W, 3), 100 / 255 * 0.2 + 0.8),  # over white
            id="grey-alpha",
        ),
        pytest.param(
            lambda p: palette_image().save(p),
            lambda: PALETTE[np.arange(H * W).reshape(H, W) % 3] / 255,
            id="palette",
        ),
    ],
)
def test_images_of_every_supported_mode_read_as_written(
    tmp_path: Path, write: Callable[[Path], None], expected: Callable[[], np.ndarray]
) -> None:
    meta = nerfstudio_scene(tmp_path)
    path = tmp_path / "images" / "special.png"
    write(path)
    written = path if path.exists() else path.with_suffix(".tif")
    meta["frames"][1]["file_path"] = f"images/{written.name}"
    write_json(tmp_path / "transforms.json", meta)
    image = load_nerfstudio(tmp_path).images[1]
    torch.testing.assert_close(image, torch.from_numpy(expected()).float(), atol=1e-6, rtol=0)


def test_unsupported_image_mode_is_named(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path)
    Image.fromarray(np.zeros((H, W), np.float32)).save(tmp_path / "images" / "float.tif")
    meta["frames"][0]["file_path"] = "images/float.tif"
    write_json(tmp_path / "transforms.json", meta)
    assert error_message(lambda: load_nerfstudio(tmp_path)).startswith(
        "transforms.json: frames[0].file_path: images/float.tif: image mode 'F' is not supported"
    )


def test_16_bit_mask_thresholds_at_half_of_65535(tmp_path: Path) -> None:
    meta = nerfstudio_scene(tmp_path)
    values = np.zeros((H, W), np.uint16)
    values[:, 0], values[:, 1], values[:, 2], values[:, 3] = 32767, 32768, 65535, 200
    Image.fromarray(values).save(tmp_path / "mask16.png")
    meta["frames"][0]["mask_path"] = "mask16.png"
    write_json(tmp_path / "transforms.json", meta)
    mask = load_nerfstudio(tmp_path).masks[0]
    assert mask[:, 0].logical_not().all() and mask[:, 1].all() and mask[:, 2].all()
    assert not mask[:, 3:].any()  # 200 of 65535 is dark, not "above 0.5 of 255"


# ---- splits ----


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        pytest.param(
            {
                "train_filenames": ["images/0.png", "images/1.png"],
                "test_filenames": ["images/1.png"],
            },
            "transforms.json: test_filenames[0]: 'images/1.png' is also in transforms.json: "
            "train_filenames[1]; a view cannot be both trained on and held out",
            id="overlap",
        ),
        pytest.param(
            {
                "train_filenames": ["images/0.png", "./images/0.png"],
                "val_filenames": ["images/2.png"],
            },
            "transforms.json: train_filenames[1]: 'images/0.png' is listed twice (also "
            "transforms.json: train_filenames[0]); list each view once",
            id="duplicate",
        ),
    ],
)
def test_nerfstudio_split_lists_may_not_overlap_or_repeat(
    tmp_path: Path, lists: dict[str, list[str]], expected: str
) -> None:
    nerfstudio_scene(tmp_path, **lists)
    assert error_message(lambda: load_nerfstudio(tmp_path)) == expected


def test_blender_view_in_both_splits_is_refused(tmp_path: Path) -> None:
    blender_scene(tmp_path, [{"file_path": "train/r_0.png", "transform_matrix": IDENTITY}])
    assert error_message(lambda: load_blender(tmp_path)) == (
        "transforms_test.json: frames[0]: 'train/r_0.png' is also in transforms_train.json: "
        "frames[0]; a view cannot be both trained on and held out"
    )


def test_dataset_split_may_not_overlap_or_repeat() -> None:
    def make(train: list[int], test: list[int]) -> Dataset:
        return Dataset(
            images=torch.zeros(3, H, W, 3),
            cameras=orbit(3, radius=2.0, width=W, height=H),
            image_names=["a", "b", "c"],
            train_indices=train,
            test_indices=test,
        )

    assert error_message(lambda: make([0, 1], [1, 2]), InputShapeError) == (
        "Dataset split: views [1] are in both train_indices and test_indices; held-out views "
        "must not be trained on"
    )
    assert error_message(lambda: make([0, 0, 1], [2]), InputShapeError) == (
        "Dataset split: train_indices repeats views [0]"
    )
    assert len(make([0, 1, 2], [])) == 3  # no held-out views is allowed


@pytest.mark.parametrize(
    ("make", "load", "named"),
    [
        pytest.param(
            lambda root: nerfstudio_scene(root),
            lambda root: load_nerfstudio(root, holdout_every=0),
            "transforms.json",
            id="nerfstudio-holdout-0",
        ),
        pytest.param(
            lambda root: nerfstudio_scene(
                root, train_filenames=["images/0.png"], test_filenames=[]
            ),
            load_nerfstudio,
            "transforms.json",
            id="nerfstudio-empty-test-list",
        ),
        pytest.param(
            lambda root: blender_scene(root, []), load_blender, "transforms_test.json", id="blender"
        ),
        pytest.param(
            lambda root: colmap_text_scene(root, image_line(1) + "\n"),
            lambda root: load_colmap(root, holdout_every=0),
            "images.txt",
            id="colmap",
        ),
    ],
)
def test_no_held_out_views_logs_one_warning(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make: Callable[[Path], Any],
    load: Callable[[Path], Dataset],
    named: str,
) -> None:
    make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="feature_splat.data"):
        dataset = load(tmp_path)
    assert dataset.test_indices == []
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert named in record.getMessage()
    assert "has no held-out views: evaluation will have nothing to score" in record.getMessage()


# ---- exports use safe, unique names ----


def test_export_names_stay_inside_the_output_folder_and_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    dataset = Dataset(
        images=torch.randint(0, 256, (5, H, W, 3), generator=generator).float() / 255,
        cameras=orbit(5, radius=3.0, width=W, height=H),
        image_names=["../../evil", "/abs/x", "a/b", "b", "B"],
        train_indices=[0, 1, 2],
        test_indices=[3, 4],
    )
    out = tmp_path / "deep" / "out"
    for export, load in (
        (export_nerfstudio, load_nerfstudio),
        (export_blender, load_blender),
        (write_colmap_text, lambda folder: load_colmap(folder, holdout_every=0)),
    ):
        before = set(tmp_path.rglob("*"))
        folder = export(dataset, out / export.__name__).resolve()
        written = [p.resolve() for p in set(tmp_path.rglob("*")) - before if p.is_file()]
        assert written and all(folder in p.parents for p in written)
        back = load(folder)
        stems = [name.rsplit("/", 1)[-1] for name in back.image_names]
        assert len({stem.lower() for stem in stems}) == 5
        # The same views, in whatever order the format keeps: matched by image content.
        for k in range(5):
            j = min(range(5), key=lambda i: float((back.images[i] - dataset.images[k]).abs().max()))
            torch.testing.assert_close(back.images[j], dataset.images[k], atol=1 / 255, rtol=0)
            torch.testing.assert_close(
                back.cameras.viewmats[j], dataset.cameras.viewmats[k], atol=1e-5, rtol=0
            )
    assert {p.name for p in tmp_path.iterdir()} == {"deep"}


# ---- PLY files ----


def _huge_header(fmt: str, count: int = 10**12, extra: str = "") -> bytes:
    return (
        f"ply\nformat {fmt} 1.0\nelement vertex {count}\nproperty float x\nproperty float y\n"
        f"property float z\n{extra}end_header\n"
    ).encode() + b"1 2 3\n"


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize(
    ("reader", "error"), [(read_ply_points, DatasetError), (read_ply, CheckpointError)]
)
def test_ply_header_declaring_more_than_the_file_holds_fails_fast(
    tmp_path: Path, fmt: str, reader: Callable[[Path], Any], error: type[Exception]
) -> None:
    path = tmp_path / "huge.ply"
    path.write_bytes(_huge_header(fmt))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    message = error_message(lambda: reader(path), error)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert message.startswith(f"{path}: truncated: header declares 1000000000000 vertices")


def test_ply_list_element_declaring_huge_counts_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "faces.ply"
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
        "property float y\nproperty float z\nelement face 100000000000\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    path.write_bytes(header.encode() + struct.pack("<3f", 1, 2, 3) + b"\0" * 8)
    message = error_message(lambda: read_ply_points(path))
    assert "truncated: header declares 100000000000 'face' elements" in message


@pytest.mark.parametrize(("text", "byte_order"), [(True, "="), (False, "<"), (False, ">")])
def test_point_ply_in_every_encoding_reads_as_written(
    tmp_path: Path, text: bool, byte_order: str
) -> None:
    xyz = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, -7.0]])
    rgb = np.array([[255, 0, 128], [1, 2, 3]], np.uint8)
    records = np.empty(
        2, dtype=[(c, "f8") for c in "xyz"] + [(c, "u1") for c in ("red", "green", "blue")]
    )
    for k, c in enumerate("xyz"):
        records[c] = xyz[:, k]
    for k, c in enumerate(("red", "green", "blue")):
        records[c] = rgb[:, k]
    path = tmp_path / "points.ply"
    PlyData([PlyElement.describe(records, "vertex")], text=text, byte_order=byte_order).write(
        str(path)
    )
    points, colors = read_ply_points(path)
    torch.testing.assert_close(points, torch.from_numpy(xyz).float())
    torch.testing.assert_close(colors, torch.from_numpy(rgb / 255).float())


def test_point_ply_nan_position_and_missing_file_are_named(tmp_path: Path) -> None:
    records = np.array([(0.0, 1.0, 2.0), (np.nan, 0.0, 0.0)], dtype=[(c, "f4") for c in "xyz"])
    PlyData([PlyElement.describe(records, "vertex")]).write(str(tmp_path / "nan.ply"))
    assert error_message(lambda: read_ply_points(tmp_path / "nan.ply", "scene: ply")) == (
        "scene: ply: vertex property x: vertex 1 is nan; expected finite numbers (within float32 "
        "range)"
    )
    assert error_message(lambda: read_ply_points(tmp_path / "no.ply", "scene: ply")) == (
        "scene: ply: PLY file does not exist"
    )


def test_write_ply_points_round_trips_through_plyfile(tmp_path: Path) -> None:
    points = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.5, 0.0]])
    write_ply_points(tmp_path / "p.ply", points, torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.6]]))
    vertex = PlyData.read(str(tmp_path / "p.ply"))["vertex"]
    assert np.array_equal(np.stack([vertex[c] for c in "xyz"], -1), points.numpy())
    assert [vertex[c].tolist() for c in ("red", "green", "blue")] == [
        [255, 51],
        [0, 102],
        [128, 153],
    ]


GAUSSIAN_PROPERTIES = (
    "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip


def _empty_field(sh_degree: int, feature_dim: int) -> GaussianField:
    return GaussianField(
        means=torch.zeros(0, 3),
        quats=torch.zeros(0, 4),
        log_scales=torch.zeros(0, 3),
        logit_opacities=torch.zeros(0),
        sh0=torch.zeros(0, 1, 3),
        shN=torch.zeros(0, (sh_degree + 1) ** 2 - 1, 3),
        features=torch.zeros(0, feature_dim),
    )


def test_empty_gaussian_ply_round_trips(tmp_path: Path) -> None:
    write_ply(tmp_path / "empty.ply", _empty_field(sh_degree=2, feature_dim=5))
    back = read_ply(tmp_path / "empty.ply")
    assert len(back) == 0 and back.shN.shape == (0, 8, 3) and back.features.shape == (0, 5)
    # An empty 3DGS PLY written by plyfile itself: degree 1 (9 f_rest), no features.
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3"]
    records = np.empty(0, dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(records, "vertex")]).write(str(tmp_path / "other.ply"))
    other = read_ply(tmp_path / "other.ply")
    assert len(other) == 0 and other.shN.shape == (0, 3, 3) and other.feature_dim == 0


def test_gaussian_ply_with_missing_or_list_properties_is_named(tmp_path: Path) -> None:
    records = np.zeros(2, dtype=[(n, "f4") for n in ("x", "y", "z", "opacity")])
    PlyData([PlyElement.describe(records, "vertex")]).write(str(tmp_path / "few.ply"))
    message = error_message(lambda: read_ply(tmp_path / "few.ply"), CheckpointError)
    assert message.startswith(f"{tmp_path / 'few.ply'}: vertex element lacks properties")
    assert "'f_dc_0'" in message
    names = list(GAUSSIAN_PROPERTIES)
    dtype = [(n, "f4") for n in names if n != "x"] + [("x", "O")]
    records = np.empty(1, dtype=dtype)
    for n in names:
        records[n][0] = np.array([1.0, 2.0], np.float32) if n == "x" else 0.0
    PlyData([PlyElement.describe(records, "vertex")]).write(str(tmp_path / "list.ply"))
    assert error_message(lambda: read_ply(tmp_path / "list.ply"), CheckpointError) == (
        f"{tmp_path / 'list.ply'}: vertex properties ['x'] are lists; expected one number each"
    )


# ---- crashes the fuzzer found (tests/test_fuzz_readers.py) ----


def test_json_integer_beyond_the_float_range_is_a_dataset_error(tmp_path: Path) -> None:
    blender_scene(tmp_path)
    meta = json.loads((tmp_path / "transforms_train.json").read_text())
    meta["camera_angle_x"] = 10**400  # OverflowError from math.isfinite before
    write_json(tmp_path / "transforms_train.json", meta)
    assert error_message(lambda: load_blender(tmp_path)).startswith(
        "transforms_train.json: camera_angle_x: expected a finite number, got 1000000"
    )
    meta = nerfstudio_scene(tmp_path / "ns")
    meta["frames"][0]["transform_matrix"][0][3] = -(10**400)
    write_json(tmp_path / "ns" / "transforms.json", meta)
    assert error_message(lambda: load_nerfstudio(tmp_path / "ns")).startswith(
        "transforms.json: frames[0].transform_matrix: expected a 4x4 list of numbers, but row 0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"frames": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "transforms.json: invalid JSON (maximum recursion depth exceeded",
            id="deep-nesting",
        ),
        pytest.param(
            '{"fl_x": ' + "9" * 5000 + "}",
            "transforms.json: invalid JSON (Exceeds the limit",
            id="integer-too-long",
        ),
    ],
)
def test_json_the_parser_refuses_is_a_dataset_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "transforms.json").write_text(text)
    assert error_message(lambda: load_nerfstudio(tmp_path)).startswith(expected)


@pytest.mark.parametrize(
    ("reader", "error"), [(read_ply_points, DatasetError), (read_ply, CheckpointError)]
)
def test_ply_with_a_repeated_property_name_is_refused(
    tmp_path: Path, reader: Callable[[Path], Any], error: type[Exception]
) -> None:
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
        "property float y\nproperty float z\nproperty float z\nend_header\n"
    )
    path = tmp_path / "twice.ply"
    path.write_bytes(
        header.encode() + struct.pack("<4f", 1, 2, 3, 4)
    )  # ValueError from numpy before
    assert error_message(lambda: reader(path), error).startswith(f"{path}: not a readable PLY file")
