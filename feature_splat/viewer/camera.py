"""Viewer cameras: a browser's camera (viser's position, orientation and field of view) as the
rasterizer's :class:`~feature_splat.cameras.Cameras`, and dataset views as browser poses.

viser reports a client's camera as a position and a ``wxyz`` quaternion of the camera -> world
rotation in OpenCV axes (x right, y down, z forward), which is also the rasterizer's convention,
with a vertical field of view and the canvas aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import viser.transforms as vtf

from feature_splat.cameras import Cameras


@dataclass(frozen=True)
class ViewPose:
    """Where a browser camera is: position [3], ``wxyz`` (camera -> world, OpenCV axes), the
    vertical field of view in radians and the point it orbits (``look_at``)."""

    position: tuple[float, float, float]
    wxyz: tuple[float, float, float, float]
    fov: float
    look_at: tuple[float, float, float]


def frame_size(aspect: float, long_side: int) -> tuple[int, int]:
    """(width, height) in pixels of a frame of ``aspect`` (width / height) whose longer side has
    ``long_side`` pixels."""
    if aspect >= 1.0:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def browser_camera(
    position: np.ndarray, wxyz: np.ndarray, fov: float, width: int, height: int
) -> Cameras:
    """One camera at a browser's pose, rendering ``width`` x ``height`` pixels with the vertical
    field of view ``fov`` (radians)."""
    camtoworld = np.eye(4)
    camtoworld[:3, :3] = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()
    camtoworld[:3, 3] = position
    focal = 0.5 * height / math.tan(0.5 * fov)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    viewmat = torch.from_numpy(np.linalg.inv(camtoworld)).float()
    return Cameras(viewmat[None], K[None], width, height)


def dataset_pose(cameras: Cameras, index: int, focus: torch.Tensor) -> ViewPose:
    """The browser pose of dataset view ``index``: its position, orientation and vertical field
    of view, orbiting the point on its optical axis nearest to ``focus`` [3]."""
    camtoworld = cameras.camtoworlds[index].double().numpy()
    rotation, position = camtoworld[:3, :3], camtoworld[:3, 3]
    forward = rotation[:, 2]
    depth = max(float((focus.double().numpy() - position) @ forward), 1e-3)
    fy = float(cameras.Ks[index, 1, 1])
    fov = 2.0 * math.atan(0.5 * cameras.height / fy)
    wxyz = vtf.SO3.from_matrix(rotation).wxyz
    return ViewPose(
        tuple(position.tolist()),
        tuple(wxyz.tolist()),
        fov,
        tuple((position + depth * forward).tolist()),
    )


def overview_pose(means: torch.Tensor, fov: float = math.radians(50.0)) -> ViewPose:
    """A pose that sees most of a field with no dataset cameras: looking at the median of the
    Gaussians' centres from above one side (z up), far enough for 90 % of them to fit in view."""
    centres = means.detach().double().cpu()
    focus = centres.median(dim=0).values
    reach = float(torch.quantile((centres - focus).norm(dim=1), 0.9)) if len(centres) else 1.0
    distance = max(reach, 1e-3) / math.sin(0.5 * fov)
    direction = np.array([1.0, -1.0, 0.8]) / np.linalg.norm([1.0, -1.0, 0.8])
    target = focus.numpy()
    position = target + distance * direction
    forward = -direction
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    wxyz = vtf.SO3.from_matrix(np.stack([right, down, forward], axis=1)).wxyz
    return ViewPose(tuple(position.tolist()), tuple(wxyz.tolist()), fov, tuple(target.tolist()))


def world_up(cameras: Cameras) -> np.ndarray:
    """The mean "up" of the dataset's cameras (minus their y axes), as a unit vector [3]."""
    up = -cameras.camtoworlds[:, :3, 1].double().mean(0).numpy()
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
