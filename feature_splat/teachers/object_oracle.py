"""The object oracle teacher: synthetic "DINO-like" features for views of procedural objects.

Synthetic only: the features are built from ground truth (part ids, depth, normals), never from
pixels. They mimic what makes self-supervised ViT features useful for correspondence: the same
semantic point of different instances of a category gets similar features, nearby points similar
ones, different parts different ones; and they carry what makes them imperfect: a dependence on the
viewing direction, low resolution and noise. Per pixel of an :class:`ObjectViews`:

1. the pixel's surface point in part-normalised canonical coordinates ``c`` in [-1, 1]^3
   (:meth:`ObjectInstance.canonical_coordinates` of the depth back-projected to the object frame);
2. the point feature: the unit embedding of its part (a seeded unit vector per category and part
   name; the background has one of its own) plus ``position_weight`` times a position code, then
   L2-normalised. The position code is a seeded random linear map of random Fourier features of
   ``c`` (sines and cosines of ``3 * frequencies`` random projections with frequencies of standard
   deviation pi), normalised: a smooth code whose similarity falls with canonical distance like
   ``exp(-(pi d)^2 / 2)`` (0.82 at 0.2, a tenth of a part's extent; near 0 at 1);
3. plus ``view_weight`` times a seeded linear map of the surface normal in *camera* coordinates, so
   the same point looks different from different views;
4. averaged over ``stride x stride`` cells (:func:`~feature_splat.teachers.base.pool_to_cells`),
   plus Gaussian noise of expected norm ``noise`` seeded by the teacher's configuration, the
   category, the instance index and the view index, and L2-normalised per cell.

:meth:`ObjectOracleTeacher.point_features` gives step 2 alone (view-independent and noiseless): the
"ground-truth" features of any canonical point.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.data.synthetic.object_views import ObjectViews
from feature_splat.data.synthetic.objects import CATEGORY_NAMES, PART_NAMES
from feature_splat.errors import DatasetError, InputShapeError
from feature_splat.teachers.base import pool_to_cells, seeded_randn

_VERSION = 1  # bump when the features change for the same options
_BANDWIDTH = math.pi  # standard deviation of the random Fourier frequencies, in canonical units


class ObjectOracleTeacher:
    """Synthetic "DINO-like" features for object views: from part identity + part-normalised
    canonical position, view-dependent, noisy, low resolution. Synthetic only: built from ground
    truth, never from pixels (see the module docstring for the recipe)."""

    def __init__(
        self,
        dim: int = 64,
        stride: int = 4,
        noise: float = 0.15,
        view_weight: float = 0.25,
        position_weight: float = 1.0,
        frequencies: int = 6,
        seed: int = 0,
    ) -> None:
        if dim < 1 or stride < 1 or frequencies < 1:
            raise InputShapeError(
                f"dim, stride, frequencies: expected >= 1, got {dim}, {stride}, {frequencies}"
            )
        if noise < 0 or view_weight < 0 or position_weight < 0:
            raise InputShapeError(
                "noise, view_weight, position_weight: expected >= 0, got "
                f"{noise}, {view_weight}, {position_weight}"
            )
        self.dim = int(dim)
        self.stride = int(stride)
        self.noise = float(noise)
        self.view_weight = float(view_weight)
        self.position_weight = float(position_weight)
        self.frequencies = int(frequencies)
        self.seed = int(seed)
        prefix = f"object-oracle:{self.seed}"
        self._background = F.normalize(seeded_randn(f"{prefix}:background", self.dim), dim=0)
        self._parts = {
            category: torch.stack(
                [self._background]
                + [
                    F.normalize(seeded_randn(f"{prefix}:part:{category}:{name}", self.dim), dim=0)
                    for name in PART_NAMES[category][1:]
                ]
            )
            for category in CATEGORY_NAMES
        }
        self._fourier = seeded_randn(f"{prefix}:fourier", 3 * self.frequencies, 3) * _BANDWIDTH
        self._position_map = seeded_randn(f"{prefix}:position", self.dim, 6 * self.frequencies)
        self._view_map = seeded_randn(f"{prefix}:view", self.dim, 3) / math.sqrt(self.dim)

    def config_id(self) -> str:
        """Changes with every option (and with the recipe's version): caches are keyed by it."""
        options = {
            "version": _VERSION,
            "dim": self.dim,
            "stride": self.stride,
            "noise": self.noise,
            "view_weight": self.view_weight,
            "position_weight": self.position_weight,
            "frequencies": self.frequencies,
            "seed": self.seed,
        }
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
        return f"object-oracle-{digest[:16]}"

    def point_features(self, category: str, points_canonical: Tensor, parts: Tensor) -> Tensor:
        """View-independent, noiseless features [N, dim] (float32, unit norm) of canonical points
        [N, 3] of part ids [N]; part 0 gets the background embedding. The "ground truth" features."""
        return self._point_features(category, points_canonical, parts).float()

    def encode_views(self, views: ObjectViews) -> Tensor:
        """Teacher maps [V, dim, ceil(H / stride), ceil(W / stride)] (float32, unit norm per cell)."""
        instance = views.instance
        n_views, height, width = views.parts.shape
        points, parts, view = views.surface_points()
        canonical = instance.canonical_coordinates(points.double(), parts)
        foreground = self._point_features(instance.category, canonical, parts)
        rotations = views.cameras.viewmats[view, :3, :3].double()
        normals = (rotations @ views.normals[views.masks()].double()[..., None])[..., 0]
        foreground = foreground + self.view_weight * normals @ self._view_map.T
        pixels = self._background.expand(n_views * height * width, self.dim).clone()
        pixels[views.masks().reshape(-1)] = foreground
        maps = pool_to_cells(
            pixels.view(n_views, height, width, self.dim).permute(0, 3, 1, 2), self.stride
        )
        prefix = f"noise:{self.config_id()}:{instance.category}:{instance.index}"
        noise = torch.stack(
            [seeded_randn(f"{prefix}:{v}", *maps.shape[1:]) for v in range(n_views)]
        )
        maps = maps + noise * (self.noise / math.sqrt(self.dim))
        return F.normalize(maps, dim=1).float()

    def _point_features(self, category: str, canonical: Tensor, parts: Tensor) -> Tensor:
        """:meth:`point_features` in float64."""
        if category not in self._parts:
            raise DatasetError(
                f"category: unknown object category {category!r}; expected one of "
                f"{list(CATEGORY_NAMES)}"
            )
        embeddings = self._parts[category]
        if canonical.ndim != 2 or canonical.shape[1] != 3 or parts.shape != canonical.shape[:1]:
            raise InputShapeError(
                f"points_canonical, parts: expected [N, 3] and [N], got "
                f"{list(canonical.shape)} and {list(parts.shape)}"
            )
        parts = parts.to("cpu", torch.int64)
        if parts.numel() and not 0 <= int(parts.min()) <= int(parts.max()) < len(embeddings):
            raise DatasetError(
                f"parts: expected part ids in 0..{len(embeddings) - 1} for {category!r}, got "
                f"{int(parts.min())}..{int(parts.max())}"
            )
        projections = canonical.to("cpu", torch.float64) @ self._fourier.T
        code = torch.cat([projections.sin(), projections.cos()], dim=1) @ self._position_map.T
        features = embeddings[parts] + self.position_weight * F.normalize(code, dim=1)
        features = F.normalize(features, dim=1)
        return torch.where((parts == 0)[:, None], self._background, features)
