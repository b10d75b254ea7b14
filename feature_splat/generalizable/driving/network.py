"""The driving predictor: one frame of a car's camera ring -> a feature field (DistillNeRF's setting).

The U-Net of the object model reads each camera's image (RGB plus pixel coordinates); its
bottleneck is fused across the frame's cameras (each camera's code joined with the ring's mean), and
a 1x1 head predicts, at every pixel, one Gaussian along that pixel's ray:

==============  ============  ==================================================================
quantity        channels      use
==============  ============  ==================================================================
depth logits    D             stage one: a distribution over D bins of the parameterised range
depth refine    D             stage two: where in the chosen (most probable) bin, ``sigmoid``
offset          3             ``depth * max_offset * tanh(raw)`` added to the ray point
scale           3             ``depth / fx * (0.05 + 6 * sigmoid(raw))``: pixel footprints
rotation        4             quaternion in camera axes (normalised), turned into world axes
opacity         1             ``sigmoid``
colour          3             ``sigmoid``
feature         F             rendered, then decoded to the teacher's width by a linear decoder
==============  ============  ==================================================================

The depth range is unbounded in effect (:class:`DepthBins`): bins are uniform in depth up to
``linear_depth`` and uniform in inverse depth beyond it, up to ``far``, where rays that hit nothing
(sky) belong. Stage one picks a bin, stage two refines the depth inside it, so a few dozen bins give
centimetre steps near the car and still reach the horizon: DistillNeRF's two-stage lifting, with one
Gaussian per pixel at the refined depth.

Fusion in 3D: every camera's Gaussians move to the world frame with its known pose and join one
:class:`~feature_splat.field.FeatureField`, which renders RGB, depth and features at any camera.
Gaussians are ordered by camera, row and column, so Gaussian ``(v * H + y) * W + x`` is pixel (x, y)
of camera v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.worlds import SKY_COLOR
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, quat_multiply, rotmat_to_quat
from feature_splat.generalizable.driving.config import DrivingModelConfig
from feature_splat.generalizable.network import UNet

_GEOMETRY_CHANNELS = 3 + 3 + 4 + 1 + 3  # offset, scale, rotation, opacity, colour


class DepthBins:
    """Depth bins uniform in ``s(z) = z / L`` below ``L = linear_depth`` and ``2 - L / z`` above
    it (mip-NeRF 360's contraction), from ``near`` to ``far``."""

    def __init__(self, near: float, linear_depth: float, far: float, count: int) -> None:
        self.linear_depth, self.count = linear_depth, count
        contract = lambda z: z / linear_depth if z <= linear_depth else 2.0 - linear_depth / z  # noqa: E731
        self.low, self.high = contract(near), contract(far)
        self.width = (self.high - self.low) / count

    def contract(self, depth: Tensor) -> Tensor:
        """``s(z)``: depth (metres; inf allowed) -> the parameterised coordinate in [0, 2]."""
        scaled = depth / self.linear_depth
        return torch.where(scaled <= 1.0, scaled, 2.0 - 1.0 / scaled.clamp_min(1.0))

    def expand(self, s: Tensor) -> Tensor:
        """The inverse of :meth:`contract`."""
        return self.linear_depth * torch.where(s <= 1.0, s, 1.0 / (2.0 - s).clamp_min(1e-6))

    def bin_of(self, depth: Tensor) -> Tensor:
        """The bin (int64) that holds each depth; beyond the range, the first or last bin."""
        index = torch.floor((self.contract(depth) - self.low) / self.width)
        return index.clamp(0, self.count - 1).long()

    def depth_in_bin(self, bins: Tensor, fraction: Tensor) -> Tensor:
        """Depth at ``fraction`` (0..1) of the way through each bin."""
        return self.expand(self.low + (bins.to(fraction) + fraction) * self.width)


@dataclass
class DrivingPrediction:
    """What the predictor makes of one frame."""

    field: FeatureField
    depth_logits: Tensor  # [V, H, W, D]: stage one's bin scores per input pixel
    depth: Tensor  # [V, H, W]: the refined depth of each pixel's Gaussian (camera z, metres)


class DrivingPredictor(nn.Module):
    """The images of one frame's camera ring and their cameras -> a :class:`DrivingPrediction`."""

    config_type = DrivingModelConfig

    def __init__(self, config: DrivingModelConfig) -> None:
        super().__init__()
        self.config = config
        self.bins = DepthBins(config.near, config.linear_depth, config.far, config.depth_bins)
        self.unet = UNet(3 + 2, config.widths)
        per_pixel = 2 * config.depth_bins + _GEOMETRY_CHANNELS + config.feature_dim
        self.head = nn.Conv2d(config.widths[0], per_pixel, 1)
        with torch.no_grad():  # one pixel footprint wide, identity rotation
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            geometry = 2 * config.depth_bins
            self.head.bias[geometry + 3 : geometry + 6] = -1.6
            self.head.bias[geometry + 6] = 1.0
        self.decoder = SpeedUpDecoder(config.feature_dim, config.teacher_dim)
        self.background = nn.Parameter(
            torch.cat([torch.tensor(SKY_COLOR), torch.zeros(config.feature_dim)])
        )

    def encode(self, images: Tensor) -> Tensor:
        """The encoder: images [V, H, W, 3] of one frame -> per-pixel head outputs [V, H, W, C]."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputShapeError(
                f"DrivingPredictor: images must be [V, H, W, 3], got {list(images.shape)}"
            )
        v, h, w, _ = images.shape
        x = images.permute(0, 3, 1, 2) * 2.0 - 1.0
        rows = torch.linspace(-1.0, 1.0, h, device=x.device).view(1, 1, h, 1).expand(v, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, device=x.device).view(1, 1, 1, w).expand(v, 1, h, w)
        return self.head(self.unet(torch.cat([x, cols, rows], dim=1), v)).permute(0, 2, 3, 1)

    def lift(self, raw: Tensor, cameras: Cameras) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Lifting: head outputs [V, H, W, C] -> camera-frame Gaussian parameters, the depth
        logits [V, H, W, D] and the refined depths [V, H, W]."""
        config = self.config
        v, h, w, _ = raw.shape
        if len(cameras) != v or (cameras.width, cameras.height) != (w, h):
            raise InputShapeError(
                f"DrivingPredictor: expected {v} cameras at {w}x{h}, got {len(cameras)} at "
                f"{cameras.width}x{cameras.height}"
            )
        d = config.depth_bins
        logits, refine, offset, scale, quat, opacity, rgb, features = raw.split(
            [d, d, 3, 3, 4, 1, 3, config.feature_dim], dim=-1
        )
        chosen = logits.argmax(dim=-1, keepdim=True)
        fraction = torch.sigmoid(refine.gather(-1, chosen))
        depth = self.bins.depth_in_bin(chosen, fraction)  # [V, H, W, 1]
        Ks = cameras.Ks.to(raw)
        cols = (torch.arange(w, dtype=raw.dtype, device=raw.device) + 0.5).view(1, 1, w)
        rows = (torch.arange(h, dtype=raw.dtype, device=raw.device) + 0.5).view(1, h, 1)
        ray_x = (cols - Ks[:, 0, 2].view(v, 1, 1)) / Ks[:, 0, 0].view(v, 1, 1)
        ray_y = (rows - Ks[:, 1, 2].view(v, 1, 1)) / Ks[:, 1, 1].view(v, 1, 1)
        rays = torch.stack(torch.broadcast_tensors(ray_x, ray_y, torch.ones_like(ray_x)), -1)
        points = rays * depth + depth * config.max_offset * torch.tanh(offset)
        gaussians = {
            "points": points,  # camera frame
            "quats": torch.nn.functional.normalize(quat, dim=-1),  # camera axes
            "scales": depth / Ks[:, 0, 0].view(v, 1, 1, 1) * (0.05 + 6.0 * torch.sigmoid(scale)),
            "opacities": torch.sigmoid(opacity[..., 0]),
            "rgb": torch.sigmoid(rgb),
            "features": features,
        }
        return gaussians, logits, depth[..., 0]

    def fuse(self, gaussians: dict[str, Tensor], cameras: Cameras) -> FeatureField:
        """Fusion: every camera's Gaussians into the world frame, joined in one field."""
        viewmats = cameras.viewmats.to(gaussians["points"])
        rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]  # world -> camera
        v = len(cameras)
        means = torch.einsum(
            "vji,vhwj->vhwi", rotation, gaussians["points"] - translation.view(v, 1, 1, 3)
        )
        to_world = rotmat_to_quat(rotation.transpose(1, 2)).view(v, 1, 1, 4)
        quats = quat_multiply(to_world.expand_as(gaussians["quats"]), gaussians["quats"])
        field = GaussianField.from_activated(
            means=means.reshape(-1, 3),
            scales=gaussians["scales"].reshape(-1, 3),
            opacities=gaussians["opacities"].reshape(-1),
            rgb=gaussians["rgb"].reshape(-1, 3),
            features=gaussians["features"].reshape(-1, self.config.feature_dim),
            quats=quats.reshape(-1, 4),
        )
        return FeatureField(field, self.decoder, self.background, sh_degree=0)

    def forward(self, images: Tensor, cameras: Cameras) -> DrivingPrediction:
        """Predict the field of one frame: images [V, H, W, 3] in [0, 1] from ``cameras``."""
        gaussians, logits, depth = self.lift(self.encode(images), cameras)
        return DrivingPrediction(self.fuse(gaussians, cameras), logits, depth)
