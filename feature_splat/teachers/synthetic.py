"""The synthetic oracle teacher: exact, language-aligned "features" for the views of a synthetic world.

Synthetic only: it does not look at pixels. :class:`SyntheticTeacher` recognises each input image by
a hash of its content among the views of the dataset it was built for, and returns features made
from that view's ground-truth labels and instances, shaped like a ViT's patch features:

1. per pixel, the embedding of its class (a deterministic pseudo-random unit vector seeded by the
   class name) plus ``instance_jitter`` times a unit vector seeded by the instance id;
2. averaged over each ``stride x stride`` cell (partial cells at the right and bottom edges average
   the pixels they hold), giving ``ceil(H / stride) x ceil(W / stride)`` cells;
3. blurred over cells by a Gaussian of ``blur`` cells standard deviation;
4. plus Gaussian noise whose expected norm is ``noise`` (per-channel standard deviation
   ``noise / sqrt(dim)``), seeded by the image hash and ``seed`` so it is deterministic;
5. L2-normalised per cell.

The class embeddings and ``encode_text`` come from a text space
(:mod:`feature_splat.teachers.text_space`): by default, where it is installed, the real sentence
embeddings of all-MiniLM-L6-v2, so any phrase is answered by what it means; else pseudo-random
vectors seeded by the class names, reached only by a class name or a hand-written synonym. Either
way the image side is an oracle made from the ground truth, and :attr:`SyntheticTeacher.description`
says so.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.data.dataset import Dataset
from feature_splat.data.synthetic.raycast import single_threaded
from feature_splat.errors import DatasetError, InputShapeError
from feature_splat.teachers.base import seeded_randn, seeded_unit_vector
from feature_splat.teachers.text_space import TextSpace, build_text_space

_VERSION = 1  # bump when the features change for the same options


def image_key(image: Tensor) -> str:
    """A hash of an image [3, H, W] in [0, 1], quantised to 8 bits (robust to dtype and device)."""
    pixels = (image.detach().to("cpu", torch.float64).clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()


class SyntheticTeacher:
    """The oracle teacher of one synthetic dataset (see the module docstring for the recipe)."""

    name = "synthetic"
    language_aligned = True
    resizes_input = False  # cell (i, j) covers exactly pixels [i*stride, (i+1)*stride) x ...

    def __init__(
        self,
        labels: Tensor,
        instances: Tensor,
        image_keys: list[str],
        class_names: list[str],
        *,
        text_space: str = "auto",
        dim: int | None = None,
        stride: int = 8,
        noise: float = 0.05,
        blur: float = 0.5,
        instance_jitter: float = 0.25,
        seed: int = 0,
    ) -> None:
        """Prefer :meth:`for_dataset`. ``labels`` / ``instances`` [V, H, W] belong to the views
        whose :func:`image_key` are ``image_keys``; label ``k`` names ``class_names[k]``.
        ``text_space`` and ``dim`` choose the language side
        (:func:`~feature_splat.teachers.text_space.build_text_space`)."""
        if labels.ndim != 3 or instances.shape != labels.shape:
            raise InputShapeError(
                f"labels, instances: expected two [V, H, W] tensors of one shape, got "
                f"{list(labels.shape)} and {list(instances.shape)}"
            )
        if len(image_keys) != labels.shape[0]:
            raise InputShapeError(f"image_keys: {len(image_keys)} keys for {labels.shape[0]} views")
        if (dim is not None and dim < 1) or stride < 1:
            raise InputShapeError(f"dim, stride: expected positive, got dim={dim}, stride={stride}")
        if noise < 0 or blur < 0 or instance_jitter < 0:
            raise InputShapeError(
                f"noise, blur, instance_jitter: expected >= 0, got {noise}, {blur}, {instance_jitter}"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= len(class_names):
            raise DatasetError(
                f"labels: expected class ids in 0..{len(class_names) - 1} (every pixel labelled), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        self.text: TextSpace = build_text_space(text_space, list(class_names), dim)
        self.dim = self.text.dim
        self.stride = int(stride)
        self.noise = float(noise)
        self.blur = float(blur)
        self.instance_jitter = float(instance_jitter)
        self.seed = int(seed)
        self.class_names = list(class_names)
        self._labels = labels.to("cpu", torch.int64)
        self._instances = instances.to("cpu", torch.int64)
        self._view_of_key: dict[str, int] = {}
        for view, key in enumerate(image_keys):
            self._view_of_key.setdefault(key, view)
        world = hashlib.sha256(json.dumps([image_keys, self.class_names]).encode())
        self.world_id = world.hexdigest()[:16]
        self._class_vectors = self.text.embed(self.class_names).double()
        self.description = (
            f"synthetic oracle: image side from the ground-truth labels, text side "
            f"{self.text.description}"
        )

    @classmethod
    def for_dataset(
        cls,
        dataset: Dataset,
        dim: int | None = None,
        stride: int = 8,
        noise: float = 0.05,
        blur: float = 0.5,
        instance_jitter: float = 0.25,
        seed: int = 0,
        text_space: str = "auto",
    ) -> SyntheticTeacher:
        """The oracle for the views of ``dataset``, which must carry ``labels`` and ``instances``."""
        if dataset.labels is None or dataset.instances is None:
            raise DatasetError(
                "dataset: the synthetic teacher needs ground-truth labels and instances "
                "(a synthetic world from feature_splat.data.synthetic.load_world)"
            )
        keys = [image_key(image.permute(2, 0, 1)) for image in dataset.images]
        return cls(
            dataset.labels,
            dataset.instances,
            keys,
            dataset.class_names,
            text_space=text_space,
            dim=dim,
            stride=stride,
            noise=noise,
            blur=blur,
            instance_jitter=instance_jitter,
            seed=seed,
        )

    @property
    def config_id(self) -> str:
        """Changes with every option and with the world (the dataset's views and class names)."""
        options = {
            "version": _VERSION,
            "world": self.world_id,
            "dim": self.dim,
            "stride": self.stride,
            "noise": self.noise,
            "blur": self.blur,
            "instance_jitter": self.instance_jitter,
            "seed": self.seed,
        }
        if self.text.name != "random":  # the random space kept the identities runs were made with
            options["text"] = self.text.identity
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"synthetic-{digest[:16]}"

    def class_embeddings(self) -> Tensor:
        """The embeddings [K, dim] of the dataset's classes, row ``k`` for label ``k``."""
        return self._class_vectors.float()

    def encode(self, images: Tensor) -> Tensor:
        """Features [B, dim, ceil(H / stride), ceil(W / stride)] of views [B, 3, H, W] of the world.

        Raises :class:`DatasetError` for an image that is not one of the dataset's views.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputShapeError(f"images: expected [B, 3, H, W], got {list(images.shape)}")
        views = []
        for image in images:
            key = image_key(image)
            view = self._view_of_key.get(key)
            if view is None or tuple(self._labels.shape[1:]) != tuple(image.shape[1:]):
                raise DatasetError(
                    "images: the synthetic oracle only encodes views of its own world, and this "
                    f"{image.shape[2]}x{image.shape[1]} image is not one of its "
                    f"{len(self._labels)} views"
                )
            views.append((view, key))
        with single_threaded():  # small tensor ops: see single_threaded's docstring
            features = [self._features(view, key) for view, key in views]
        return torch.stack(features).to(images.device)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Unit embeddings [T, dim] of ``texts`` in the teacher's text space: a class's own
        embedding for its name."""
        if isinstance(texts, str):
            raise InputShapeError("texts: expected a list of strings, got a single string")
        return self.text.embed(list(texts)).float()

    def _features(self, view: int, key: str) -> Tensor:
        """The oracle features [dim, h, w] (float32) of view ``view`` whose image hash is ``key``."""
        labels, instances = self._labels[view], self._instances[view]
        height, width = labels.shape
        s = self.stride
        h, w = math.ceil(height / s), math.ceil(width / s)
        # Each distinct (class, instance) pair gets one vector; cells average their pixels' vectors.
        pairs, pair_of_pixel = torch.unique(
            torch.stack([labels.reshape(-1), instances.reshape(-1)], dim=1),
            dim=0,
            return_inverse=True,
        )
        vectors = self._class_vectors[pairs[:, 0]].clone()
        for row, instance in enumerate(pairs[:, 1].tolist()):
            if instance >= 0:
                jitter = seeded_unit_vector(f"instance:{self.seed}:{instance}", self.dim)
                vectors[row] += self.instance_jitter * jitter
        rows = torch.arange(height)[:, None] // s
        cols = torch.arange(width)[None, :] // s
        cell = (rows * w + cols).reshape(-1)
        counts = torch.bincount(pair_of_pixel * (h * w) + cell, minlength=len(pairs) * h * w)
        counts = counts.view(len(pairs), h * w).to(torch.float64)
        fractions = counts / counts.sum(dim=0, keepdim=True)
        features = (vectors.T @ fractions).view(1, self.dim, h, w)
        if self.blur > 0:
            features = _gaussian_blur(features, self.blur)
        noise = seeded_randn(f"noise:{self.seed}:{key}", *features.shape)
        features = features + noise * (self.noise / math.sqrt(self.dim))
        return F.normalize(features[0], dim=0).float()


def _gaussian_blur(features: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [1, C, h, w] over cells; weights renormalised at the borders."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = features.shape[1]

    def blur(x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)
        return F.conv2d(
            x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c
        )

    ones = torch.ones(1, 1, *features.shape[2:], dtype=features.dtype)
    return blur(features) / blur(ones).expand(1, channels, -1, -1)
