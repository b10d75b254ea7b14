"""The CLIP teacher on tiny random open_clip models loaded through the real checkpoint path.

Tiny configs are registered with ``open_clip.add_model_config`` (a JSON file named after the model,
the way open_clip registers its own configs), so ``ClipTeacher`` builds them by name exactly as it
builds ViT-B-16. The official ViT-B-16 / ViT-L-14 are only built on the ``meta`` device (no memory,
no download) to check key names, shapes and the dense path's output shapes.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.io.checkpoints import load_strict
from feature_splat.teachers import Teacher
from feature_splat.teachers.clip import ClipTeacher, check_supported, dense_features

PATCH = 8
EMBED = 24
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def _config(layer_scale: float | None) -> dict:
    vision = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": PATCH}
    if layer_scale is not None:
        vision["ls_init_value"] = layer_scale
    text = {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    return {"embed_dim": EMBED, "vision_cfg": vision, "text_cfg": text}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two registered tiny configs (with / without layer scale) and a checkpoint file for each,
    every parameter randomised (biases and norms included, so nothing hides behind zeros/ones)."""
    folder = tmp_path_factory.mktemp("clip")
    checkpoints = {}
    for name, layer_scale in [("fs-tiny-clip", None), ("fs-tiny-clip-ls", 0.5)]:
        (folder / f"{name}.json").write_text(json.dumps(_config(layer_scale)))
        open_clip.add_model_config(folder / f"{name}.json")
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.ndim == 1 else 0.0))
        torch.save(model.state_dict(), folder / f"{name}.pt")
        checkpoints[name] = folder / f"{name}.pt"
    return checkpoints


@pytest.fixture(scope="module")
def teacher(tiny):
    return ClipTeacher("fs-tiny-clip", tiny["fs-tiny-clip"])


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_loads_checkpoint_and_is_a_teacher(teacher, tiny):
    assert isinstance(teacher, Teacher)
    assert teacher.dim == EMBED and teacher.stride == PATCH and teacher.language_aligned
    reference = torch.load(tiny["fs-tiny-clip"], weights_only=True)
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # open_clip's own loader accepts the same local file without any network access.
    direct = open_clip.create_model("fs-tiny-clip", pretrained=str(tiny["fs-tiny-clip"]))
    assert torch.equal(direct.visual.proj, teacher.model.visual.proj)


@pytest.mark.parametrize(
    ("size", "stride", "cells"),
    [
        ((32, 32), None, (4, 4)),  # the model's own size
        ((37, 50), None, (5, 7)),  # ceil(37 / 8), ceil(50 / 8): partial cells kept
        ((37, 50), 16, (3, 4)),  # downsampled by 2
        ((37, 50), 4, (10, 13)),  # upsampled by 2
        ((5, 3), None, (1, 1)),  # smaller than one patch
    ],
)
def test_shapes_and_unit_norm(tiny, size, stride, cells):
    clip = ClipTeacher("fs-tiny-clip", tiny["fs-tiny-clip"], stride=stride)
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    features = clip.encode(images)
    assert features.shape == (2, EMBED, *cells) and features.dtype == torch.float32
    assert clip.grid_size(*size) == cells
    assert torch.allclose(features.norm(dim=1), torch.ones(2, *cells), atol=1e-5)
    assert torch.equal(features, clip.encode(images))  # deterministic


@pytest.mark.parametrize("name", ["fs-tiny-clip", "fs-tiny-clip-ls"])
def test_value_path_by_hand(tiny, name):
    """The last block recomputed with plain matrix products, and again as open_clip's own block
    with an attention mask that lets each token attend only to itself."""
    clip = ClipTeacher(name, tiny[name])
    visual = clip.model.visual
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))  # 4 x 6 patches
    features = clip.encode(image)[0]

    pixels = (image - MEAN) / STD
    patches = F.unfold(pixels, PATCH, stride=PATCH)[0].T  # [24, 3 * 8 * 8], row-major cells
    tokens = patches @ visual.conv1.weight.reshape(32, -1).T
    grid = visual.positional_embedding[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False, antialias=True)
    position = torch.cat([visual.positional_embedding[:1], grid[0].reshape(32, 24).T])
    x = torch.cat([visual.class_embedding[None], tokens]) + position
    x = _layer_norm(x, visual.ln_pre)[None]
    with torch.no_grad():
        x = visual.transformer.resblocks[0](x)[0]
        last = visual.transformer.resblocks[-1]
        gamma1 = last.ls_1.gamma if name.endswith("ls") else 1.0
        gamma2 = last.ls_2.gamma if name.endswith("ls") else 1.0
        w_v, b_v = last.attn.in_proj_weight[64:], last.attn.in_proj_bias[64:]
        v = _layer_norm(x, last.ln_1) @ w_v.T + b_v
        y = x + gamma1 * (v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias)
        hidden = F.gelu(_layer_norm(y, last.ln_2) @ last.mlp.c_fc.weight.T + last.mlp.c_fc.bias)
        y = y + gamma2 * (hidden @ last.mlp.c_proj.weight.T + last.mlp.c_proj.bias)
        by_hand = F.normalize(_layer_norm(y[1:], visual.ln_post) @ visual.proj, dim=-1)
        expected = by_hand.T.reshape(EMBED, 4, 6)
        assert torch.allclose(features, expected, atol=1e-5)

        self_only = torch.full((25, 25), float("-inf")).fill_diagonal_(0.0)
        masked = last(x[None], attn_mask=self_only)[0]
        via_mask = F.normalize(visual.ln_post(masked[1:]) @ visual.proj, dim=-1)
        assert torch.allclose(features, via_mask.T.reshape(EMBED, 4, 6), atol=1e-5)
        # ... and it is not what the ordinary attention gives.
        ordinary = F.normalize(visual.ln_post(last(x[None])[0, 1:]) @ visual.proj, dim=-1)
        assert not torch.allclose(features, ordinary.T.reshape(EMBED, 4, 6), atol=1e-2)


def test_cells_align_with_original_pixels(tiny):
    """With token mixing and positions switched off, each cell sees only its own patch: a colour
    pattern of stride x stride blocks (partial at the right / bottom) must give, at cell (i, j),
    the feature of a single patch of the colour of block (i, j)."""
    clip = ClipTeacher("fs-tiny-clip", tiny["fs-tiny-clip"])
    visual = clip.model.visual
    with torch.no_grad():
        visual.positional_embedding.zero_()
        for block in visual.transformer.resblocks[:-1]:
            block.attn.out_proj.weight.zero_()
            block.attn.out_proj.bias.zero_()
    colours = torch.rand(5, 7, 3, generator=torch.Generator().manual_seed(3))
    image = colours.repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1)[:37, :50]
    features = clip.encode(image.permute(2, 0, 1)[None])[0]
    singles = clip.encode(colours.reshape(-1, 3)[:, :, None, None].expand(-1, 3, PATCH, PATCH))
    expected = singles[:, :, 0, 0].T.reshape(EMBED, 5, 7)
    assert torch.allclose(features, expected, atol=1e-5)


def test_text_features(teacher):
    texts = ["a photo of a chair", "a table", "a photo of a chair"]
    embeddings = teacher.encode_text(texts)
    assert embeddings.shape == (3, EMBED)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(embeddings[0], embeddings[2])
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-3)
    assert torch.equal(embeddings, teacher.encode_text(texts))
    assert teacher.encode_text([]).shape == (0, EMBED)
    with pytest.raises(InputShapeError, match="texts"):
        teacher.encode_text("a chair")


def test_standard_tokenizer_is_bundled():
    """ViT-B-16's tokenizer is open_clip's BPE tokenizer, whose vocabulary ships with the package."""
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    assert tokenizer(["a photo of a chair"]).shape == (1, 77)


def test_config_id(tiny, teacher, tmp_path):
    same = ClipTeacher("fs-tiny-clip", tiny["fs-tiny-clip"])
    assert same.config_id == teacher.config_id
    assert ClipTeacher("fs-tiny-clip", tiny["fs-tiny-clip"], stride=4).config_id != same.config_id
    state = torch.load(tiny["fs-tiny-clip"], weights_only=True)
    state["visual.proj"] = state["visual.proj"] + 1.0
    torch.save(state, tmp_path / "changed.pt")
    assert ClipTeacher("fs-tiny-clip", tmp_path / "changed.pt").config_id != same.config_id


def test_bad_inputs(teacher):
    with pytest.raises(InputShapeError, match="images"):
        teacher.encode(torch.rand(3, 32, 32))
    with pytest.raises(InputShapeError, match="images"):
        teacher.encode(torch.rand(1, 1, 32, 32))


def test_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=re.escape("missing.pt")):
        ClipTeacher("fs-tiny-clip", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        ClipTeacher("fs-tiny-clip", None)
    with pytest.raises(CheckpointError, match="not-a-model"):
        ClipTeacher("not-a-model", tiny["fs-tiny-clip"])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape("garbage.pt")):
        ClipTeacher("fs-tiny-clip", tmp_path / "garbage.pt")
    state = torch.load(tiny["fs-tiny-clip"], weights_only=True)
    wrong_shape = dict(state, **{"visual.proj": torch.zeros(32, EMBED + 1)})
    torch.save(wrong_shape, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=re.escape("visual.proj")):
        ClipTeacher("fs-tiny-clip", tmp_path / "shape.pt")
    missing = {
        k: v for k, v in state.items() if k != "visual.transformer.resblocks.1.attn.in_proj_bias"
    }
    torch.save(missing, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=re.escape("resblocks.1.attn.in_proj_bias")):
        ClipTeacher("fs-tiny-clip", tmp_path / "missing_key.pt")
    # The tiny checkpoint is not a ViT-B-16 one.
    with pytest.raises(CheckpointError, match="wrong shape"):
        ClipTeacher("ViT-B-16", tiny["fs-tiny-clip"])


def test_torchscript_archive_loads_only_when_allowed(tiny, tmp_path):
    """OpenAI ships TorchScript archives holding the weights plus three metadata buffers; an
    archive of that form, scripted from a bare module tree, loads like the state dict, but only
    when the caller allows TorchScript (loading it runs code from the file)."""
    state = torch.load(tiny["fs-tiny-clip"], weights_only=True)
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    for extra in ("input_resolution", "context_length", "vocab_size"):
        root.register_buffer(extra, torch.tensor(32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still loadable
        torch.jit.script(root).save(str(tmp_path / "scripted.pt"))
        with pytest.raises(CheckpointError, match=r"TorchScript archive.*--allow-torchscript"):
            ClipTeacher("fs-tiny-clip", tmp_path / "scripted.pt")
        clip = ClipTeacher("fs-tiny-clip", tmp_path / "scripted.pt", allow_torchscript=True)
    for key, value in clip.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def _official_vit_b16_keys() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of OpenAI's ViT-B/16 CLIP state dict, written from the definitions in
    github.com/openai/CLIP clip/model.py (VisionTransformer(width=768, layers=12, heads=12,
    patch 16, 224 px, output 512); text Transformer(width=512, layers=12, context 77, vocab
    49408)), without the three TorchScript metadata entries."""
    keys: dict[str, tuple[int, ...]] = {
        "positional_embedding": (77, 512),
        "text_projection": (512, 512),
        "logit_scale": (),
        "token_embedding.weight": (49408, 512),
        "ln_final.weight": (512,),
        "ln_final.bias": (512,),
        "visual.class_embedding": (768,),
        "visual.positional_embedding": (197, 768),
        "visual.proj": (768, 512),
        "visual.conv1.weight": (768, 3, 16, 16),
        "visual.ln_pre.weight": (768,),
        "visual.ln_pre.bias": (768,),
        "visual.ln_post.weight": (768,),
        "visual.ln_post.bias": (768,),
    }
    for prefix, width in [("visual.transformer", 768), ("transformer", 512)]:
        for layer in range(12):
            block = f"{prefix}.resblocks.{layer}"
            keys[f"{block}.attn.in_proj_weight"] = (3 * width, width)
            keys[f"{block}.attn.in_proj_bias"] = (3 * width,)
            keys[f"{block}.attn.out_proj.weight"] = (width, width)
            keys[f"{block}.attn.out_proj.bias"] = (width,)
            keys[f"{block}.mlp.c_fc.weight"] = (4 * width, width)
            keys[f"{block}.mlp.c_fc.bias"] = (4 * width,)
            keys[f"{block}.mlp.c_proj.weight"] = (width, 4 * width)
            keys[f"{block}.mlp.c_proj.bias"] = (width,)
            for norm in ("ln_1", "ln_2"):
                keys[f"{block}.{norm}.weight"] = (width,)
                keys[f"{block}.{norm}.bias"] = (width,)
    return keys


def test_official_vit_b16_state_dict_loads_strictly():
    official = _official_vit_b16_keys()
    for name in ("ViT-B-16", "ViT-B-16-quickgelu"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes == official
        synthetic = {k: torch.empty(shape, device="meta") for k, shape in official.items()}
        load_strict(model, synthetic, "synthetic ViT-B-16")
        del synthetic["visual.proj"]
        with pytest.raises(CheckpointError, match=re.escape("visual.proj")):
            load_strict(model, synthetic, "synthetic ViT-B-16")


@pytest.mark.parametrize(
    ("name", "size", "cells", "dim"),
    [("ViT-B-16", (224, 304), (14, 19), 512), ("ViT-L-14-quickgelu", (224, 224), (16, 16), 768)],
)
def test_official_configs_dense_path_shapes(name, size, cells, dim):
    model = open_clip.create_model(name, pretrained=None, device="meta")
    check_supported(model.visual)
    pixels = torch.empty(1, 3, *size, device="meta")
    assert dense_features(model.visual, pixels).shape == (1, dim, *cells)
    assert math.prod(cells) * model.visual.patch_size[0] ** 2 == math.prod(size)
