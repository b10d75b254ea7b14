"""The one dataset type every loader returns: posed images, optional masks, points and ground truth."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import InputShapeError


@dataclass
class Dataset:
    """V posed images of one scene, all of one size.

    ``labels``, ``instances`` and ``depths`` are ground truth, known only for synthetic worlds;
    ``class_names[k]`` names label ``k``. The split lists each view at most once, and no view
    is both a train and a test view (a dataset may hold none out).
    """

    images: Tensor  # [V, H, W, 3] float32 in [0, 1]
    cameras: Cameras  # V cameras, OpenCV axes, sharing the image size
    image_names: list[str]
    train_indices: list[int]
    test_indices: list[int]
    masks: Tensor | None = None  # [V, H, W] bool, True = valid pixel
    points: Tensor | None = None  # [P, 3] world points for initialisation (SfM or surface samples)
    point_colors: Tensor | None = None  # [P, 3] in [0, 1]
    labels: Tensor | None = None  # [V, H, W] int64 class ids (synthetic worlds: 0 = sky, never -1)
    instances: Tensor | None = None  # [V, H, W] int64 instance ids, -1 = none
    depths: Tensor | None = None  # [V, H, W] float32 camera-space z, inf where nothing is hit
    class_names: list[str] = field(default_factory=list)
    root: Path | None = None  # where it was loaded from, if anywhere

    def __post_init__(self) -> None:
        v = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise InputShapeError(
                f"Dataset.images: expected [V, H, W, 3], got {list(self.images.shape)}"
            )
        if len(self.cameras) != v:
            raise InputShapeError(f"Dataset.cameras: {len(self.cameras)} cameras for {v} images")
        h, w = self.images.shape[1:3]
        if (self.cameras.height, self.cameras.width) != (h, w):
            raise InputShapeError(
                f"Dataset.cameras: image size {self.cameras.width}x{self.cameras.height} "
                f"does not match the images ({w}x{h})"
            )
        if len(self.image_names) != v:
            raise InputShapeError(
                f"Dataset.image_names: {len(self.image_names)} names for {v} images"
            )
        for name in ("masks", "labels", "instances", "depths"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (v, h, w):
                raise InputShapeError(
                    f"Dataset.{name}: expected [{v}, {h}, {w}], got {list(value.shape)}"
                )
        bad = [i for i in [*self.train_indices, *self.test_indices] if not 0 <= i < v]
        if bad:
            raise InputShapeError(f"Dataset split: indices {bad[:5]} outside 0..{v - 1}")
        for name in ("train_indices", "test_indices"):
            indices = getattr(self, name)
            if len(set(indices)) != len(indices):
                repeated = sorted(i for i, n in Counter(indices).items() if n > 1)
                raise InputShapeError(f"Dataset split: {name} repeats views {repeated[:5]}")
        both = sorted(set(self.train_indices) & set(self.test_indices))
        if both:
            raise InputShapeError(
                f"Dataset split: views {both[:5]} are in both train_indices and test_indices; "
                f"held-out views must not be trained on"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height

    def with_test_views(self, test: list[int]) -> Dataset:
        """The same views split anew: ``test`` held out, every other view trained on."""
        held_out = set(test)
        train = [i for i in range(len(self)) if i not in held_out]
        return replace(self, train_indices=train, test_indices=sorted(held_out))

    def view_indices(self, names: tuple[str, ...] | list[str], option: str) -> list[int]:
        """Indices of views named by their name (``images/frame_001``) or its last part
        (``frame_001``); an unknown or ambiguous name is a ConfigError naming ``option``."""
        from feature_splat.errors import ConfigError

        found = []
        for name in names:
            matches = [
                i for i, view in enumerate(self.image_names)
                if name in (view, view.rsplit("/", 1)[-1])
            ]  # fmt: skip
            if len(matches) != 1:
                known = ", ".join(self.image_names[:5]) + (", ..." if len(self) > 5 else "")
                what = "names no view" if not matches else f"names {len(matches)} views"
                raise ConfigError(f"{option}: {name!r} {what} (views: {known})")
            found.append(matches[0])
        return found

    def subset(self, indices: list[int]) -> Dataset:
        """The views ``indices`` only (splits re-indexed; points and class names kept)."""
        index = torch.tensor(indices, dtype=torch.long)
        position = {old: new for new, old in enumerate(indices)}

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return replace(
            self,
            images=self.images[index],
            cameras=self.cameras[index],
            image_names=[self.image_names[i] for i in indices],
            train_indices=[position[i] for i in self.train_indices if i in position],
            test_indices=[position[i] for i in self.test_indices if i in position],
            masks=pick(self.masks),
            labels=pick(self.labels),
            instances=pick(self.instances),
            depths=pick(self.depths),
        )
