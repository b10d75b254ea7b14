"""Procedural surface textures, evaluated in a primitive's own local coordinates.

Every pattern is smooth (soft stripes, soft-edged checkers and windows, low-frequency value noise)
so that a scene rendered at small resolution stays learnable: there is no pixel-level noise. Because
a texture is evaluated at the hit point expressed in the primitive's local frame, the pattern sticks
to the surface whatever the view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Vec3 = tuple[float, float, float]
Pattern = Literal["solid", "stripes", "checker", "windows", "noise"]


@dataclass(frozen=True)
class Texture:
    """A base colour modulated by a smooth pattern.

    ``color`` is the base RGB in [0, 1]; the pattern blends towards ``color2`` (by default a darker
    shade of ``color``) by ``contrast`` at its peaks. ``scale`` is the pattern period in metres.

    - ``solid``: the base colour;
    - ``stripes``: sinusoidal stripes across ``axis`` (a direction in local coordinates);
    - ``checker``: soft-edged squares on the surface (on the two local axes most tangent to it);
    - ``windows``: a grid of soft rectangles, two thirds of each cell wide (building facades);
    - ``noise``: two octaves of smooth 3D value noise, seeded by ``seed``.
    """

    color: Vec3
    pattern: Pattern = "solid"
    color2: Vec3 | None = None
    scale: float = 1.0
    contrast: float = 0.5
    axis: Vec3 = (1.0, 0.0, 0.0)
    seed: int = 0

    def evaluate(self, points: Tensor, normals: Tensor) -> Tensor:
        """Colours [N, 3] at local points [N, 3] with local unit normals [N, 3]."""
        base = torch.tensor(self.color, dtype=points.dtype, device=points.device)
        if self.pattern == "solid":
            return base.expand(points.shape[0], 3).clone()
        second = (
            torch.tensor(self.color2, dtype=points.dtype, device=points.device)
            if self.color2 is not None
            else base * 0.55
        )
        weight = self._pattern(points / self.scale, normals) * self.contrast
        return base + (second - base) * weight[:, None]

    def _pattern(self, p: Tensor, normals: Tensor) -> Tensor:
        """The pattern in [0, 1] at points ``p`` already divided by the period."""
        if self.pattern == "stripes":
            axis = torch.tensor(self.axis, dtype=p.dtype, device=p.device)
            axis = axis / axis.norm()
            return 0.5 + 0.5 * torch.sin(2.0 * math.pi * (p @ axis))
        if self.pattern == "noise":
            return 0.65 * value_noise(p, self.seed) + 0.35 * value_noise(2.0 * p, self.seed + 1)
        u, v = _surface_coordinates(p, normals)
        if self.pattern == "checker":
            wave = torch.sin(math.pi * u) * torch.sin(math.pi * v)
            return 0.5 + 0.5 * torch.tanh(4.0 * wave)
        if self.pattern == "windows":
            # Soft boxes: high where both fractional coordinates are in the middle of the cell.
            def band(x: Tensor) -> Tensor:
                return torch.sigmoid(12.0 * (math.cos(math.pi / 3.0) - torch.cos(2 * math.pi * x)))

            return band(u) * band(v)
        raise ValueError(f"Texture.pattern: unknown pattern {self.pattern!r}")


def _surface_coordinates(p: Tensor, normals: Tensor) -> tuple[Tensor, Tensor]:
    """The two local coordinates most tangent to the surface (the axis nearest the normal is dropped)."""
    dominant = normals.abs().argmax(dim=1)
    u = torch.where(dominant == 0, p[:, 1], p[:, 0])
    v = torch.where(dominant == 2, p[:, 1], p[:, 2])
    return u, v


def _hash(ix: Tensor, iy: Tensor, iz: Tensor, seed: int) -> Tensor:
    """Pseudo-random values in [0, 1] for integer lattice points (int64 arithmetic wraps)."""
    h = ix * 73856093 ^ iy * 19349663 ^ iz * 83492791 ^ (seed * 2654435761 + 12345)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.float64) / 65535.0


def value_noise(p: Tensor, seed: int = 0) -> Tensor:
    """Smooth 3D value noise in [0, 1] at points [N, 3]: lattice values, smoothstep-interpolated."""
    cell = torch.floor(p)
    frac = p - cell
    weight = frac * frac * (3.0 - 2.0 * frac)
    corner = cell.to(torch.int64)
    result = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
    for dx in (0, 1):
        wx = weight[:, 0] if dx else 1.0 - weight[:, 0]
        for dy in (0, 1):
            wy = weight[:, 1] if dy else 1.0 - weight[:, 1]
            for dz in (0, 1):
                wz = weight[:, 2] if dz else 1.0 - weight[:, 2]
                value = _hash(corner[:, 0] + dx, corner[:, 1] + dy, corner[:, 2] + dz, seed)
                result = result + wx * wy * wz * value
    return result.to(p.dtype)
