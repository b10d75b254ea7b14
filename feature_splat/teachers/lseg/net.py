"""The LSeg network (Li et al., "Language-driven Semantic Segmentation", ICLR 2022), inference only.

Written from the architecture of the official code (GitHub isl-org/lang-seg,
``modules/models/lseg_net.py``, ``lseg_blocks.py``, ``lseg_vit.py``) so that :class:`LSegNet`'s
state dict has exactly the key names and shapes of the official checkpoints' ``net.*`` entries
(``demo_e200.ckpt``, backbone ``clip_vitl16_384``). Its parts, named as in the checkpoint:

- ``pretrained.model``: a ViT (timm's ``vit_large_patch16_384`` layout: ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``norm``, ``head``) whose position embeddings are bilinearly resized to the input's token grid.
  The final ``norm`` and the classifier ``head`` are in the checkpoint but unused by LSeg.
- ``pretrained.act_postprocessN`` (N = 1..4): DPT "reassemble" of the tokens after blocks
  ``hooks[N-1]``: the class token is concatenated to every patch token and projected back
  (``0.project.0``, Linear + GELU), the tokens become a map, a 1x1 conv (``3``) sets the width and a
  (transposed) conv (``4``) brings the map from stride 16 to strides 4, 8, 16 and 32.
- ``scratch.layerN_rn``: 3x3 convs to the common ``features`` width; ``scratch.refinenetN``: DPT
  fusion blocks (two residual conv units with batch norm, x2 bilinear upsampling, 1x1 ``out_conv``)
  from stride 32 up to stride 2; ``scratch.head1``: a 1x1 conv to the ``embed_dim`` pixel
  embeddings, at stride 2 of the network input.
- ``clip_pretrained``: the whole OpenAI CLIP ViT-B/32 (the official code loads it with
  ``clip.load("ViT-B/32")``, visual tower included, even for the ViT-L image backbone); only its
  text encoder is used. Built with ``open_clip``'s ``CLIP`` class, whose key names are OpenAI's.

The official ``scratch.output_conv`` (a parameter-free x2 upsampling of the class logits) and the
fixed logit scale are not part of the state dict and are left out: :meth:`LSegNet.forward` returns
the pixel embeddings before the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor, nn

from feature_splat.errors import InputShapeError

OUTPUT_STRIDE = 2  # the pixel embeddings' stride relative to the network input
INPUT_MULTIPLE = 32  # input sides must be multiples of this (the coarsest DPT level, stride 32)


@dataclass(frozen=True)
class LSegConfig:
    """The sizes of one LSeg variant; ``clip_vitl16_384`` is the official ``demo_e200.ckpt`` model."""

    vit_width: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    vit_grid: int = 24  # the position-embedding grid side (384 / 16 for vit_large_patch16_384)
    vit_classes: int = 1000  # the unused ImageNet classifier kept by the checkpoint
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)
    reassemble_widths: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    features: int = 256
    embed_dim: int = 512  # pixel / text embedding width (CLIP ViT-B/32's joint space)
    clip_vision_width: int = 768
    clip_vision_layers: int = 12
    clip_vision_patch: int = 32
    clip_vision_image: int = 224
    clip_text_width: int = 512
    clip_text_heads: int = 8
    clip_text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408  # OpenAI CLIP's BPE vocabulary (open_clip's SimpleTokenizer)

    patch_size = 16  # fixed by the reassemble strides below


LSEG_CONFIGS: dict[str, LSegConfig] = {
    # backbone "clip_vitl16_384" in lseg_net.py / lseg_vit.py (features=256, as Feature 3DGS uses).
    "clip_vitl16_384": LSegConfig(),
    # Test-only: the same classes with small widths and depths; no official weights exist.
    "tiny": LSegConfig(
        vit_width=32,
        vit_depth=4,
        vit_heads=2,
        vit_grid=4,
        vit_classes=10,
        hooks=(0, 1, 2, 3),
        reassemble_widths=(8, 16, 32, 32),
        features=16,
        embed_dim=24,
        clip_vision_width=32,
        clip_vision_layers=1,
        clip_vision_patch=16,
        clip_vision_image=32,
        clip_text_width=32,
        clip_text_heads=2,
        clip_text_layers=1,
    ),
}


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's ViT layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """The transformer MLP: ``fc1``, exact GELU, ``fc2``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block (LayerNorm eps 1e-6, as timm's ViTs)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches projected to ``width`` channels."""

    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """The image backbone: a ViT returning the tokens after the ``hooks`` blocks."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        width = config.vit_width
        self.patch_size = config.patch_size
        self.grid = config.vit_grid
        self.hooks = config.hooks
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.vit_grid**2, width))
        self.patch_embed = PatchEmbed(width, config.patch_size)
        self.blocks = nn.ModuleList(Block(width, config.vit_heads) for _ in range(config.vit_depth))
        # In the checkpoint, unused: LSeg reads the hooked blocks' tokens, not the final ones.
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, config.vit_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def position_embedding(self, rows: int, cols: int) -> Tensor:
        """``pos_embed`` with its patch grid bilinearly resized to ``rows x cols`` (class token
        entry unchanged), as the official ``_resize_pos_embed``."""
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(rows, cols), mode="bilinear", align_corners=False)
        return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Tokens [B, 1 + rows * cols, width] (class token first) after each hooked block."""
        rows, cols = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(rows, cols)
        hooked = []
        for index, block in enumerate(self.blocks[: max(self.hooks) + 1]):
            tokens = block(tokens)
            if index in self.hooks:
                hooked.append(tokens)
        return hooked


class ProjectReadout(nn.Module):
    """DPT's "project" readout: each patch token concatenated with the class token, projected back
    to ``width`` channels (Linear + GELU); the class token is dropped."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


class Reassemble(nn.Sequential):
    """Tokens of one hooked block -> a feature map [B, out, rows * k, cols * k] (k = 4, 2, 1, 1/2).

    Indexed as the official ``act_postprocessN``: 0 the readout, 3 the 1x1 conv, 4 the resampling
    conv (absent at stride 16). Slots 1 and 2 (the official transpose and unflatten, which have no
    weights) are placeholders: :meth:`forward` reshapes the tokens itself.
    """

    def __init__(self, width: int, out: int, resample: nn.Module | None) -> None:
        layers = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, out, 1)]
        super().__init__(*layers, *([resample] if resample is not None else []))

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:  # type: ignore[override]
        x = self[0](tokens).transpose(1, 2).unflatten(2, grid)
        for layer in list(self)[3:]:
            x = layer(x)
        return x


class Backbone(nn.Module):
    """The official ``pretrained`` module: the ViT (``model``) and its four reassembles."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        self.model = VisionTransformer(config)
        width, (w1, w2, w3, w4) = config.vit_width, config.reassemble_widths
        self.act_postprocess1 = Reassemble(width, w1, nn.ConvTranspose2d(w1, w1, 4, stride=4))
        self.act_postprocess2 = Reassemble(width, w2, nn.ConvTranspose2d(w2, w2, 2, stride=2))
        self.act_postprocess3 = Reassemble(width, w3, None)
        self.act_postprocess4 = Reassemble(width, w4, nn.Conv2d(w4, w4, 3, stride=2, padding=1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 4, 8, 16, 32 of images [B, 3, H, W] (H, W multiples of 32)."""
        grid = (x.shape[2] // self.model.patch_size, x.shape[3] // self.model.patch_size)
        reassembles = [
            self.act_postprocess1,
            self.act_postprocess2,
            self.act_postprocess3,
            self.act_postprocess4,
        ]
        return [
            reassemble(tokens, grid)
            for reassemble, tokens in zip(reassembles, self.model(x), strict=True)
        ]


class ResidualConvUnit(nn.Module):
    """ReLU, 3x3 conv, batch norm, twice, plus the input."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class FusionBlock(nn.Module):
    """DPT fusion: (previous level + residual unit of the skip), residual unit, x2 bilinear
    upsampling (corners aligned), 1x1 ``out_conv``. The coarsest level has no previous input."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # unused by refinenet4, but in its weights
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """The official ``scratch`` module: the DPT decoder and the embedding head."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        f = config.features
        widths = config.reassemble_widths
        self.layer1_rn = nn.Conv2d(widths[0], f, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(widths[1], f, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(widths[2], f, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(widths[3], f, 3, padding=1, bias=False)
        self.refinenet1 = FusionBlock(f)
        self.refinenet2 = FusionBlock(f)
        self.refinenet3 = FusionBlock(f)
        self.refinenet4 = FusionBlock(f)
        self.head1 = nn.Conv2d(f, config.embed_dim, 1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        """Pixel embeddings at stride 2 from the maps at strides 4, 8, 16, 32."""
        level1, level2, level3, level4 = levels
        path = self.refinenet4(self.layer4_rn(level4))
        path = self.refinenet3(path, self.layer3_rn(level3))
        path = self.refinenet2(path, self.layer2_rn(level2))
        path = self.refinenet1(path, self.layer1_rn(level1))
        return self.head1(path)


def build_clip(config: LSegConfig) -> CLIP:
    """The CLIP model of ``clip_pretrained`` (OpenAI's layout and QuickGELU), randomly initialised."""
    vision = CLIPVisionCfg(
        layers=config.clip_vision_layers,
        width=config.clip_vision_width,
        head_width=64 if config.clip_vision_width >= 64 else config.clip_vision_width // 2,
        patch_size=config.clip_vision_patch,
        image_size=config.clip_vision_image,
    )
    text = CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        width=config.clip_text_width,
        heads=config.clip_text_heads,
        layers=config.clip_text_layers,
    )
    return CLIP(config.embed_dim, vision, text, quick_gelu=True)


class LSegNet(nn.Module):
    """LSeg: images -> unnormalised pixel embeddings at stride 2; texts -> CLIP text embeddings.

    The state dict matches the official checkpoints' ``net.*`` entries (prefix stripped); see the
    module docstring. Inputs are normalised images (``2 * rgb - 1``, the official mean = std = 0.5)
    whose sides are multiples of 32.
    """

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        self.config = config
        self.clip_pretrained = build_clip(config)
        self.pretrained = Backbone(config)
        self.scratch = Scratch(config)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings [B, embed_dim, H / 2, W / 2] (not normalised) of inputs [B, 3, H, W]."""
        height, width = x.shape[-2:]
        if x.ndim != 4 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
            raise InputShapeError(
                f"x: expected [B, 3, H, W] with H and W multiples of {INPUT_MULTIPLE}, got "
                f"{list(x.shape)}"
            )
        return self.scratch(self.pretrained(x))

    def encode_text(self, tokens: Tensor) -> Tensor:
        """CLIP text embeddings [T, embed_dim] (not normalised) of BPE tokens [T, context]."""
        return self.clip_pretrained.encode_text(tokens)
