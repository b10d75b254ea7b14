"""Pinhole cameras in the conventions the rasterizer uses.

A :class:`Cameras` holds ``C`` cameras that share one image size:

- ``viewmats`` [C, 4, 4]: world -> camera transforms in OpenCV axes (x right, y down, z forward);
- ``Ks`` [C, 3, 3]: pinhole intrinsics in pixels (pixel centres at integer + 0.5).

Datasets often store OpenGL / nerfstudio / Blender camera-to-world matrices instead (x right, y up,
z backward); :meth:`Cameras.from_camtoworlds` converts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from feature_splat.errors import CameraError

# Flips y and z: converts between OpenGL (y up, z backward) and OpenCV (y down, z forward) camera axes.
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class Cameras:
    """``C`` pinhole cameras sharing one image size."""

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise CameraError(
                f"Cameras.viewmats: expected [C, 4, 4], got {list(self.viewmats.shape)}"
            )
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise CameraError(
                f"Cameras.Ks: expected [{self.viewmats.shape[0]}, 3, 3] to match viewmats, "
                f"got {list(self.Ks.shape)}"
            )
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise CameraError(
                f"Cameras: width and height must be positive, got {self.width}x{self.height}"
            )

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)

    def to(self, device: torch.device | str) -> Cameras:
        """The same cameras with their tensors on ``device``."""
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    @property
    def camtoworlds(self) -> Tensor:
        """Camera -> world transforms [C, 4, 4] in OpenCV axes."""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates [C, 3]."""
        rot = self.viewmats[:, :3, :3]
        return -(rot.transpose(1, 2) @ self.viewmats[:, :3, 3:4])[..., 0]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel positions [C, N, 2] (``K @ X / z``: pixel centres at +0.5) and camera depths
        [C, N] of world points [N, 3], in the points' dtype."""
        viewmats, Ks = self.viewmats.to(points), self.Ks.to(points)
        camera = points @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]
        z = camera[..., 2]
        pixels = camera @ Ks.transpose(1, 2)
        return pixels[..., :2] / z[..., None], z

    def camtoworlds_opengl(self) -> Tensor:
        """Camera -> world transforms [C, 4, 4] in OpenGL / nerfstudio axes."""
        flip = _OPENGL_TO_OPENCV.to(self.viewmats)
        return self.camtoworlds @ flip

    @classmethod
    def from_camtoworlds(
        cls,
        camtoworlds: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        convention: Literal["opencv", "opengl"] = "opencv",
    ) -> Cameras:
        """Cameras from camera -> world matrices [C, 3, 4] or [C, 4, 4].

        ``convention="opengl"`` reads nerfstudio / Blender / OpenGL axes (y up, z backward).
        """
        c2w = camtoworlds
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.shape[1:] == (3, 4):
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)
            c2w = torch.cat([c2w, bottom.expand(c2w.shape[0], 1, 4)], dim=1)
        if c2w.shape[1:] != (4, 4):
            raise CameraError(
                f"camtoworlds: expected [C, 3, 4] or [C, 4, 4], got {list(camtoworlds.shape)}"
            )
        if convention == "opengl":
            c2w = c2w @ _OPENGL_TO_OPENCV.to(c2w)
        elif convention != "opencv":
            raise CameraError(f"convention: expected 'opencv' or 'opengl', got {convention!r}")
        if Ks.ndim == 2:
            Ks = Ks.expand(c2w.shape[0], 3, 3)
        return cls(torch.linalg.inv(c2w), Ks.to(c2w), int(width), int(height))


def intrinsics(
    fx: float, fy: float, cx: float, cy: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A pinhole intrinsics matrix [3, 3]."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def intrinsics_from_fov(fov_x_degrees: float, width: int, height: int) -> Tensor:
    """Intrinsics [3, 3] for a horizontal field of view, square pixels, centred principal point."""
    focal = 0.5 * width / math.tan(math.radians(fov_x_degrees) / 2.0)
    return intrinsics(focal, focal, width / 2.0, height / 2.0)


def look_at(eyes: Tensor, targets: Tensor, up: Tensor | None = None) -> Tensor:
    """World -> camera view matrices [C, 4, 4] (OpenCV axes) for cameras at ``eyes`` looking at ``targets``.

    ``eyes`` and ``targets`` are [C, 3] or [3]; ``up`` is the world's up direction (default +z).
    """
    eyes = torch.as_tensor(eyes, dtype=torch.float32)
    eyes = eyes[None] if eyes.ndim == 1 else eyes
    targets = torch.as_tensor(targets, dtype=eyes.dtype).expand_as(eyes)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eyes.dtype)
    up = torch.as_tensor(up, dtype=eyes.dtype).expand_as(eyes)
    forward = targets - eyes
    if bool((forward.norm(dim=-1) < 1e-9).any()):
        raise CameraError("look_at: a camera's eye coincides with its target")
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-6).any()):
        raise CameraError(
            "look_at: viewing direction is parallel to 'up'; choose another up vector"
        )
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.cross(forward, right, dim=-1)
    rot = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coordinates
    viewmats = torch.eye(4, dtype=eyes.dtype).repeat(eyes.shape[0], 1, 1)
    viewmats[:, :3, :3] = rot
    viewmats[:, :3, 3] = -(rot @ eyes[..., None])[..., 0]
    return viewmats


def orbit(
    n_views: int,
    radius: float,
    width: int,
    height: int,
    *,
    elevation_degrees: float = 20.0,
    fov_x_degrees: float = 60.0,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """``n_views`` cameras evenly spaced on a circle around ``target`` (z up), all looking at it."""
    azimuths = torch.arange(n_views, dtype=torch.float32) * (2.0 * math.pi / n_views)
    elevation = math.radians(elevation_degrees)
    center = torch.tensor(target, dtype=torch.float32)
    eyes = center + radius * torch.stack(
        [
            math.cos(elevation) * torch.cos(azimuths),
            math.cos(elevation) * torch.sin(azimuths),
            torch.full_like(azimuths, math.sin(elevation)),
        ],
        dim=-1,
    )
    viewmats = look_at(eyes, center)
    K = intrinsics_from_fov(fov_x_degrees, width, height)
    return Cameras(viewmats, K.expand(n_views, 3, 3).clone(), width, height)
