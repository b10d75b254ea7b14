"""The DINOv2 teacher: geometry, determinism and loading of official and timm checkpoints.

No pretrained weights exist on this machine: the models are tiny random DINOv2-style ViTs (timm's
DINOv2 architecture with few layers and a small width, layer scale included), and the official
checkpoint layout is checked with synthetic state dicts whose keys and shapes are written down from
facebookresearch/dinov2's model definition.
"""

from __future__ import annotations

import pytest
import torch

from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.teachers.base import Teacher
from feature_splat.teachers.checkpoints import file_digest
from feature_splat.teachers.dino import (
    DinoTeacher,
    build_backbone,
    load_backbone,
    to_timm_state_dict,
)

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def official_shapes(
    dim: int, depth: int, swiglu: bool = False, registers: int = 0, grid: int = 37
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of an official DINOv2 release checkpoint (``dinov2_vits14_pretrain.pth`` etc.).

    From facebookresearch/dinov2, dinov2/models/vision_transformer.py (DinoVisionTransformer, as
    built by dinov2/hub/backbones.py: patch 14, img_size 518, block_chunks=0, layer scale, head =
    Identity): cls_token, pos_embed (class row + 37 x 37 grid), mask_token [1, dim], optional
    register_tokens, patch_embed.proj, then per block norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
    the FFN (Mlp fc1/fc2 with ratio 4, or for ViT-g SwiGLUFFNFused w12/w3 with hidden
    (int(4 * dim * 2 / 3) + 7) // 8 * 8), ls2.gamma; finally norm.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
    }
    if registers:
        shapes["register_tokens"] = (1, registers, dim)
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * dim
    for n in range(depth):
        block = {
            "norm1.weight": (dim,),
            "norm1.bias": (dim,),
            "attn.qkv.weight": (3 * dim, dim),
            "attn.qkv.bias": (3 * dim,),
            "attn.proj.weight": (dim, dim),
            "attn.proj.bias": (dim,),
            "ls1.gamma": (dim,),
            "norm2.weight": (dim,),
            "norm2.bias": (dim,),
            "ls2.gamma": (dim,),
        }
        if swiglu:
            block |= {
                "mlp.w12.weight": (2 * hidden, dim),
                "mlp.w12.bias": (2 * hidden,),
                "mlp.w3.weight": (dim, hidden),
                "mlp.w3.bias": (dim,),
            }
        else:
            block |= {
                "mlp.fc1.weight": (hidden, dim),
                "mlp.fc1.bias": (hidden,),
                "mlp.fc2.weight": (dim, hidden),
                "mlp.fc2.bias": (dim,),
            }
        shapes |= {f"blocks.{n}.{key}": shape for key, shape in block.items()}
    shapes["norm.weight"] = (dim,)
    shapes["norm.bias"] = (dim,)
    return shapes


def random_state(
    shapes: dict[str, tuple[int, ...]], device: str = "cpu"
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0) if device == "cpu" else None
    return {
        key: torch.randn(shape, generator=generator, device=device) for key, shape in shapes.items()
    }


def tiny_teacher(image_size: int = 56, **overrides: object) -> DinoTeacher:
    torch.manual_seed(0)
    backbone = build_backbone("vit_small_patch14_dinov2", **(TINY | overrides))
    return DinoTeacher(backbone, weights_id="random-0", image_size=image_size, device="cpu")


def tiny_official_file(tmp_path, drop: str | None = None, reshape: str | None = None):
    """A tiny ViT's weights saved in the official layout (timm names plus ``mask_token``)."""
    torch.manual_seed(1)
    state = dict(build_backbone("vit_small_patch14_dinov2", **TINY).state_dict())
    state["mask_token"] = torch.zeros(1, TINY["embed_dim"])
    if drop is not None:
        del state[drop]
    if reshape is not None:
        state[reshape] = torch.zeros(*state[reshape].shape[:-1], state[reshape].shape[-1] + 1)
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(state, path)
    return path


def test_grid_and_cell_size_by_hand():
    teacher = tiny_teacher(image_size=448)
    # 480 x 640: short side 480 -> 448 = 32 patches; long side 640 * 448 / 480 = 597.3 -> 42.67 -> 43.
    assert teacher.grid_size(480, 640) == (32, 43)
    assert teacher.cell_size(480, 640) == (15.0, 640 / 43)
    # Portrait: the short side is the width.
    assert teacher.grid_size(640, 480) == (43, 32)
    # Upscaled: 100 x 100 -> 448 x 448.
    assert teacher.grid_size(100, 100) == (32, 32)
    # image_size not a multiple of 14: 450 / 14 = 32.14 -> 32 patches.
    assert DinoTeacher(teacher.backbone, weights_id="x", image_size=450).grid_size(90, 90) == (
        32,
        32,
    )


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [(100, 100, (4, 4)), (90, 150, (4, 7)), (150, 90, (7, 4)), (13, 200, (4, 62))],
)
def test_encode_shapes(height, width, grid):
    teacher = tiny_teacher(image_size=56)
    # By hand: scale = 56 / short side, cells = round(side * scale / 14); e.g. 90 x 150 -> 4 x 6.67.
    features = teacher.encode(torch.rand(2, 3, height, width))
    assert features.shape == (2, 32, *grid)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert teacher.cell_size(height, width) == (height / grid[0], width / grid[1])
    assert teacher.stride == round((height / grid[0] + width / grid[1]) / 2)


def test_encode_is_deterministic_and_per_image():
    teacher = tiny_teacher()
    images = torch.rand(3, 3, 60, 80, generator=torch.Generator().manual_seed(2))
    first = teacher.encode(images)
    assert torch.equal(first, teacher.encode(images))
    torch.testing.assert_close(teacher.encode(images[1:2]), first[1:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first[0], first[1])
    assert not teacher.backbone.training
    assert not first.requires_grad


def test_cells_line_up_with_the_original_pixels():
    # Depth 0 and no positional embedding: a cell's feature depends only on its own patch (plus the
    # resize filter's one-pixel reach), so a square covering exactly cell (2, 3)'s original pixels
    # must change cell (2, 3) most and leave cells two or more away untouched.
    teacher = tiny_teacher(image_size=56, depth=0)
    teacher.backbone.pos_embed.data.zero_()
    height, width = 100, 150  # grid 4 x 6, cells of exactly 25 x 25 original pixels
    assert teacher.grid_size(height, width) == (4, 6)
    background = torch.full((1, 3, height, width), 0.2)
    marked = background.clone()
    marked[..., 50:75, 75:100] = 0.9
    change = (teacher.encode(marked) - teacher.encode(background)).norm(dim=1)[0]
    assert divmod(int(change.argmax()), 6) == (2, 3)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    far = ((rows - 2).abs() >= 2) | ((cols - 3).abs() >= 2)
    assert change[far].max() == 0


def test_protocol_and_no_text():
    teacher = tiny_teacher()
    assert isinstance(teacher, Teacher)
    assert teacher.dim == 32
    assert teacher.language_aligned is False
    with pytest.raises(NotImplementedError):
        teacher.encode_text(["a chair"])


def test_bad_inputs():
    teacher = tiny_teacher()
    with pytest.raises(InputShapeError, match="images"):
        teacher.encode(torch.rand(3, 32, 32))
    with pytest.raises(InputShapeError, match="images"):
        teacher.encode(torch.rand(1, 4, 32, 32))
    with pytest.raises(InputShapeError, match="image_size"):
        DinoTeacher(teacher.backbone, weights_id="x", image_size=10)
    assert teacher.encode(torch.rand(0, 3, 56, 56)).shape == (0, 32, 4, 4)


def test_official_vits14_keys_load_into_timm_model(tmp_path):
    shapes = official_shapes(dim=384, depth=12)
    assert len(shapes) == 5 + 12 * 14 + 2  # 175 tensors, as in dinov2_vits14_pretrain.pth
    state = random_state(shapes)
    backbone = build_backbone("vit_small_patch14_dinov2")
    converted = to_timm_state_dict(state, backbone)
    assert set(converted) == set(backbone.state_dict())  # no missing, no unexpected keys
    assert "mask_token" in state  # the caller's dict is left as it was

    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    teacher = DinoTeacher.from_checkpoint(path, image_size=56, device="cpu")
    loaded = teacher.backbone.state_dict()
    for key in ("cls_token", "pos_embed", "blocks.7.attn.qkv.weight", "blocks.11.ls2.gamma"):
        assert torch.equal(loaded[key], state[key])
    assert teacher.dim == 384
    assert teacher.encode(torch.rand(1, 3, 56, 84)).shape == (1, 384, 4, 6)


@pytest.mark.parametrize(
    ("model", "dim", "depth", "swiglu", "registers"),
    [
        ("vit_base_patch14_dinov2", 768, 12, False, 0),
        ("vit_large_patch14_dinov2", 1024, 24, False, 0),
        ("vit_giant_patch14_dinov2", 1536, 40, True, 0),
        ("vit_small_patch14_reg4_dinov2", 384, 12, False, 4),
    ],
)
def test_other_official_layouts_convert_exactly(model, dim, depth, swiglu, registers):
    # On the meta device: shapes only, nothing allocated.
    with torch.device("meta"):
        backbone = build_backbone(model)
    state = random_state(official_shapes(dim, depth, swiglu, registers), device="meta")
    converted = to_timm_state_dict(state, backbone)
    expected = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected


def test_timm_layout_loads_unchanged(tmp_path):
    teacher = tiny_teacher()
    path = tmp_path / "timm.pth"
    torch.save(teacher.backbone.state_dict(), path)
    loaded = load_backbone(path, "vit_small_patch14_dinov2", **TINY)
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_official_tiny_file_gives_the_same_features(tmp_path):
    path = tiny_official_file(tmp_path)
    backbone = load_backbone(path, "vit_small_patch14_dinov2", **TINY)
    torch.manual_seed(1)
    reference = build_backbone("vit_small_patch14_dinov2", **TINY)
    images = torch.rand(1, 3, 70, 42)
    ours = DinoTeacher(backbone, weights_id="a", image_size=42, device="cpu").encode(images)
    theirs = DinoTeacher(reference, weights_id="a", image_size=42, device="cpu").encode(images)
    assert torch.equal(ours, theirs)


def test_corrupted_checkpoints_name_the_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.qkv\.weight"):
        load_backbone(tiny_official_file(tmp_path, reshape="blocks.1.attn.qkv.weight"), **TINY)
    with pytest.raises(CheckpointError, match=r"norm\.weight"):
        load_backbone(tiny_official_file(tmp_path, drop="norm.weight"), **TINY)
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_backbone(tiny_official_file(tmp_path, reshape="pos_embed"), **TINY)
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_backbone(tiny_official_file(tmp_path, drop="pos_embed"), **TINY)
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        load_backbone(path, **TINY)


def test_missing_checkpoint_names_the_expected_file(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"dinov2_vits14_pretrain\.pth.*facebookresearch/dinov2"
    ):
        DinoTeacher.from_checkpoint(tmp_path / "nowhere.pth")
    with pytest.raises(CheckpointError, match=r"dinov2_vitl14_pretrain\.pth"):
        DinoTeacher.from_checkpoint(None, "vit_large_patch14_dinov2")
    with pytest.raises(CheckpointError, match="model"):
        build_backbone("vit_small_patch16_224")
    with pytest.raises(CheckpointError, match="model"):
        DinoTeacher.from_checkpoint(tmp_path / "nowhere.pth", "dinov2_vits14")


def test_config_id_tracks_weights_and_size(tmp_path):
    first = tiny_official_file(tmp_path)
    second = tmp_path / "other.pth"
    state = torch.load(first, weights_only=True)
    state["norm.bias"] = state["norm.bias"] + 1
    torch.save(state, second)
    ids = {
        DinoTeacher(
            load_backbone(path, **TINY),
            weights_id=file_digest(path),
            image_size=size,
            device="cpu",
        ).config_id
        for path in (first, second)
        for size in (42, 56)
    }
    assert len(ids) == 4
    assert tiny_teacher().config_id == tiny_teacher().config_id
