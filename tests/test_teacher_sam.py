"""The SAM teacher against segment-anything's own SamPredictor, hand-computed geometry and the
official checkpoint format (key names and shapes from the package's model definition)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from feature_splat.errors import CheckpointError, InputShapeError, NonFiniteError
from feature_splat.teachers import Teacher
from feature_splat.teachers.sam import SAM_CONFIGS, SamTeacher, build_sam_model


@pytest.fixture(scope="module")
def tiny() -> SamTeacher:
    return SamTeacher.random("tiny", seed=0)


def random_images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Images [count, 3, H, W] whose values are exact 8-bit levels (k / 255)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (count, 3, height, width), generator=generator)
    return levels.float() / 255


def meta_shapes(model_type: str, official: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official builder's (or ours) state dict, built without allocating."""
    with torch.device("meta"):
        model = (
            sam_model_registry[model_type]()
            if official
            else build_sam_model(SAM_CONFIGS[model_type])
        )
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def save_zeros(shapes: dict[str, tuple[int, ...]], path: Path) -> Path:
    """A synthetic bare state dict of zeros with ``shapes`` (expanded views: a tiny file)."""
    torch.save({key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}, path)
    return path


# (H, W) -> resized (h', w'), valid cells, exact stride, for the tiny model (img_size 128, patch
# 16), by hand: scale = 128 / max(H, W); short side int(short * scale + 0.5); cells ceil(x / 16).
TINY_GEOMETRY = [
    ((128, 128), (128, 128), (8, 8), 16.0),
    ((96, 96), (128, 128), (8, 8), 12.0),
    ((100, 60), (128, 77), (8, 5), 12.5),  # 60 * 1.28 = 76.8 -> 77 -> 5 cells (the last partial)
    ((50, 200), (32, 128), (2, 8), 25.0),  # 50 * 0.64 = 32 exactly -> 2 whole cells
    ((45, 200), (29, 128), (2, 8), 25.0),  # 45 * 0.64 = 28.8 -> 29 -> 2 cells
]


@pytest.mark.parametrize(("size", "input_size", "cells", "stride"), TINY_GEOMETRY)
def test_geometry_by_hand(
    tiny: SamTeacher,
    size: tuple[int, int],
    input_size: tuple[int, int],
    cells: tuple[int, int],
    stride: float,
) -> None:
    geometry = tiny.geometry(*size)
    assert geometry.original_size == size
    assert geometry.input_size == input_size
    assert geometry.valid_cells == cells
    assert geometry.exact_stride == pytest.approx(stride)


@pytest.mark.parametrize("size", [(96, 96), (100, 60), (45, 200)])
def test_encode_matches_sam_predictor_cropped(tiny: SamTeacher, size: tuple[int, int]) -> None:
    """encode = SamPredictor's embeddings of the same image, with the padding cells cut off."""
    images = random_images(2, *size)
    features = tiny.encode(images)
    _, input_size, cells, stride = next(row for row in TINY_GEOMETRY if row[0] == size)
    assert features.shape == (2, 256, *cells)
    assert features.dtype == torch.float32
    assert tiny.last_valid_cells == cells
    assert tiny.exact_stride == pytest.approx(stride)
    assert tiny.stride == round(stride)
    # The kept cells cover the resized image, and the next row / column would be all padding.
    assert all(c * 16 >= n > (c - 1) * 16 for c, n in zip(cells, input_size, strict=True))

    predictor = SamPredictor(tiny.model)
    for index, image in enumerate(images):
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        predictor.set_image(pixels)
        assert predictor.input_size == input_size
        full = predictor.features[0]
        assert full.shape == (256, 8, 8)
        torch.testing.assert_close(features[index], full[:, : cells[0], : cells[1]])


def test_deterministic_and_seeded(tiny: SamTeacher) -> None:
    images = random_images(1, 70, 90, seed=3)
    first = tiny.encode(images)
    assert torch.equal(first, tiny.encode(images))
    assert tiny.encode(images[:0]).shape == (0, 256, *first.shape[2:])
    again = SamTeacher.random("tiny", seed=0)
    assert torch.equal(first, again.encode(images))
    assert again.config_id == tiny.config_id
    other = SamTeacher.random("tiny", seed=1)
    assert other.config_id != tiny.config_id
    assert not torch.allclose(first, other.encode(images))


def test_protocol_and_text(tiny: SamTeacher) -> None:
    assert isinstance(tiny, Teacher)
    assert tiny.dim == 256
    assert tiny.language_aligned is False
    assert tiny.embedding_size == (8, 8)
    assert tiny.prompt_encoder is tiny.model.prompt_encoder
    assert tiny.mask_decoder is tiny.model.mask_decoder
    assert tiny.transform.target_length == 128
    with pytest.raises(NotImplementedError):
        tiny.encode_text(["a chair"])


def test_bad_images(tiny: SamTeacher) -> None:
    with pytest.raises(InputShapeError, match="images"):
        tiny.encode(torch.zeros(3, 32, 32))
    with pytest.raises(InputShapeError, match="images"):
        tiny.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(NonFiniteError, match="images"):
        tiny.encode(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InputShapeError, match="aspect ratio"):
        tiny.encode(torch.zeros(1, 3, 1, 1000))


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_builder_matches_official_definition(model_type: str) -> None:
    """Our builder's keys and shapes are segment-anything's own (so, the official files')."""
    ours = meta_shapes(model_type, official=False)
    assert ours == meta_shapes(model_type, official=True)
    assert {key.split(".")[0] for key in ours} == {
        "image_encoder",
        "prompt_encoder",
        "mask_decoder",
    }


def test_official_vit_b_state_dict_loads(tmp_path: Path) -> None:
    """A bare state dict with the official vit_b keys and shapes loads strictly."""
    path = save_zeros(meta_shapes("vit_b", official=True), tmp_path / "sam_vit_b_01ec64.pth")
    teacher = SamTeacher(path, "vit_b")
    assert all(not value.any() for value in teacher.model.state_dict().values() if value.ndim)
    assert teacher.embedding_size == (64, 64)
    geometry = teacher.geometry(480, 640)  # long side 640 -> 1024: scale 1.6
    assert geometry.input_size == (768, 1024)
    assert geometry.valid_cells == (48, 64)
    assert geometry.exact_stride == pytest.approx(10.0)
    assert teacher.config_id.startswith("sam-vit_b-")


def test_tiny_checkpoint_round_trip(tiny: SamTeacher, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny.model.state_dict(), path)
    loaded = SamTeacher(path, "tiny")
    images = random_images(1, 40, 64, seed=5)
    assert torch.equal(loaded.encode(images), tiny.encode(images))
    assert loaded.config_id != tiny.config_id  # checkpoint hash vs random seed
    torch.save({"model": tiny.model.state_dict()}, tmp_path / "other.pth")  # different bytes
    assert SamTeacher(tmp_path / "other.pth", "tiny").config_id != loaded.config_id


def test_corrupted_state_dicts_name_the_key(tiny: SamTeacher, tmp_path: Path) -> None:
    state = tiny.model.state_dict()
    wrong_shape = dict(state)
    wrong_shape["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"mask_decoder\.iou_token\.weight"):
        SamTeacher(tmp_path / "shape.pth", "tiny")

    missing = {k: v for k, v in state.items() if k != "image_encoder.neck.0.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"image_encoder\.neck\.0\.weight"):
        SamTeacher(tmp_path / "missing.pth", "tiny")

    with pytest.raises(CheckpointError, match="missing keys"):
        SamTeacher(tmp_path / "missing.pth", "vit_b")  # a tiny dict is not a vit_b


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64\.pth"):
        SamTeacher(None, "vit_b")
    with pytest.raises(CheckpointError, match=r"sam_vit_h_4b8939\.pth"):
        SamTeacher(tmp_path / "nowhere.pth", "vit_h")
    with pytest.raises(CheckpointError, match="model_type"):
        SamTeacher(tmp_path / "nowhere.pth", "vit_x")
