"""The feed-forward predictor: image(s) of an object -> per-pixel feature Gaussians (Splatter Image style).

A small U-Net reads each input view (RGB plus two pixel-coordinate channels) and, at every pixel,
predicts ``gaussians_per_pixel`` Gaussians in that view's camera frame:

==============  ========  ==========================================================================
quantity        channels  activation
==============  ========  ==========================================================================
depth           1         ``z = ref * (1 + depth_range * tanh(raw))`` along the pixel's ray, where
                          ``ref`` is the camera-space depth of the object centre (the world origin)
offset          3         ``ref * max_offset * tanh(raw)`` added to the ray point (camera axes)
scale           3         ``ref / fx * (0.05 + 6 * sigmoid(raw))``: 0.05 to 6 pixel footprints
rotation        4         quaternion in camera axes (normalised), turned into world axes
opacity         1         ``sigmoid``
colour          3         ``sigmoid``
feature         F         none (rendered, then decoded to the teacher's width)
==============  ========  ==========================================================================

Depth, offsets and scales are relative to ``ref``, so the prediction does not depend on the scene's
absolute scale (an object twice as large seen from twice as far gives the same image). Several input
views are fused twice: inside the network, each view's bottleneck is concatenated with the mean over
the views of its instance (as pixelNeRF pools views), and in 3D, where every view's Gaussians are
moved into the world frame with its known pose and joined into one field.

:meth:`GaussianPredictor.forward` returns a :class:`~feature_splat.field.FeatureField` per instance:
the same object the per-scene trainer produces, so it renders, decodes, saves as a PLY and answers
prompts the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from feature_splat.cameras import Cameras
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, quat_multiply, rotmat_to_quat
from feature_splat.generalizable.config import PredictorConfig

_GEOMETRY_CHANNELS = 1 + 3 + 3 + 4 + 1 + 3  # depth, offset, scale, rotation, opacity, colour


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by group norm and SiLU."""
    groups = min(8, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections and multi-view fusion at the bottleneck.

    ``forward(x, n_views)`` takes images [B * V, C, H, W] grouped by instance (V consecutive views
    per instance) and returns per-pixel features [B * V, widths[0], H, W]. H and W must be
    divisible by ``2 ** (len(widths) - 1)``.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.widths = widths
        self.down = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(_conv_block(previous, width))
            previous = width
        self.fuse = nn.Sequential(nn.Conv2d(2 * widths[-1], widths[-1], 1), nn.SiLU())
        self.up = nn.ModuleList()
        for deeper, width in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(_conv_block(deeper + width, width))

    def forward(self, x: Tensor, n_views: int) -> Tensor:
        factor = 2 ** (len(self.widths) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise InputShapeError(
                f"UNet: image size {tuple(x.shape[-2:])} must be divisible by {factor}"
            )
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = nn.functional.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        views_mean = x.unflatten(0, (-1, n_views)).mean(dim=1, keepdim=True)
        x = self.fuse(torch.cat([x, views_mean.expand(-1, n_views, -1, -1, -1).flatten(0, 1)], 1))
        for block, skip in zip(self.up, skips[-2::-1], strict=True):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x


class GaussianPredictor(nn.Module):
    """Image(s) of an object with their cameras -> a :class:`FeatureField` (per-pixel Gaussians)."""

    config_type = PredictorConfig

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        if config.feature_dim < 1 or config.teacher_dim < 1 or config.gaussians_per_pixel < 1:
            raise InputShapeError(
                "PredictorConfig: feature_dim, teacher_dim and gaussians_per_pixel must be >= 1, "
                f"got {config.feature_dim}, {config.teacher_dim}, {config.gaussians_per_pixel}"
            )
        self.config = config
        self.unet = UNet(3 + 2, config.widths)
        per_gaussian = _GEOMETRY_CHANNELS + config.feature_dim
        self.head = nn.Conv2d(config.widths[0], config.gaussians_per_pixel * per_gaussian, 1)
        self._init_head()
        self.decoder = SpeedUpDecoder(config.feature_dim, config.teacher_dim)
        self.background_feature = nn.Parameter(torch.zeros(config.feature_dim))

    def _init_head(self) -> None:
        """Start from Gaussians one pixel footprint wide, on the object-centre plane, half opaque."""
        k, per = self.config.gaussians_per_pixel, _GEOMETRY_CHANNELS + self.config.feature_dim
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            bias = self.head.bias.view(k, per)
            bias.zero_()
            bias[:, 4:7] = -1.6  # sigmoid(-1.6) * 6 + 0.05 ~ 1 pixel footprint
            bias[:, 7] = 1.0  # identity rotation
            # Spread extra Gaussians of a pixel in depth so they are not born on top of each other.
            bias[:, 0] = torch.linspace(-0.5, 0.5, k) if k > 1 else 0.0

    def forward(self, images: Tensor, cameras: list[Cameras]) -> list[FeatureField]:
        """Predict one field per instance.

        Args:
            images: [B, V, H, W, 3] RGB in [0, 1], V input views per instance.
            cameras: B :class:`Cameras` of V views each, matching the images' size.
        """
        if images.ndim != 5 or images.shape[-1] != 3:
            raise InputShapeError(
                f"GaussianPredictor: images must be [B, V, H, W, 3], got {list(images.shape)}"
            )
        b, v, h, w, _ = images.shape
        if len(cameras) != b or any(len(c) != v or (c.width, c.height) != (w, h) for c in cameras):
            raise InputShapeError(
                f"GaussianPredictor: expected {b} Cameras of {v} views at {w}x{h}, got "
                f"{[(len(c), c.width, c.height) for c in cameras]}"
            )
        x = images.flatten(0, 1).permute(0, 3, 1, 2) * 2.0 - 1.0
        rows = torch.linspace(-1.0, 1.0, h, device=x.device).view(1, 1, h, 1).expand(b * v, 1, h, w)
        cols = torch.linspace(-1.0, 1.0, w, device=x.device).view(1, 1, 1, w).expand(b * v, 1, h, w)
        raw = self.head(self.unet(torch.cat([x, cols, rows], dim=1), v))
        k = self.config.gaussians_per_pixel
        raw = raw.view(b, v, k, -1, h, w).permute(0, 1, 2, 4, 5, 3)  # [B, V, k, H, W, channels]
        return [self._field(raw[i], cameras[i]) for i in range(b)]

    def _field(self, raw: Tensor, cameras: Cameras) -> FeatureField:
        """Per-pixel parameters [V, k, H, W, channels] of one instance -> its world-frame field."""
        config = self.config
        v, _, h, w, _ = raw.shape
        viewmats = cameras.viewmats.to(raw)
        Ks = cameras.Ks.to(raw)
        ref = viewmats[:, 2, 3].view(v, 1, 1, 1, 1)  # camera-space depth of the world origin
        fx = Ks[:, 0, 0].view(v, 1, 1, 1, 1)
        depth_raw, offset_raw, scale_raw, quat_raw, opacity_raw, rgb_raw, features = raw.split(
            [1, 3, 3, 4, 1, 3, config.feature_dim], dim=-1
        )
        # Pixel-centre rays in camera space with unit z.
        cols = (torch.arange(w, dtype=raw.dtype, device=raw.device) + 0.5).view(1, 1, 1, w)
        rows = (torch.arange(h, dtype=raw.dtype, device=raw.device) + 0.5).view(1, 1, h, 1)
        ray_x = (cols - Ks[:, 0, 2].view(v, 1, 1, 1)) / Ks[:, 0, 0].view(v, 1, 1, 1)
        ray_y = (rows - Ks[:, 1, 2].view(v, 1, 1, 1)) / Ks[:, 1, 1].view(v, 1, 1, 1)
        rays = torch.stack(torch.broadcast_tensors(ray_x, ray_y, torch.ones_like(ray_x)), dim=-1)
        depth = ref * (1.0 + config.depth_range * torch.tanh(depth_raw))
        points = rays * depth + ref * config.max_offset * torch.tanh(offset_raw)  # [V, k, H, W, 3]
        rotation = viewmats[:, :3, :3]  # world -> camera
        translation = viewmats[:, :3, 3]
        means = torch.einsum("vji,vkhwj->vkhwi", rotation, points - translation.view(v, 1, 1, 1, 3))
        to_world = rotmat_to_quat(rotation.transpose(1, 2)).view(v, 1, 1, 1, 4)
        quats = quat_multiply(
            to_world.expand_as(quat_raw), torch.nn.functional.normalize(quat_raw, dim=-1)
        )
        scales = ref / fx * (0.05 + 6.0 * torch.sigmoid(scale_raw))
        gaussians = GaussianField.from_activated(
            means=means.reshape(-1, 3),
            scales=scales.reshape(-1, 3),
            opacities=torch.sigmoid(opacity_raw).reshape(-1),
            rgb=torch.sigmoid(rgb_raw).reshape(-1, 3),
            features=features.reshape(-1, config.feature_dim),
            quats=quats.reshape(-1, 4),
        )
        background = torch.cat(
            [
                torch.tensor(config.background_rgb, dtype=raw.dtype, device=raw.device),
                self.background_feature,
            ]
        )
        return FeatureField(gaussians, self.decoder, background, sh_degree=0)
