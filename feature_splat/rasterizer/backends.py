"""The rasterizer's backend names (a light module: configs import it without importing torch)."""

from __future__ import annotations

from typing import Literal

Backend = Literal["auto", "reference", "cpu", "gsplat"]
BACKENDS: tuple[str, ...] = ("reference", "cpu", "gsplat")
