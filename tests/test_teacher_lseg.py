"""The LSeg teacher: geometry, normalisation, options, text, and loading the official checkpoint.

The network runs in a tiny configuration of the same classes (no official weights exist for it and
none are downloaded); the full-size architecture is checked on the meta device against key names
and shapes written down from the official model definition.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from feature_splat.errors import CheckpointError, InputShapeError, NonFiniteError
from feature_splat.teachers.base import Teacher, grid_stride
from feature_splat.teachers.lseg import (
    LSEG_CONFIGS,
    LSegNet,
    LSegTeacher,
    lseg_geometry,
    strip_checkpoint_prefix,
)

TINY_DIM = 24  # LSEG_CONFIGS["tiny"].embed_dim


@pytest.fixture(scope="module")
def teacher() -> LSegTeacher:
    return LSegTeacher.random("tiny", seed=0, image_size=64)


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _unit_norm(features: torch.Tensor) -> bool:
    return torch.allclose(features.norm(dim=1), torch.ones(()), atol=1e-5)


# --- geometry, worked out by hand -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "long_side", "resized", "padded", "cells", "stride"),
    [
        ((360, 480), 480, (360, 480), (384, 480), (180, 240), 2.0),  # Feature 3DGS' 480 x 360
        ((720, 960), 480, (360, 480), (384, 480), (180, 240), 4.0),
        ((45, 64), 64, (45, 64), (64, 64), (23, 32), 2.0),  # odd side: a half cell at the bottom
        ((100, 50), 64, (64, 32), (64, 32), (32, 16), 3.125),  # portrait, downscaled by 0.64
    ],
)
def test_geometry(size, long_side, resized, padded, cells, stride) -> None:
    geometry = lseg_geometry(*size, long_side)
    assert geometry.input_size == resized
    assert geometry.padded_size == padded
    assert geometry.valid_cells == cells
    assert geometry.exact_stride == pytest.approx(stride)


def test_net_output_is_at_stride_2_of_its_input() -> None:
    net = LSegNet(LSEG_CONFIGS["tiny"]).eval()
    with torch.no_grad():
        out = net(_images(2, 3, 64, 96) * 2 - 1)
    assert out.shape == (2, TINY_DIM, 32, 48)
    with pytest.raises(InputShapeError, match="multiples of 32"):
        net(torch.zeros(1, 3, 48, 64))


def test_encode_shapes_stride_and_unit_norm(teacher) -> None:
    features = teacher.encode(_images(2, 3, 48, 64))
    assert features.shape == (2, TINY_DIM, 24, 32)
    assert features.dtype == torch.float32 and bool(torch.isfinite(features).all())
    assert _unit_norm(features)
    assert (teacher.stride, teacher.exact_stride) == (2, 2.0)

    portrait = teacher.encode(_images(1, 3, 100, 50))
    assert portrait.shape == (1, TINY_DIM, 32, 16)
    assert (teacher.stride, teacher.exact_stride) == (3, 3.125)
    assert teacher.last_geometry == teacher.geometry(100, 50)
    assert isinstance(teacher, Teacher)
    assert teacher.language_aligned and teacher.dim == TINY_DIM
    assert grid_stride(teacher) is None  # it resizes its input: rendered maps get resampled


def test_padding_cells_are_cropped(teacher) -> None:
    # The teacher pads a 48 x 64 image with black rows to 64 x 64: encoding that padded image
    # explicitly gives 32 rows of cells, of which the first 24 are the 48 x 64 image's cells.
    image = _images(1, 3, 48, 64, seed=1)
    padded = torch.cat([image, torch.zeros(1, 3, 16, 64)], dim=2)
    cropped = teacher.encode(image)
    full = teacher.encode(padded)
    assert full.shape[-2:] == (32, 32) and cropped.shape[-2:] == (24, 32)
    torch.testing.assert_close(cropped, full[:, :, :24], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[:, :, 24:], full[:, :, :8], atol=1e-3)  # padding cells differ


def test_encode_is_deterministic_and_seeded(teacher) -> None:
    images = _images(1, 3, 40, 56, seed=2)
    assert torch.equal(teacher.encode(images), teacher.encode(images))
    twin = LSegTeacher.random("tiny", seed=0, image_size=64)
    assert torch.equal(twin.encode(images), teacher.encode(images))
    other = LSegTeacher.random("tiny", seed=1, image_size=64)
    assert not torch.allclose(other.encode(images), teacher.encode(images))
    assert not teacher.net.training


# --- multi-scale and flip averaging ---------------------------------------------------------------


def test_flip_averaging_is_mirror_equivariant() -> None:
    image = _images(1, 3, 64, 64, seed=3)  # a multiple of 32 at image_size: no resize, no pad
    flipped = LSegTeacher.random("tiny", image_size=64, flip=True)
    torch.testing.assert_close(
        flipped.encode(image.flip(-1)), flipped.encode(image).flip(-1), atol=1e-5, rtol=1e-5
    )
    plain = LSegTeacher.random("tiny", image_size=64)
    assert not torch.allclose(plain.encode(image.flip(-1)), plain.encode(image).flip(-1), atol=1e-3)


def test_multi_scale_shapes_and_single_scale_identity(teacher) -> None:
    images = _images(2, 3, 50, 70, seed=4)
    base = teacher.encode(images)
    multi = LSegTeacher.random("tiny", image_size=64, multi_scale=True, flip=True)
    averaged = multi.encode(images)  # long sides 48, 64, 80, 96, 112, each also mirrored
    assert averaged.shape == base.shape == (2, TINY_DIM, 23, 32)
    assert _unit_norm(averaged) and not torch.allclose(averaged, base, atol=1e-3)
    assert multi.stride == teacher.stride

    one_scale = LSegTeacher.random("tiny", image_size=64, multi_scale=True, scales=(1.0,))
    assert torch.equal(one_scale.encode(images), base)


def test_config_id_tracks_options_and_weights(teacher) -> None:
    same = LSegTeacher.random("tiny", seed=0, image_size=64)
    assert same.config_id == teacher.config_id
    variants = [
        LSegTeacher.random("tiny", seed=1, image_size=64),
        LSegTeacher.random("tiny", seed=0, image_size=96),
        LSegTeacher.random("tiny", seed=0, image_size=64, flip=True),
        LSegTeacher.random("tiny", seed=0, image_size=64, multi_scale=True),
    ]
    ids = {teacher.config_id, *(v.config_id for v in variants)}
    assert len(ids) == 5


def test_bad_inputs_and_options(teacher) -> None:
    with pytest.raises(InputShapeError, match="images"):
        teacher.encode(torch.zeros(3, 32, 32))
    with pytest.raises(NonFiniteError, match="images"):
        teacher.encode(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(InputShapeError, match="image_size"):
        LSegTeacher.random("tiny", image_size=16)
    with pytest.raises(InputShapeError, match=r"model_type.*clip_vitl16_384"):
        LSegTeacher.random("vit_huge")


# --- text -----------------------------------------------------------------------------------------


def test_encode_text(teacher) -> None:
    embeddings = teacher.encode_text(["a chair", "a sofa", "a chair"])
    assert embeddings.shape == (3, TINY_DIM) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(embeddings[0], embeddings[2])
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-3)
    assert teacher.encode_text([]).shape == (0, TINY_DIM)
    with pytest.raises(InputShapeError, match="texts"):
        teacher.encode_text("a chair")


def test_tokenizer_is_openai_clip_bpe() -> None:
    import open_clip

    tokens = open_clip.tokenize(["a"])[0]
    # OpenAI CLIP's BPE: <start_of_text> = 49406, "a</w>" = 320, <end_of_text> = 49407, then 0s.
    assert tokens[:3].tolist() == [49406, 320, 49407] and tokens.shape == (77,)
    assert int(tokens[3:].abs().sum()) == 0


# --- the official checkpoint ----------------------------------------------------------------------

# Written down from the official definition (GitHub isl-org/lang-seg, modules/models/lseg_net.py,
# lseg_blocks.py, lseg_vit.py; backbone "clip_vitl16_384", features=256, use_bn=True,
# arch_option=0): timm vit_large_patch16_384 as pretrained.model, DPT reassembles with "project"
# readout, fusion blocks with batch norm, head1 to 512 channels, and clip.load("ViT-B/32") as
# clip_pretrained. demo_e200.ckpt holds these under "state_dict" with the prefix "net.".
OFFICIAL_KEYS: dict[str, tuple[int, ...]] = {
    "pretrained.model.cls_token": (1, 1, 1024),
    "pretrained.model.pos_embed": (1, 577, 1024),
    "pretrained.model.patch_embed.proj.weight": (1024, 3, 16, 16),
    "pretrained.model.patch_embed.proj.bias": (1024,),
    "pretrained.model.blocks.0.norm1.weight": (1024,),
    "pretrained.model.blocks.0.attn.qkv.weight": (3072, 1024),
    "pretrained.model.blocks.0.attn.qkv.bias": (3072,),
    "pretrained.model.blocks.0.attn.proj.weight": (1024, 1024),
    "pretrained.model.blocks.0.norm2.bias": (1024,),
    "pretrained.model.blocks.0.mlp.fc1.weight": (4096, 1024),
    "pretrained.model.blocks.0.mlp.fc2.weight": (1024, 4096),
    "pretrained.model.blocks.23.mlp.fc2.bias": (1024,),
    "pretrained.model.norm.weight": (1024,),
    "pretrained.model.head.weight": (1000, 1024),
    "pretrained.model.head.bias": (1000,),
    "pretrained.act_postprocess1.0.project.0.weight": (1024, 2048),
    "pretrained.act_postprocess1.0.project.0.bias": (1024,),
    "pretrained.act_postprocess1.3.weight": (256, 1024, 1, 1),
    "pretrained.act_postprocess1.4.weight": (256, 256, 4, 4),
    "pretrained.act_postprocess2.3.weight": (512, 1024, 1, 1),
    "pretrained.act_postprocess2.4.weight": (512, 512, 2, 2),
    "pretrained.act_postprocess3.3.weight": (1024, 1024, 1, 1),
    "pretrained.act_postprocess4.3.weight": (1024, 1024, 1, 1),
    "pretrained.act_postprocess4.4.weight": (1024, 1024, 3, 3),
    "pretrained.act_postprocess4.4.bias": (1024,),
    "scratch.layer1_rn.weight": (256, 256, 3, 3),
    "scratch.layer2_rn.weight": (256, 512, 3, 3),
    "scratch.layer3_rn.weight": (256, 1024, 3, 3),
    "scratch.layer4_rn.weight": (256, 1024, 3, 3),
    "scratch.refinenet1.out_conv.weight": (256, 256, 1, 1),
    "scratch.refinenet1.out_conv.bias": (256,),
    "scratch.refinenet1.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "scratch.refinenet1.resConfUnit1.bn1.running_mean": (256,),
    "scratch.refinenet1.resConfUnit1.bn1.num_batches_tracked": (),
    "scratch.refinenet4.resConfUnit1.conv2.weight": (256, 256, 3, 3),
    "scratch.refinenet4.resConfUnit2.bn2.running_var": (256,),
    "scratch.head1.weight": (512, 256, 1, 1),
    "scratch.head1.bias": (512,),
    "clip_pretrained.positional_embedding": (77, 512),
    "clip_pretrained.text_projection": (512, 512),
    "clip_pretrained.logit_scale": (),
    "clip_pretrained.token_embedding.weight": (49408, 512),
    "clip_pretrained.ln_final.weight": (512,),
    "clip_pretrained.transformer.resblocks.0.attn.in_proj_weight": (1536, 512),
    "clip_pretrained.transformer.resblocks.11.mlp.c_proj.weight": (512, 2048),
    "clip_pretrained.visual.class_embedding": (768,),
    "clip_pretrained.visual.positional_embedding": (50, 768),
    "clip_pretrained.visual.conv1.weight": (768, 3, 32, 32),
    "clip_pretrained.visual.proj": (768, 512),
    "clip_pretrained.visual.transformer.resblocks.11.ln_2.bias": (768,),
}
# Key count: CLIP ViT-B/32 302 (12 + 12 resblocks x 12, plus 8 visual and 6 text tensors);
# ViT-L/16 296 (24 blocks x 12, plus cls, pos, patch 2, norm 2, head 2); reassembles 22
# (6 + 6 + 4 + 6); scratch 110 (4 layer_rn, 4 refinenets x (out_conv 2 + 2 units x (2 convs +
# 2 batch norms x 5)), head1 2).
OFFICIAL_KEY_COUNT = 302 + 296 + 22 + 110


def test_full_size_net_has_the_official_keys() -> None:
    with torch.device("meta"):
        net = LSegNet(LSEG_CONFIGS["clip_vitl16_384"])
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert len(shapes) == OFFICIAL_KEY_COUNT
    for key, shape in OFFICIAL_KEYS.items():
        assert shapes.get(key) == shape, key
    assert not [k for k in shapes if k.startswith(("scratch.output_conv", "logit_scale"))]

    # The "net." prefix of the Lightning checkpoint is stripped; other keys are left to fail.
    checkpoint_keys = {f"net.{key}": value for key, value in net.state_dict().items()}
    assert set(strip_checkpoint_prefix(checkpoint_keys)) == set(shapes)
    assert set(strip_checkpoint_prefix({"other.x": torch.zeros(1)})) == {"other.x"}


def _fake_lightning_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save ``state`` as PyTorch Lightning 1.4 saves a LightningModule whose network is ``net``:
    under "state_dict" with the prefix "net.", beside callback states keyed by the callback's class
    (a class of a package that is not installed at load time)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.mc"]
    modules = {name: types.ModuleType(name) for name in names}
    checkpoint_class = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[names[-1]].ModelCheckpoint = checkpoint_class
    sys.modules.update(modules)
    try:
        torch.save(
            {
                "epoch": 199,
                "global_step": 1000,
                "pytorch-lightning_version": "1.4.9",
                "state_dict": {f"net.{key}": value for key, value in state.items()},
                "callbacks": {checkpoint_class: {"best_model_score": torch.tensor(0.5)}},
                "optimizer_states": [],
            },
            path,
        )
    finally:
        for name in names:
            del sys.modules[name]


def test_official_style_checkpoint_loads_strictly(tmp_path, teacher) -> None:
    path = tmp_path / "demo_e200.ckpt"
    _fake_lightning_checkpoint(path, teacher.net.state_dict())
    loaded = LSegTeacher(path, image_size=64, model_type="tiny")
    images = _images(1, 3, 40, 64, seed=5)
    assert torch.equal(loaded.encode(images), teacher.encode(images))
    assert torch.equal(loaded.encode_text(["wall"]), teacher.encode_text(["wall"]))
    assert loaded.config_id != teacher.config_id  # checkpoint hash vs random seed

    bare = tmp_path / "lseg_state_dict.pt"  # the weights alone, re-saved without Lightning
    torch.save(teacher.net.state_dict(), bare)
    assert torch.equal(
        LSegTeacher(bare, 64, model_type="tiny").encode(images), loaded.encode(images)
    )


def test_corrupted_checkpoints_name_the_key(tmp_path, teacher) -> None:
    state = dict(teacher.net.state_dict())
    del state["scratch.head1.bias"]
    _fake_lightning_checkpoint(tmp_path / "missing.ckpt", state)
    with pytest.raises(CheckpointError, match=r"missing keys.*scratch\.head1\.bias"):
        LSegTeacher(tmp_path / "missing.ckpt", model_type="tiny")

    state = dict(teacher.net.state_dict())
    state["pretrained.act_postprocess1.3.weight"] = torch.zeros(3, 3, 1, 1)
    _fake_lightning_checkpoint(tmp_path / "shape.ckpt", state)
    with pytest.raises(
        CheckpointError, match=r"wrong shape.*pretrained\.act_postprocess1\.3\.weight"
    ):
        LSegTeacher(tmp_path / "shape.ckpt", model_type="tiny")

    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: not a readable"):
        LSegTeacher(tmp_path / "garbage.ckpt", model_type="tiny")


def test_checkpoint_with_foreign_objects_is_refused(tmp_path, teacher) -> None:
    name = "someone_elses_package"
    module = types.ModuleType(name)
    module.Payload = type("Payload", (), {"__module__": name})
    sys.modules[name] = module
    try:
        torch.save(
            {"state_dict": teacher.net.state_dict(), "x": module.Payload()}, tmp_path / "x.pt"
        )
    finally:
        del sys.modules[name]
    with pytest.raises(CheckpointError, match=r"someone_elses_package\.Payload"):
        LSegTeacher(tmp_path / "x.pt", model_type="tiny")


def test_missing_checkpoint_names_demo_e200_and_its_source(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"demo_e200\.ckpt.*no checkpoint given.*lang-seg"):
        LSegTeacher(None)
    with pytest.raises(CheckpointError, match=r"demo_e200\.ckpt.*does not exist.*lang-seg"):
        LSegTeacher(tmp_path / "checkpoints" / "demo_e200.ckpt")
