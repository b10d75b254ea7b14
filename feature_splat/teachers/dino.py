"""The DINOv2 teacher: dense patch features of Meta's DINOv2 ViTs, run through timm.

Weights come from a local file only (nothing is ever downloaded). Two layouts are accepted:

* the official release files of facebookresearch/dinov2 (``dinov2_vits14_pretrain.pth``, ...,
  from https://dl.fbaipublicfiles.com/dinov2/), converted with timm's own ``checkpoint_filter_fn``:
  ``mask_token`` (used only for masked training) is dropped, ViT-g's SwiGLU ``mlp.w12`` / ``mlp.w3``
  become ``mlp.fc1`` / ``mlp.fc2``, and the register variants' ``register_tokens`` become
  ``reg_token`` (their ``pos_embed`` loses its class-token row, which is folded into ``cls_token``);
* a timm state dict of the same model (``model.state_dict()`` of e.g. ``vit_small_patch14_dinov2``).

Every key must match the model: any missing, unexpected or mis-shaped key is a CheckpointError.

Geometry. An image [3, H, W] is resized (bilinear, antialiased) to ``(14 * h, 14 * w)`` where the
grid ``(h, w)`` puts the short side near ``image_size`` and keeps the aspect ratio::

    scale = image_size / min(H, W)
    h = max(1, floor(H * scale / 14 + 0.5)),  w = max(1, floor(W * scale / 14 + 0.5))

so with the default ``image_size = 448`` the short side gets exactly 32 patches. There is no
padding: the whole image is resized, cell (i, j) is patch (i, j) and covers the original pixels
``[i * H / h, (i + 1) * H / h) x [j * W / w, (j + 1) * W / w)``. Its exact size in original pixels,
``(H / h, W / w)``, is given by :meth:`DinoTeacher.cell_size`; the integer ``stride`` attribute is
that size rounded (the mean of both axes) for the most recently encoded image size, 14 before the
first call. The positional embeddings (trained for a 37 x 37 grid at 518 px) are resampled to
``(h, w)`` by timm (``dynamic_img_size``, bicubic, antialiased); the official code interpolates
with a 0.1 offset and no antialiasing, so features agree with the official model closely but not
bit for bit.

Features are the final-norm patch tokens (``x_norm_patchtokens`` in the official code), ImageNet
mean/std normalised input, the class and register tokens dropped: [B, dim, h, w], float32.
DINOv2 has no text tower: ``language_aligned`` is False and ``encode_text`` raises.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.io.checkpoints import load_strict, read_state_dict
from feature_splat.teachers.checkpoints import (
    file_digest,
    require_checkpoint,
)

_VERSION = 1  # bump when the features change for the same options
PATCH_SIZE = 14
PRETRAIN_SIZE = 518  # the official models' image size: a 37 x 37 positional-embedding grid
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RELEASE_URL = "https://dl.fbaipublicfiles.com/dinov2/"

#: timm model name -> the official release file holding its weights.
MODELS: dict[str, str] = {
    "vit_small_patch14_dinov2": "dinov2_vits14_pretrain.pth",
    "vit_base_patch14_dinov2": "dinov2_vitb14_pretrain.pth",
    "vit_large_patch14_dinov2": "dinov2_vitl14_pretrain.pth",
    "vit_giant_patch14_dinov2": "dinov2_vitg14_pretrain.pth",
    "vit_small_patch14_reg4_dinov2": "dinov2_vits14_reg4_pretrain.pth",
    "vit_base_patch14_reg4_dinov2": "dinov2_vitb14_reg4_pretrain.pth",
    "vit_large_patch14_reg4_dinov2": "dinov2_vitl14_reg4_pretrain.pth",
    "vit_giant_patch14_reg4_dinov2": "dinov2_vitg14_reg4_pretrain.pth",
}


def _timm():
    """The timm package, or a CheckpointError saying how to install it."""
    try:
        import timm
    except ImportError as err:
        raise CheckpointError("the DINOv2 teacher needs timm (pip install 'timm>=1.0')") from err
    return timm


def release_file(model: str) -> str:
    """The official release file holding the weights of the timm ``model`` (one of :data:`MODELS`)."""
    if model not in MODELS:
        raise CheckpointError(f"model: expected one of {sorted(MODELS)}, got {model!r}")
    return MODELS[model]


def build_backbone(model: str = "vit_small_patch14_dinov2", **overrides: object) -> torch.nn.Module:
    """A randomly initialised timm DINOv2 ViT called ``model`` (one of :data:`MODELS`), built for
    518 px inputs (like the official weights), resampling its positional embeddings to any grid,
    without a classifier head. ``overrides`` (e.g. ``depth=2, embed_dim=32``) change the
    architecture; they serve tests and custom checkpoints. Never downloads anything."""
    release_file(model)  # rejects unknown names
    options: dict[str, object] = {
        "img_size": PRETRAIN_SIZE,
        "dynamic_img_size": True,
        "num_classes": 0,
        **overrides,
    }
    return _timm().create_model(model, pretrained=False, **options)


def to_timm_state_dict(state: dict[str, Tensor], backbone: torch.nn.Module) -> dict[str, Tensor]:
    """``state`` in the key layout of the timm ``backbone``.

    An official facebookresearch/dinov2 state dict (recognised by its ``mask_token``) goes through
    timm's ``checkpoint_filter_fn`` (see the module docstring); anything else is returned unchanged.
    The official positional embeddings and patch kernel must have the backbone's shapes: timm's
    filter would otherwise resample them silently, hiding a checkpoint of the wrong model.
    """
    if "mask_token" not in state:
        return state
    from timm.models.vision_transformer import checkpoint_filter_fn

    grid_tokens = backbone.patch_embed.num_patches
    expected = {
        "cls_token": (1, 1, backbone.embed_dim),
        # The official pos_embed always has a class-token row, registers or not.
        "pos_embed": (1, grid_tokens + 1, backbone.embed_dim),
        "patch_embed.proj.weight": tuple(backbone.patch_embed.proj.weight.shape),
    }
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"official DINOv2 checkpoint: missing key {key!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"official DINOv2 checkpoint: {key!r} has shape {list(state[key].shape)}, "
                f"expected {list(shape)} for this model"
            )
    return checkpoint_filter_fn(dict(state), backbone)  # the filter pops keys: give it a copy


def load_backbone(
    checkpoint: str | Path | None,
    model: str = "vit_small_patch14_dinov2",
    **overrides: object,
) -> torch.nn.Module:
    """The timm ``model`` (see :func:`build_backbone`) with the weights of the local file
    ``checkpoint`` (official or timm layout), in eval mode on the CPU."""
    path = require_checkpoint(
        checkpoint,
        f"DINOv2 {model} (expects {release_file(model)})",
        f"the facebookresearch/dinov2 release, {RELEASE_URL}",
    )
    backbone = build_backbone(model, **overrides)
    state = to_timm_state_dict(read_state_dict(path), backbone)
    load_strict(backbone, state, str(path))
    return backbone.eval()


class DinoTeacher:
    """DINOv2 patch features of images (see the module docstring for resizing and geometry)."""

    language_aligned = False

    def __init__(
        self,
        backbone: torch.nn.Module,
        *,
        weights_id: str,
        name: str = "dinov2",
        image_size: int = 448,
        device: str | torch.device | None = None,
    ) -> None:
        """Prefer :meth:`from_checkpoint`. ``backbone`` is a timm DINOv2 ViT built by
        :func:`build_backbone`; ``weights_id`` identifies its weights in :attr:`config_id` (e.g.
        the checkpoint's SHA-256); ``image_size`` is the target short side in pixels; ``device``
        runs the model (default: CUDA when available)."""
        if image_size < PATCH_SIZE:
            raise InputShapeError(f"image_size: expected >= {PATCH_SIZE}, got {image_size}")
        if tuple(backbone.patch_embed.patch_size) != (PATCH_SIZE, PATCH_SIZE):
            raise InputShapeError(
                f"backbone: expected {PATCH_SIZE} px patches, got {backbone.patch_embed.patch_size}"
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.name = name
        self.weights_id = weights_id
        self.image_size = int(image_size)
        self.dim = int(backbone.embed_dim)
        self.stride = PATCH_SIZE  # updated by encode: see the module docstring
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None,
        model: str = "vit_small_patch14_dinov2",
        *,
        image_size: int = 448,
        device: str | torch.device | None = None,
    ) -> DinoTeacher:
        """The teacher for the timm ``model`` with weights from the local file ``checkpoint``
        (e.g. ``dinov2_vits14_pretrain.pth`` for the default ViT-S/14)."""
        backbone = load_backbone(checkpoint, model)
        weights_id = file_digest(Path(checkpoint))
        return cls(
            backbone, weights_id=weights_id, name=model, image_size=image_size, device=device
        )

    @property
    def config_id(self) -> str:
        """Changes with the model (name and architecture), its weights and ``image_size``."""
        options = {
            "version": _VERSION,
            "name": self.name,
            "weights": self.weights_id,
            "image_size": self.image_size,
            "dim": self.dim,
            "depth": len(self.backbone.blocks),
            "prefix_tokens": int(self.backbone.num_prefix_tokens),
        }
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"dinov2-{digest[:16]}"

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The feature grid (h, w) of an image of ``height`` x ``width`` pixels."""
        scale = self.image_size / min(height, width)
        rows = max(1, math.floor(height * scale / PATCH_SIZE + 0.5))
        cols = max(1, math.floor(width * scale / PATCH_SIZE + 0.5))
        return rows, cols

    def cell_size(self, height: int, width: int) -> tuple[float, float]:
        """The exact size (rows, columns) in original pixels of a cell of a ``height`` x ``width``
        image: cell (i, j) is centred on ((j + 0.5) * columns, (i + 0.5) * rows)."""
        rows, cols = self.grid_size(height, width)
        return height / rows, width / cols

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Features [B, dim, h, w] (float32, on the images' device) of images [B, 3, H, W] (RGB
        in [0, 1]), with (h, w) = :meth:`grid_size` (H, W); sets ``stride`` for this size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputShapeError(f"images: expected [B, 3, H, W], got {list(images.shape)}")
        height, width = images.shape[-2:]
        rows, cols = self.grid_size(height, width)
        self.stride = max(1, round(sum(self.cell_size(height, width)) / 2))
        if images.shape[0] == 0:
            return images.new_zeros(0, self.dim, rows, cols, dtype=torch.float32)
        pixels = images.to(self.device, torch.float32)
        pixels = F.interpolate(
            pixels,
            size=(rows * PATCH_SIZE, cols * PATCH_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        tokens = self.backbone.forward_features((pixels - self._mean) / self._std)
        patches = tokens[:, self.backbone.num_prefix_tokens :]  # drop class and register tokens
        features = patches.transpose(1, 2).reshape(len(images), self.dim, rows, cols)
        return features.float().to(images.device)

    def encode_text(self, texts: list[str]) -> Tensor:
        """DINOv2 has no text encoder: always raises NotImplementedError."""
        raise NotImplementedError(
            "the DINOv2 teacher is not language-aligned: it cannot encode text"
        )
