"""The SAM teacher: Segment Anything's image embeddings as dense features (not language-aligned).

:class:`SamTeacher` wraps the ``segment-anything`` package's model (``ImageEncoderViT``,
``PromptEncoder``, ``MaskDecoder``), built by :func:`build_sam_model` exactly as the package's
``build_sam_vit_b`` / ``_l`` / ``_h`` build it, and loads the official checkpoints
(``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``: bare state dicts)
from a local file. Nothing is ever downloaded.

Preprocessing is ``SamPredictor.set_image``'s, step for step:

1. the float image in [0, 1] is quantised to 8 bits (``round(255 * x)``), the input SamPredictor
   expects;
2. ``ResizeLongestSide(img_size).apply_image`` resizes it (PIL, bilinear) so that its long side is
   ``img_size`` (1024 for the official models) and its short side ``int(short * scale + 0.5)``;
3. ``Sam.preprocess`` normalises with the pixel mean / std (on 0-255 values) and zero-pads the
   bottom and right to an ``img_size`` square.

The image encoder maps that square to 256-channel embeddings on a grid of ``img_size / 16`` cells
(64 x 64 for the official models). Cells that hold only padding are cropped away: for an
``H x W`` image resized to ``h' x w'``, :meth:`SamTeacher.encode` returns
``ceil(h' / 16) x ceil(w' / 16)`` cells. Cell (i, j) covers resized pixels ``[16 i, 16 i + 16)``,
so its centre lies at ``(j + 0.5) * stride`` in the original image with the exact stride
``16 * max(H, W) / img_size`` (10.0 for a 640 x 480 image, 12.5 for a 1280 x 720 one). That stride
is generally not an integer and depends on the image size: :attr:`SamTeacher.exact_stride` holds
it, :attr:`SamTeacher.stride` its rounded value (see :class:`SamGeometry`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

from feature_splat.errors import CheckpointError, InputShapeError, NonFiniteError
from feature_splat.io.checkpoints import (
    load_strict,
    read_checkpoint,
    read_state_dict,
    write_checkpoint,
)
from feature_splat.teachers.checkpoints import (
    build_seeded,
    file_digest,
    require_checkpoint,
)

_VERSION = 1  # bump when the features change for the same model and weights

EMBED_DIM = 256  # SAM's prompt / image-embedding width, fixed by its mask decoder

_OFFICIAL_SOURCE = (
    "the segment-anything GitHub README, 'Model Checkpoints': "
    "https://dl.fbaipublicfiles.com/segment_anything/{file}"
)
_TEST_SOURCE = "torch.save(SamTeacher.random(model_type).model.state_dict(), path), in tests"


@dataclass(frozen=True)
class SamConfig:
    """The architecture of one SAM variant (the arguments of segment-anything's ``_build_sam``,
    plus the sizes that function fixes, so that tiny test models take the same code path)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    decoder_mlp_dim: int = 2048
    official_file: str | None = None  # the official checkpoint's file name, if there is one


SAM_CONFIGS: dict[str, SamConfig] = {
    # As in segment_anything/build_sam.py (build_sam_vit_b / _l / _h).
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11), official_file="sam_vit_b_01ec64.pth"),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23), official_file="sam_vit_l_0b3195.pth"),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31), official_file="sam_vit_h_4b8939.pth"),
    # Test-only: a few-MB model on 128-pixel inputs (8 x 8 cells); no official weights exist.
    "tiny": SamConfig(32, 2, 2, (1,), image_size=128, window_size=4, decoder_mlp_dim=64),
}


class _NoImageEncoder(torch.nn.Module):
    """Stands in for the image encoder of a SAM kept for prompting only (its prompt decoder)."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, images: Tensor) -> Tensor:
        raise CheckpointError(
            "SAM: only its prompt decoder was saved with the run; encoding images needs the "
            "checkpoint (--teacher-checkpoint)"
        )


def build_sam_model(config: SamConfig, image_encoder: bool = True) -> Sam:
    """A randomly initialised SAM (eval mode) built as segment-anything's ``_build_sam`` builds it.

    For the official configurations its state dict has exactly the official checkpoints' keys and
    shapes. Without ``image_encoder`` only the prompt encoder and mask decoder are built (what
    prompting rendered features needs).
    """
    grid = config.image_size // config.patch_size
    sam = Sam(
        image_encoder=_NoImageEncoder(config.image_size)
        if not image_encoder
        else ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=EMBED_DIM,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=8,
            ),
            transformer_dim=EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


@dataclass(frozen=True)
class SamGeometry:
    """How an ``original_size`` (H, W) image maps to SAM's cells.

    ``input_size`` is the resized image (h', w') before padding; ``valid_cells`` the cells that
    hold some of it, ``(ceil(h' / patch), ceil(w' / patch))``; ``exact_stride`` the original pixels
    per cell, ``patch * max(H, W) / img_size``. It is exact along the long side; along the short
    side the resize rounds to whole pixels, so a cell centre may be off by up to half a resized
    pixel (``max(H, W) / (2 * img_size)`` original pixels).
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    valid_cells: tuple[int, int]
    exact_stride: float


class SamTeacher:
    """SAM's image encoder as a teacher: 256-channel embeddings, padding cells cropped away.

    See the module docstring for the preprocessing and the cell geometry. ``stride`` depends on
    the image size: it is the rounded :attr:`exact_stride` of the last encoded image (before any,
    the patch size, 16: the stride for images whose long side is ``img_size``). Use
    :meth:`geometry` for the exact values of any size.

    For prompting (masks from rendered features in place of the image encoder) the teacher exposes
    ``model`` (the whole ``Sam``), ``prompt_encoder``, ``mask_decoder``, ``transform`` (the
    ``ResizeLongestSide`` that maps prompt coordinates) and ``embedding_size`` (the full, uncropped
    grid the decoder expects, 64 x 64 for the official models).
    """

    name = "sam"
    dim = EMBED_DIM
    language_aligned = False

    def __init__(
        self,
        checkpoint: str | Path | None,
        model_type: str = "vit_b",
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        """SAM ``model_type`` (``vit_b``, ``vit_l``, ``vit_h``; ``tiny`` for tests) with the
        weights of the local ``checkpoint`` file (an official bare state dict, loaded strictly)."""
        config = _config(model_type)
        if config.official_file is None:
            what, where = f"SAM {model_type} (a state dict)", _TEST_SOURCE
        else:
            what = f"SAM {model_type} ({config.official_file})"
            where = _OFFICIAL_SOURCE.format(file=config.official_file)
        path = require_checkpoint(checkpoint, what, where)
        model = build_sam_model(config)
        load_strict(model, read_state_dict(path), f"SAM {model_type} checkpoint {path}")
        self._setup(model, model_type, config, f"sha256:{file_digest(path)}", device)

    @classmethod
    def random(
        cls, model_type: str = "tiny", seed: int = 0, *, device: str | torch.device = "cpu"
    ) -> SamTeacher:
        """A randomly initialised SAM ``model_type`` (deterministic in ``seed``), for tests only:
        its features mean nothing. Same code path as a loaded model apart from the weights."""
        config = _config(model_type)
        model = build_seeded(lambda: build_sam_model(config), seed)
        teacher = cls.__new__(cls)
        teacher._setup(model, model_type, config, f"random-init:{seed}", device)
        return teacher

    def save_prompt_decoder(self, path: Path) -> Path:
        """Write the prompt encoder and mask decoder (what point and box prompts on rendered
        features need, a few MB) with the model type and weights id, atomically."""
        state = {
            "model_type": self.model_type,
            "weights_id": self.weights_id,
            "prompt_encoder": self.prompt_encoder.state_dict(),
            "mask_decoder": self.mask_decoder.state_dict(),
        }
        return write_checkpoint(path, state)

    @classmethod
    def from_prompt_decoder(cls, path: Path) -> SamTeacher:
        """The SAM written by :meth:`save_prompt_decoder`: it answers prompts on given
        embeddings (and has the same ``config_id``), but cannot encode images."""
        state = read_checkpoint(path, "SAM prompt decoder")
        if not isinstance(state, dict) or not isinstance(state.get("weights_id"), str):
            raise CheckpointError(f"{path}: expected a SAM prompt decoder file")
        config = _config(state.get("model_type"))
        model = build_sam_model(config, image_encoder=False)
        for part in ("prompt_encoder", "mask_decoder"):
            load_strict(getattr(model, part), state.get(part), f"{path}: {part}")
        teacher = cls.__new__(cls)
        teacher._setup(model, state["model_type"], config, state["weights_id"], "cpu")
        return teacher

    def _setup(
        self,
        model: Sam,
        model_type: str,
        config: SamConfig,
        weights_id: str,
        device: str | torch.device,
    ) -> None:
        """Set the attributes shared by both constructors."""
        self.model_type = model_type
        self.config = config
        self.weights_id = weights_id
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.prompt_encoder = self.model.prompt_encoder
        self.mask_decoder = self.model.mask_decoder
        self.img_size = config.image_size
        self.patch_size = config.patch_size
        grid = config.image_size // config.patch_size
        self.embedding_size = (grid, grid)
        self.transform = ResizeLongestSide(config.image_size)
        self.exact_stride = float(config.patch_size)
        self.stride = config.patch_size
        self.last_geometry: SamGeometry | None = None
        self.last_valid_cells: tuple[int, int] | None = None

    @property
    def config_id(self) -> str:
        """Changes with the architecture (including ``img_size``), the weights (the checkpoint's
        SHA-256, or the random seed) and the preprocessing version."""
        options = {
            "version": _VERSION,
            "model_type": self.model_type,
            "config": asdict(self.config),
            "weights": self.weights_id,
        }
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"sam-{self.model_type}-{digest[:16]}"

    def geometry(self, height: int, width: int) -> SamGeometry:
        """The resized size, valid cells and exact stride of a ``height x width`` image."""
        if height < 1 or width < 1:
            raise InputShapeError(f"height, width: expected positive, got {height} x {width}")
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, self.img_size)
        if new_h < 1 or new_w < 1:
            raise InputShapeError(
                f"images: a {height} x {width} image resizes to {new_h} x {new_w} pixels at "
                f"long side {self.img_size}; its aspect ratio is too extreme for SAM"
            )
        cells = (math.ceil(new_h / self.patch_size), math.ceil(new_w / self.patch_size))
        stride = self.patch_size * max(height, width) / self.img_size
        return SamGeometry((height, width), (new_h, new_w), cells, stride)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Image embeddings [B, 256, ceil(h' / 16), ceil(w' / 16)] (float32, on ``images``' device)
        of images [B, 3, H, W] (float RGB in [0, 1]), where h' x w' is the image resized to long
        side ``img_size``; sets :attr:`last_geometry`, :attr:`last_valid_cells`, :attr:`stride`
        and :attr:`exact_stride`."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InputShapeError(
                f"images: expected a float tensor [B, 3, H, W] in [0, 1], got "
                f"{images.dtype} {list(images.shape)}"
            )
        if not bool(torch.isfinite(images).all()):
            raise NonFiniteError("images: expected finite values in [0, 1], found NaN or inf")
        geometry = self.geometry(images.shape[2], images.shape[3])
        rows, cols = geometry.valid_cells
        if images.shape[0] == 0:
            return images.new_zeros(0, self.dim, rows, cols, dtype=torch.float32)
        self.model.eval()
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to("cpu", torch.uint8)
        resized = [
            torch.from_numpy(self.transform.apply_image(np.ascontiguousarray(image.numpy())))
            for image in pixels.permute(0, 2, 3, 1)
        ]
        batch = torch.stack(resized).permute(0, 3, 1, 2).to(self.device)
        embeddings = self.model.image_encoder(self.model.preprocess(batch))
        self.last_geometry = geometry
        self.last_valid_cells = geometry.valid_cells
        self.exact_stride = geometry.exact_stride
        self.stride = max(1, round(geometry.exact_stride))
        return embeddings[:, :, :rows, :cols].float().contiguous().to(images.device)

    def encode_text(self, texts: list[str]) -> Tensor:
        """SAM has no text encoder: always raises NotImplementedError."""
        raise NotImplementedError("teacher 'sam' is not language-aligned: it has no text encoder")


def _config(model_type: str) -> SamConfig:
    """The configuration called ``model_type``, or a CheckpointError listing the known ones."""
    if model_type not in SAM_CONFIGS:
        raise CheckpointError(
            f"model_type: expected one of {sorted(SAM_CONFIGS)}, got {model_type!r}"
        )
    return SAM_CONFIGS[model_type]
