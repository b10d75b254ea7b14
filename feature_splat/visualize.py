"""Turn rendered maps into images a person can look at."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PcaColours:
    """A fixed map from D-channel features to RGB: the first three principal components of some
    reference features, each scaled so its 1st..99th percentile spans [0, 1]. Fixed once, it
    colours every view alike (no flicker from view to view)."""

    mean: Tensor  # [D]
    basis: Tensor  # [D, 3] (zero columns when D < 3)
    lo: Tensor  # [3]
    hi: Tensor  # [3]

    @classmethod
    def fit(cls, reference: Tensor) -> PcaColours:
        """Fit to reference features [N, D] (N >= 2)."""
        reference = reference.detach().reshape(-1, reference.shape[-1]).float()
        d = reference.shape[1]
        mean = reference.mean(0)
        if d > 3:
            _, _, basis = torch.pca_lowrank(reference - mean, q=3, center=False, niter=4)
        else:
            basis = torch.eye(d, 3)
        projected = (reference - mean) @ basis
        lo, hi = torch.quantile(projected, 0.01, dim=0), torch.quantile(projected, 0.99, dim=0)
        return cls(mean, basis, lo, hi)

    def __call__(self, features: Tensor) -> Tensor:
        """RGB [..., 3] in [0, 1] of features [..., D]."""
        projected = (features.detach().float().to(self.mean) - self.mean) @ self.basis
        return ((projected - self.lo) / (self.hi - self.lo).clamp_min(1e-8)).clamp(0, 1)


def pca_rgb(features: Tensor, mask: Tensor | None = None) -> Tensor:
    """Project features [H, W, D] on their first three principal components, scaled to [0, 1].

    Fewer than three channels are padded with zeros. ``mask`` [H, W] selects the pixels that define
    the components and the colour range (default: all).
    """
    flat = features.detach().reshape(-1, features.shape[-1]).float()
    chosen = flat if mask is None else flat[mask.reshape(-1)]
    return PcaColours.fit(chosen if chosen.shape[0] >= 2 else flat)(features)


def depth_rgb(depth: Tensor, alpha: Tensor) -> Tensor:
    """Grey-scale inverse depth [H, W, 1] (near = bright) over black where nothing was rendered.

    Inverse depth keeps the scene readable when a sky or distant background lies far behind it.
    """
    covered = alpha[..., 0] > 0.5
    if not bool(covered.any()):
        return torch.zeros(*depth.shape[:2], 3)
    inverse = 1.0 / depth[..., 0].clamp_min(1e-6)
    values = inverse[covered]
    lo, hi = float(values.min()), float(values.max())
    grey = (inverse - lo) / max(hi - lo, 1e-8)
    grey = torch.where(covered, 0.15 + 0.85 * grey.clamp(0, 1), torch.zeros_like(grey))
    return grey[..., None].expand(-1, -1, 3)


def label_rgb(labels: Tensor) -> Tensor:
    """A colour per integer label [H, W] -> [H, W, 3] (a fixed, well-spread palette)."""
    golden = 0.618033988749895
    hue = (labels.float() * golden) % 1.0
    k = torch.tensor([5.0, 3.0, 1.0])
    # HSV -> RGB with saturation 0.65 and value 0.95.
    channel = (k + hue[..., None] * 6.0) % 6.0
    weight = torch.clamp(torch.minimum(channel, 4.0 - channel), 0.0, 1.0)
    return 0.95 - 0.95 * 0.65 * weight


def heat_rgb(values: Tensor, lo: float | None = None, hi: float | None = None) -> Tensor:
    """A blue -> yellow -> red ramp for a map [H, W] (range from its 1st/99th percentiles by default)."""
    values = values.detach().float()
    lo = float(torch.quantile(values, 0.01)) if lo is None else lo
    hi = float(torch.quantile(values, 0.99)) if hi is None else hi
    t = ((values - lo) / max(hi - lo, 1e-8)).clamp(0, 1)[..., None]
    cold, mid, hot = (torch.tensor(c) for c in ([0.1, 0.2, 0.8], [1.0, 0.9, 0.2], [0.85, 0.1, 0.1]))
    return torch.where(t < 0.5, cold + (mid - cold) * 2 * t, mid + (hot - mid) * (2 * t - 1))


def draw_points(
    image: Tensor, points: Tensor, color: tuple[float, float, float], radius: int = 1
) -> Tensor:
    """A copy of ``image`` [H, W, 3] with a ``(2 radius + 1)``-pixel plus at each (x, y) of ``points`` [Q, 2]."""
    out = image.clone()
    h, w = image.shape[:2]
    paint = torch.tensor(color, dtype=image.dtype)
    for x, y in points.floor().long().tolist():
        for dx, dy in (
            [(0, 0)]
            + [(s * r, 0) for r in range(1, radius + 1) for s in (-1, 1)]
            + [(0, s * r) for r in range(1, radius + 1) for s in (-1, 1)]
        ):
            if 0 <= x + dx < w and 0 <= y + dy < h:
                out[y + dy, x + dx] = paint
    return out


def overlay_rgb(image: Tensor, mask: Tensor, color: tuple[float, float, float]) -> Tensor:
    """``image`` [H, W, 3] with the pixels of ``mask`` [H, W] tinted half-way to ``color`` and the
    rest dimmed, so a selection stands out."""
    tint = 0.5 * image + 0.5 * torch.tensor(color, dtype=image.dtype)
    return torch.where(mask[..., None], tint, 0.6 * image)


def captioned(image: Tensor, text: str, height: int = 14) -> Tensor:
    """``image`` [H, W, 3] under a black strip of ``height`` pixels holding ``text`` in white
    (PIL's built-in bitmap font, cut at the image's width)."""
    import numpy as np
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (image.shape[1], height))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(255, 255, 255))
    caption = torch.from_numpy(np.asarray(strip).copy()).float() / 255
    return torch.cat([caption.to(image.dtype), image], dim=0)


def tile_grid(tiles: list[Tensor], columns: int) -> Tensor:
    """Images [H, W, 3] of one size in a grid of ``columns``, the last row padded with black."""
    blank = torch.zeros_like(tiles[0])
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] = rows[-1] + [blank] * (columns - len(rows[-1]))
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)
