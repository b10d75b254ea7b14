"""The LSeg teacher: LSeg's 512-d language-aligned pixel embeddings (as Feature 3DGS distils them).

:class:`LSegTeacher` runs :class:`~feature_splat.teachers.lseg.net.LSegNet` with the weights of the
official Lightning checkpoint ``demo_e200.ckpt`` (its ``state_dict``, keys prefixed ``net.``),
loaded strictly from a local file. Nothing is ever downloaded.

Preprocessing and cell geometry, for images [B, 3, H, W] in [0, 1]:

1. the image is resized (bilinear, antialiased) so that its long side is ``image_size`` (480 by
   default, LSeg's training crop) and its short side ``int(short * image_size / long + 0.5)``,
   giving h' x w';
2. normalised as in the official code (mean = std = 0.5: ``2 * rgb - 1``) and padded at the bottom
   and right to multiples of 32 with black (the official padding value), because the DPT decoder
   halves the resolution five times;
3. the network returns embeddings at stride 2 of its input (the DPT head's output: ``scratch.head1``
   before the official x2 upsampling of the logits); the cells that hold only padding are cropped
   away, leaving ``ceil(h' / 2) x ceil(w' / 2)`` cells, L2-normalised per cell.

Cell (i, j) covers resized pixels ``[2 i, 2 i + 2)``, so its centre lies at ``(j + 0.5) * stride``
in the original image with the exact stride ``2 * max(H, W) / image_size`` (2.0 for a 480 x 360
image at the default size, as in Feature 3DGS; 4.0 for 960 x 720). It is generally not an integer
and depends on the image size: :attr:`LSegTeacher.exact_stride` holds it, :attr:`LSegTeacher.stride`
its rounded value (see :class:`LSegGeometry`).

With ``multi_scale`` and / or ``flip``, features are averaged as in Feature 3DGS's LSeg encoder
(``encode_images.py``, evaluator with ``flip=True``): the image is also run with its long side
``image_size * scale`` for each of ``scales`` and mirrored left-right; each raw (unnormalised)
output is cropped, mirrored back, bilinearly resized to the base ``ceil(h' / 2) x ceil(w' / 2)``
grid and averaged before the final normalisation. Unlike the official evaluator, each scale sees
the whole image in one pass (no sliding 480-pixel crops), which changes the context the ViT sees at
the large scales.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.errors import CheckpointError, InputShapeError, NonFiniteError
from feature_splat.io.checkpoints import load_strict, read_state_dict
from feature_splat.teachers.checkpoints import (
    build_seeded,
    file_digest,
    require_checkpoint,
)
from feature_splat.teachers.lseg.net import (
    INPUT_MULTIPLE,
    LSEG_CONFIGS,
    OUTPUT_STRIDE,
    LSegConfig,
    LSegNet,
)

_VERSION = 1  # bump when the features change for the same model, weights and options

OFFICIAL_FILE = "demo_e200.ckpt"
CHECKPOINT_SOURCE = (
    "the isl-org/lang-seg GitHub README ('Download the model for demo ... as "
    "checkpoints/demo_e200.ckpt', a Google Drive link), as the Feature 3DGS README also directs"
)
FEATURE_3DGS_SCALES = (0.75, 1.0, 1.25, 1.5, 1.75)
_CHECKPOINT_PREFIX = "net."
# Top-level packages whose pickled classes (e.g. the ModelCheckpoint type that keys PyTorch
# Lightning 1.4's callback states) may sit beside the weights in a Lightning checkpoint.
_LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric")


@dataclass(frozen=True)
class LSegGeometry:
    """How an ``original_size`` (H, W) image maps to LSeg's cells at one scale.

    ``input_size`` is the resized image (h', w') before padding, ``padded_size`` the network input
    (multiples of 32), ``valid_cells`` the cells that hold some of the image,
    ``(ceil(h' / 2), ceil(w' / 2))``, and ``exact_stride`` the original pixels per cell,
    ``2 * max(H, W) / long_side``. It is exact along the long side; along the short side the resize
    rounds to whole pixels, so a cell centre may be off by up to half a resized pixel.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    valid_cells: tuple[int, int]
    exact_stride: float


def lseg_geometry(height: int, width: int, long_side: int) -> LSegGeometry:
    """The geometry of a ``height x width`` image resized to long side ``long_side``."""
    if height < 1 or width < 1:
        raise InputShapeError(f"height, width: expected positive, got {height} x {width}")
    scale = long_side / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if new_h < 1 or new_w < 1:
        raise InputShapeError(
            f"images: a {height} x {width} image resizes to {new_h} x {new_w} pixels at long "
            f"side {long_side}; its aspect ratio is too extreme for LSeg"
        )
    padded = (_round_up(new_h, INPUT_MULTIPLE), _round_up(new_w, INPUT_MULTIPLE))
    cells = (math.ceil(new_h / OUTPUT_STRIDE), math.ceil(new_w / OUTPUT_STRIDE))
    return LSegGeometry((height, width), (new_h, new_w), padded, cells, OUTPUT_STRIDE / scale)


class _LightningObject:
    """Inert stand-in for any Lightning class pickled in a checkpoint: accepts any construction
    and state, runs no code. Only the weights are read from such checkpoints."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def read_lightning_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a (PyTorch Lightning) checkpoint's ``state_dict``, read with
    ``weights_only=True``.

    Lightning pickles some of its own classes beside the weights (1.4 keys callback states by the
    callback's class), which a weights-only load refuses and which need Lightning to import. Those
    classes, and only those, are admitted as inert stand-ins (classes used as keys or objects
    pickled with their attributes; a pickled dict subclass cannot be, and the error says how to
    re-save the weights alone); any other non-weight object is a CheckpointError naming it.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # torch raises many types on corrupt or legacy files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    foreign = [name for name in unsafe if name.split(".")[0] not in _LIGHTNING_PACKAGES]
    if foreign:
        raise CheckpointError(
            f"{path}: holds pickled objects other than weights and Lightning's own ({foreign[:3]}); "
            "refusing to unpickle them"
        )
    try:
        with torch.serialization.safe_globals([(_LightningObject, name) for name in unsafe]):
            return read_state_dict(path)
    except CheckpointError as err:
        if not unsafe:
            raise
        raise CheckpointError(
            f"{err}. Its Lightning objects ({unsafe[:3]}) cannot be skipped; where "
            "pytorch_lightning is installed, save the weights alone with "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'lseg_state_dict.pt') "
            "and pass that file"
        ) from err


def strip_checkpoint_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official checkpoint's ``net.``-prefixed keys without the prefix; other keys are kept as
    they are (so that a strict load reports them as unexpected)."""
    return {
        key[len(_CHECKPOINT_PREFIX) :] if key.startswith(_CHECKPOINT_PREFIX) else key: value
        for key, value in state.items()
    }


class LSegTeacher:
    """LSeg as a teacher: 512-d pixel embeddings at stride 2, padding cells cropped, unit norm.

    See the module docstring for the preprocessing, the cell geometry and the multi-scale / flip
    averaging. ``stride`` depends on the image size: it is the rounded :attr:`exact_stride` of the
    last encoded image (before any, 2: the stride for images whose long side is ``image_size``).
    Use :meth:`geometry` for the exact values of any size. ``net`` is the whole
    :class:`LSegNet`.
    """

    name = "lseg"
    language_aligned = True
    resizes_input = True  # to long side image_size: cells are not whole original pixels in general

    def __init__(
        self,
        checkpoint: str | Path | None,
        image_size: int = 480,
        multi_scale: bool = False,
        flip: bool = False,
        *,
        scales: tuple[float, ...] = FEATURE_3DGS_SCALES,
        model_type: str = "clip_vitl16_384",
        device: str | torch.device = "cpu",
    ) -> None:
        """LSeg ``model_type`` with the weights of the local ``checkpoint`` (the official Lightning
        checkpoint ``demo_e200.ckpt`` or a bare state dict, ``net.`` prefix optional), run at long
        side ``image_size``; ``multi_scale`` averages over ``scales``, ``flip`` over mirrors."""
        config = _config(model_type)
        path = require_checkpoint(
            checkpoint, f"LSeg {model_type} ({OFFICIAL_FILE})", CHECKPOINT_SOURCE
        )
        net = LSegNet(config)
        state = strip_checkpoint_prefix(read_lightning_state_dict(path))
        load_strict(net, state, f"LSeg {model_type} checkpoint {path}")
        weights_id = f"sha256:{file_digest(path)}"
        self._setup(net, model_type, weights_id, image_size, multi_scale, flip, scales, device)

    @classmethod
    def random(
        cls,
        model_type: str = "tiny",
        seed: int = 0,
        image_size: int = 64,
        multi_scale: bool = False,
        flip: bool = False,
        *,
        scales: tuple[float, ...] = FEATURE_3DGS_SCALES,
        device: str | torch.device = "cpu",
    ) -> LSegTeacher:
        """A randomly initialised LSeg ``model_type`` (deterministic in ``seed``), for tests only:
        its features mean nothing. Same code path as a loaded model apart from the weights."""
        config = _config(model_type)
        net = build_seeded(lambda: LSegNet(config), seed)
        teacher = cls.__new__(cls)
        weights_id = f"random-init:{seed}"
        teacher._setup(net, model_type, weights_id, image_size, multi_scale, flip, scales, device)
        return teacher

    def _setup(
        self,
        net: LSegNet,
        model_type: str,
        weights_id: str,
        image_size: int,
        multi_scale: bool,
        flip: bool,
        scales: tuple[float, ...],
        device: str | torch.device,
    ) -> None:
        """Check the options and set the attributes shared by both constructors."""
        if int(image_size) != image_size or image_size < INPUT_MULTIPLE:
            raise InputShapeError(
                f"image_size: expected an integer >= {INPUT_MULTIPLE}, got {image_size}"
            )
        if multi_scale and (not scales or min(scales) <= 0):
            raise InputShapeError(f"scales: expected positive scale factors, got {scales}")
        self.model_type = model_type
        self.config: LSegConfig = net.config
        self.weights_id = weights_id
        self.image_size = int(image_size)
        self.multi_scale = bool(multi_scale)
        self.flip = bool(flip)
        self.scales = tuple(float(s) for s in scales) if self.multi_scale else (1.0,)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.dim = net.config.embed_dim
        self.exact_stride = float(OUTPUT_STRIDE)
        self.stride = OUTPUT_STRIDE
        self.last_geometry: LSegGeometry | None = None

    @property
    def config_id(self) -> str:
        """Changes with the architecture, the weights (the checkpoint's SHA-256, or the random
        seed), ``image_size``, the multi-scale / flip options and the preprocessing version."""
        options = {
            "version": _VERSION,
            "model_type": self.model_type,
            "config": asdict(self.config),
            "weights": self.weights_id,
            "image_size": self.image_size,
            "scales": self.scales,
            "flip": self.flip,
        }
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"lseg-{self.model_type}-{digest[:16]}"

    def geometry(self, height: int, width: int) -> LSegGeometry:
        """The resized size, padding, valid cells and exact stride of a ``height x width`` image
        at the base scale (the grid :meth:`encode` returns)."""
        return lseg_geometry(height, width, self.image_size)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Unit pixel embeddings [B, dim, ceil(h' / 2), ceil(w' / 2)] (float32, on ``images``'
        device) of images [B, 3, H, W] (float RGB in [0, 1]), where h' x w' is the image resized
        to long side ``image_size``; sets :attr:`last_geometry`, :attr:`stride` and
        :attr:`exact_stride`."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InputShapeError(
                f"images: expected a float tensor [B, 3, H, W] in [0, 1], got "
                f"{images.dtype} {list(images.shape)}"
            )
        if not bool(torch.isfinite(images).all()):
            raise NonFiniteError("images: expected finite values in [0, 1], found NaN or inf")
        height, width = images.shape[-2:]
        base = self.geometry(height, width)
        self.net.eval()
        pixels = images.detach().to(self.device, torch.float32).clamp(0, 1)
        total = torch.zeros(len(pixels), self.dim, *base.valid_cells, device=self.device)
        for scale in self.scales:
            geometry = lseg_geometry(height, width, round(self.image_size * scale))
            resized = F.interpolate(
                pixels, size=geometry.input_size, mode="bilinear", antialias=True
            )
            for mirrored in (False, True) if self.flip else (False,):
                view = resized.flip(-1) if mirrored else resized
                features = self._run(view, geometry)
                features = features.flip(-1) if mirrored else features
                if features.shape[-2:] != base.valid_cells:
                    features = F.interpolate(features, size=base.valid_cells, mode="bilinear")
                total += features
        self.last_geometry = base
        self.exact_stride = base.exact_stride
        self.stride = max(1, round(base.exact_stride))
        return F.normalize(total, dim=1).to(images.device)

    def _run(self, resized: Tensor, geometry: LSegGeometry) -> Tensor:
        """Raw embeddings [B, dim, *valid_cells] of resized images [B, 3, h', w'] in [0, 1]."""
        pad_h = geometry.padded_size[0] - geometry.input_size[0]
        pad_w = geometry.padded_size[1] - geometry.input_size[1]
        inputs = F.pad(resized * 2 - 1, (0, pad_w, 0, pad_h), value=-1.0)  # -1: black
        rows, cols = geometry.valid_cells
        return self.net(inputs)[:, :, :rows, :cols].float()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Unit CLIP text embeddings [T, dim] (float32, CPU) of ``texts`` (OpenAI CLIP's BPE
        tokenizer, truncated to the 77-token context), the space the pixel embeddings live in."""
        if isinstance(texts, str):
            raise InputShapeError("texts: expected a list of strings, got a single string")
        if not texts:
            return torch.zeros(0, self.dim)
        self.net.eval()
        tokens = open_clip.tokenize(list(texts), context_length=self.config.context_length)
        embeddings = self.net.encode_text(tokens.to(self.device)).float()
        return F.normalize(embeddings, dim=-1).cpu()


def _round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def _config(model_type: str) -> LSegConfig:
    """The configuration called ``model_type``, or an InputShapeError listing the known ones."""
    if model_type not in LSEG_CONFIGS:
        raise InputShapeError(
            f"model_type: expected one of {sorted(LSEG_CONFIGS)}, got {model_type!r}"
        )
    return LSEG_CONFIGS[model_type]
