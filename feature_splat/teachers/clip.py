"""The CLIP teacher: dense, language-aligned patch features from an open_clip ViT (MaskCLIP-style).

CLIP's image tower only produces one global embedding, pooled from the class token. MaskCLIP
(Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022) reads dense features in the same
text space from the patch tokens: the last transformer block is run with its query-key attention
replaced by the identity (each patch attends only to itself), so each token keeps its own *value*
embedding. Concretely, with ``x`` the tokens entering the last block::

    v = ln_1(x) @ W_v.T + b_v                      # the value part of attn.in_proj_{weight,bias}
    x = x + ls_1(out_proj(v))                      # attention output with identity attention
    x = x + ls_2(mlp(ln_2(x)))                     # the block's MLP, unchanged
    feature = normalize(ln_post(x) @ proj)         # into the text space, unit norm per patch

The residual and MLP of the last block are kept, as in MaskCLIP's reference implementation.

Geometry. ``stride`` is the size in ORIGINAL pixels of one feature cell (default: the model's
patch size, i.e. the image is used at its own resolution). The image is padded on the right and
bottom to a multiple of ``stride`` by repeating its edge pixels, then resized by the factor
``patch / stride`` (bicubic, antialiased; skipped when ``stride == patch``) so that every
``stride x stride`` block of the original becomes exactly one ``patch x patch`` ViT patch. The
positional embedding is bicubically interpolated to that patch grid. The output has
``h = ceil(H / stride)`` by ``w = ceil(W / stride)`` cells and cell ``(i, j)`` describes the
original pixels ``[i * stride, (i + 1) * stride) x [j * stride, (j + 1) * stride)`` (cut at the
image border), centred on ``((j + 0.5) * stride, (i + 0.5) * stride)``. CLIP was trained on
``image_size`` (224 or 336) pixel images, so objects look as CLIP expects when
``stride ~= patch * min(H, W) / image_size``; smaller strides give finer but less global features.

Weights come from a local checkpoint file only (never downloaded): an open_clip state dict
(``open_clip_pytorch_model.bin`` / ``.safetensors`` from the open_clip releases on the Hugging Face
hub) or OpenAI's original TorchScript archive (``ViT-B-16.pt``). A TorchScript archive is a
program, not data: loading it runs code from the file. It is loaded only when the caller passes
``allow_torchscript=True`` (``--allow-torchscript`` on the command line), never because a stored
config names it. OpenAI's weights were trained with
QuickGELU: use the ``-quickgelu`` model names (``ViT-B-16-quickgelu``, ``ViT-L-14-quickgelu``) for
them, otherwise the features are silently wrong (the keys are the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.io.checkpoints import load_error, load_strict
from feature_splat.teachers.checkpoints import file_digest, require_checkpoint

_VERSION = 1  # bump when the features change for the same model, checkpoint and options
_WHERE = (
    "the open_clip releases (e.g. huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K, file "
    "open_clip_pytorch_model.bin) or OpenAI's CLIP releases (ViT-B-16.pt, with a '-quickgelu' "
    "model name)"
)
# Entries of OpenAI's TorchScript state dicts that are not weights (open_clip drops them too).
_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def check_supported(visual: nn.Module) -> None:
    """Raise CheckpointError unless ``visual`` is an open_clip ViT the MaskCLIP path handles: a
    learnable positional embedding with one class token, no attentional pooler, and a last block
    whose attention is a batch-first ``nn.MultiheadAttention`` with packed input projections."""
    problem = None
    if not isinstance(visual, VisionTransformer):
        problem = f"the image tower is a {type(visual).__name__}, not open_clip's VisionTransformer"
    elif visual.attn_pool is not None:
        problem = "the image tower pools with an attentional pooler (CoCa-style)"
    elif visual.positional_embedding.shape[0] != math.prod(visual.grid_size) + 1:
        problem = "the positional embedding is not one class token plus a patch grid"
    else:
        attn = visual.transformer.resblocks[-1].attn
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
            problem = (
                f"the last block's attention is a {type(attn).__name__} without in_proj_weight"
            )
        elif not attn.batch_first:
            problem = "the last block's attention is not batch-first"
    if problem is not None:
        raise CheckpointError(
            f"model: the CLIP teacher supports OpenAI-style ViT CLIP models (e.g. ViT-B-16, "
            f"ViT-L-14), but {problem}"
        )


def positional_embedding(visual: VisionTransformer, grid: tuple[int, int]) -> Tensor:
    """The positional embedding [1 + gh * gw, width] of ``visual`` for a ``grid`` = (gh, gw) of
    patches: the class token's entry plus the trained grid bicubically interpolated."""
    table = visual.positional_embedding
    native = tuple(visual.grid_size)
    if tuple(grid) == native:
        return table
    patches = table[1:].reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([table[:1], patches.flatten(2).transpose(1, 2)[0]], dim=0)


def dense_features(visual: VisionTransformer, pixels: Tensor) -> Tensor:
    """MaskCLIP patch features [B, output_dim, gh, gw] (unit norm per patch) of CLIP-normalised
    ``pixels`` [B, 3, gh * patch, gw * patch]; see the module docstring for the recipe."""
    tokens = visual.conv1(pixels)  # [B, width, gh, gw]
    batch, width, gh, gw = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(tokens.dtype).expand(batch, 1, width)
    x = torch.cat([cls, tokens], dim=1) + positional_embedding(visual, (gh, gw)).to(tokens.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    attn = last.attn
    values = F.linear(
        last.ln_1(x),
        attn.in_proj_weight[2 * width :],
        None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width :],
    )
    x = x + last.ls_1(attn.out_proj(values))
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    features = visual.ln_post(x[:, 1:]) @ visual.proj
    features = F.normalize(features, dim=-1)
    return features.transpose(1, 2).reshape(batch, -1, gh, gw)


def read_clip_state_dict(path: Path, allow_torchscript: bool = False) -> dict[str, Tensor]:
    """The tensors of a CLIP checkpoint: an open_clip state dict (``.bin`` / ``.pt`` / ``.pth``,
    possibly nested under ``state_dict`` or prefixed ``module.``; or ``.safetensors``) or, when
    ``allow_torchscript``, OpenAI's TorchScript archive (which runs code from the file)."""
    if _is_torchscript_archive(path) and not allow_torchscript:
        raise CheckpointError(
            f"{path}: is a TorchScript archive (OpenAI's CLIP release format); loading one runs "
            f"code from the file, so it is loaded only with --allow-torchscript (or convert it "
            f"once to a state dict)"
        )
    try:
        if _is_torchscript_archive(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            state = {k: v for k, v in state.items() if k not in _TORCHSCRIPT_EXTRAS}
        else:
            state = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # torch / safetensors raise many types on corrupt files
        raise CheckpointError(
            f"{path}: not a readable CLIP checkpoint ({load_error(err)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a CLIP state dict)")
    return dict(state)


class ClipTeacher:
    """Dense MaskCLIP features and text embeddings of one open_clip CLIP model (module docstring).

    ``encode`` maps [B, 3, H, W] to [B, dim, ceil(H / stride), ceil(W / stride)]; ``dim`` is the
    model's embedding size (512 for ViT-B-16, 768 for ViT-L-14).
    """

    name = "clip"
    language_aligned = True
    resizes_input = False  # each stride x stride block of the padded image is exactly one patch

    def __init__(
        self,
        model_name: str,
        checkpoint: str | Path | None,
        *,
        stride: int | None = None,
        device: str | torch.device = "cpu",
        allow_torchscript: bool = False,
    ) -> None:
        """Build ``model_name`` (an open_clip config name, see ``open_clip.list_models()``) with the
        weights of the local file ``checkpoint``; ``stride`` (original pixels per cell) defaults to
        the model's patch size; ``allow_torchscript`` see the module docstring."""
        path = require_checkpoint(checkpoint, f"CLIP {model_name}", _WHERE)
        model_config = open_clip.get_model_config(model_name)
        if model_config is None:
            raise CheckpointError(
                f"model_name: {model_name!r} is not an open_clip model config "
                "(see open_clip.list_models(); custom configs via open_clip.add_model_config)"
            )
        with _quiet_logging():  # open_clip warns "initialized randomly": the weights come next
            model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        check_supported(model.visual)
        load_strict(model, read_clip_state_dict(path, allow_torchscript), str(path))
        self.model = model.to(device).eval()
        self.model_name = model_name
        self.model_config = model_config
        self.checkpoint = path
        self.patch_size = int(model.visual.patch_size[0])
        self.stride = self.patch_size if stride is None else int(stride)
        if self.stride < 1:
            raise InputShapeError(f"stride: expected a positive number of pixels, got {stride}")
        self.dim = int(model.visual.output_dim)
        preprocess = model.visual.preprocess_cfg
        self._mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self._tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return self.model.visual.proj.device

    @property
    def config_id(self) -> str:
        """Changes with the model config, the checkpoint's bytes and the stride."""
        options = {
            "version": _VERSION,
            "model": self.model_name,
            "config": self.model_config,
            "checkpoint": file_digest(self.checkpoint),
            "stride": self.stride,
        }
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"clip-{self.model_name}-{digest[:16]}"

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The cells (h, w) = (ceil(H / stride), ceil(W / stride)) of an H x W image."""
        return -(-height // self.stride), -(-width // self.stride)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Unit-norm features [B, dim, ceil(H / stride), ceil(W / stride)] (float32, on the images'
        device) of images [B, 3, H, W], float RGB in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InputShapeError(
                f"images: expected float RGB [B, 3, H, W], got {list(images.shape)} {images.dtype}"
            )
        self.model.eval()
        height, width = images.shape[-2:]
        gh, gw = self.grid_size(height, width)
        pixels = images.to(self.device, torch.float32)
        pad = (0, gw * self.stride - width, 0, gh * self.stride - height)
        if any(pad):
            pixels = F.pad(pixels, pad, mode="replicate")
        if self.stride != self.patch_size:
            size = (gh * self.patch_size, gw * self.patch_size)
            pixels = F.interpolate(
                pixels, size=size, mode="bicubic", align_corners=False, antialias=True
            )
        pixels = (pixels - self._mean.to(pixels.device)) / self._std.to(pixels.device)
        return dense_features(self.model.visual, pixels).to(images.device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Unit-norm text embeddings [T, dim] (float32, on the model's device) of ``texts``."""
        if isinstance(texts, str):
            raise InputShapeError("texts: expected a list of strings, got a single string")
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        self.model.eval()
        tokens = self._tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()


def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's CLIP releases) rather than a state dict:
    TorchScript zips carry a ``constants.pkl`` entry, ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence log records up to WARNING for the duration (process-wide, restored after)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
