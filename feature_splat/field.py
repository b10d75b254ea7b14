"""A distilled feature field: Gaussians, the speed-up decoder and the background, rendered together."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.gaussians import GaussianField, quat_to_rotmat
from feature_splat.io import read_ply, write_ply
from feature_splat.io.checkpoints import read_checkpoint, write_checkpoint
from feature_splat.rasterizer import check_values, rasterize
from feature_splat.rasterizer.backends import Backend

PLY_NAME = "point_cloud.ply"
DECODER_NAME = "decoder.pt"


def is_field_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a saved field (:meth:`FeatureField.save`'s two files)."""
    return (folder / PLY_NAME).is_file() and (folder / DECODER_NAME).is_file()


@dataclass
class FieldRender:
    """One render of a feature field for C cameras."""

    rgb: Tensor  # [C, H, W, 3]
    features: Tensor  # [C, H, W, F] (low-dimensional, before decoding)
    depth: Tensor  # [C, H, W, 1]
    alpha: Tensor  # [C, H, W, 1]
    meta: dict


@dataclass
class FeatureField:
    """Gaussians with F-channel features, an F -> M decoder and a background (RGB + F features)."""

    gaussians: GaussianField
    decoder: SpeedUpDecoder
    background: Tensor  # [3 + F]
    sh_degree: int
    near_plane: float = 0.01
    """Gaussians closer to the camera (camera-space depth, scene units) are not rendered."""
    unseen: Tensor | None = None
    """[N] bool, or None: Gaussians whose features rest on too little evidence (lifting flags
    those the training views barely see); they render, but selections leave them out."""

    def __post_init__(self) -> None:
        if self.unseen is not None and (
            self.unseen.dtype != torch.bool or self.unseen.shape != (len(self.gaussians),)
        ):
            raise InputShapeError(
                f"unseen: expected a bool mask [{len(self.gaussians)}], got "
                f"{self.unseen.dtype} {list(self.unseen.shape)}"
            )

    def selectable(self) -> Tensor:
        """[N] bool: the Gaussians selections may include (all but the ``unseen``)."""
        if self.unseen is None:
            return torch.ones(len(self.gaussians), dtype=torch.bool)
        return ~self.unseen

    def subset(self, keep: Tensor) -> FeatureField:
        """The field with only the Gaussians ``keep`` (a bool mask or indices) selects."""
        unseen = None if self.unseen is None else self.unseen[keep]
        return replace(self, gaussians=self.gaussians[keep], unseen=unseen)

    def render(
        self,
        cameras: Cameras,
        backend: Backend = "auto",
        sh_degree: int | None = None,
        channels: Tensor | None = None,
        validate: bool = True,
    ) -> FieldRender:
        """Render RGB and features in one rasterizer pass.

        ``channels`` [N, K], when given, are rendered in place of the features (over a zero
        background): per-Gaussian values such as a selection indicator, composited like colour.
        ``validate=False`` skips the rasterizer's value checks, for callers that render the
        same field many times and ran :meth:`check_values` once (the trainer, the viewer).
        """
        g = self.gaussians
        degree = self.sh_degree if sh_degree is None else sh_degree
        colors = g.colors(cameras.centers.to(g.means), degree=degree)  # [C, N, 3]
        background = self.background
        if channels is not None:
            if channels.ndim != 2 or channels.shape[0] != len(g):
                raise InputShapeError(
                    f"channels: expected [{len(g)}, K], got {list(channels.shape)}"
                )
            background = torch.cat([background[:3], background.new_zeros(channels.shape[1])])
        features = (g.features if channels is None else channels.to(g.means))[None]
        features = features.expand(len(cameras), -1, -1)
        out = rasterize(
            g.means, g.quats, g.scales, g.opacities, torch.cat([colors, features], dim=-1),
            cameras.viewmats.to(g.means), cameras.Ks.to(g.means), cameras.width, cameras.height,
            near_plane=self.near_plane, backgrounds=background, backend=backend,
            validate=validate,
        )  # fmt: skip
        # split, not two slices: its backward writes one gradient, not two zero-filled ones
        rgb, features = out.features.split([3, out.features.shape[-1] - 3], dim=-1)
        return FieldRender(rgb, features, out.depth, out.alpha, out.meta)

    def check_values(self, cameras: Cameras | None = None) -> None:
        """The rasterizer's value checks on this field (and ``cameras``, when given), once:
        finite parameters, valid scales, opacities and quaternions, rigid cameras."""
        g = self.gaussians
        check_values(
            g.means, g.quats, g.scales, g.opacities,
            None if cameras is None else cameras.viewmats.to(g.means),
            None if cameras is None else cameras.Ks.to(g.means),
            g.features, self.background,
        )  # fmt: skip

    def features_at(self, points: Tensor, neighbours: int = 16, chunk: int = 2048) -> Tensor:
        """Features [Q, F] at arbitrary 3D points [Q, 3], interpolated from nearby Gaussians.

        Each point takes a softmax-weighted mean of the features of its ``neighbours`` nearest
        Gaussian centres, with weights ``opacity * exp(-d^2 / 2)`` (``d``: Mahalanobis distance
        under the Gaussian's covariance). The softmax normalises the weights, so a point far from
        every Gaussian still takes its most likely neighbour's feature instead of nothing.
        """
        g = self.gaussians
        if points.ndim != 2 or points.shape[1] != 3:
            raise InputShapeError(f"features_at: points must be [Q, 3], got {list(points.shape)}")
        k = min(neighbours, len(g))
        rotations = quat_to_rotmat(g.quats)  # local -> world
        inverse_scales = 1.0 / g.scales
        log_opacity = torch.log(g.opacities.clamp_min(1e-8))
        out = []
        for start in range(0, points.shape[0], chunk):
            query = points[start : start + chunk].to(g.means)
            nearest = torch.cdist(query, g.means).topk(k, dim=1, largest=False).indices  # [q, k]
            delta = query[:, None, :] - g.means[nearest]
            local = torch.einsum("qkji,qkj->qki", rotations[nearest], delta)
            mahalanobis = (local * inverse_scales[nearest]).square().sum(-1)
            weights = torch.softmax(log_opacity[nearest] - 0.5 * mahalanobis, dim=1)
            out.append((weights[..., None] * g.features[nearest]).sum(1))
        return torch.cat(out) if out else g.features.new_zeros(0, g.feature_dim)

    def snapshot(self) -> FeatureField:
        """An independent copy (tensors cloned, decoder copied), safe to read from another
        thread while this field keeps training."""
        g = self.gaussians
        gaussians = GaussianField(
            **{f.name: getattr(g, f.name).detach().clone() for f in fields(g)}
        )
        return replace(
            self,
            gaussians=gaussians,
            decoder=copy.deepcopy(self.decoder),
            background=self.background.detach().clone(),
            unseen=None if self.unseen is None else self.unseen.clone(),
        )

    def decode(self, features: Tensor) -> Tensor:
        """Teacher-width features [..., M] from rendered or per-Gaussian features [..., F]."""
        return self.decoder(features)

    def save(self, run_dir: str | Path) -> None:
        """Write ``point_cloud.ply`` and ``decoder.pt`` into ``run_dir`` (atomically)."""
        run_dir = Path(run_dir)
        write_ply(run_dir / PLY_NAME, self.gaussians)
        saved = {
            "decoder_config": self.decoder.config(),
            "decoder_state": self.decoder.state_dict(),
            "background": self.background.detach().cpu(),
            "sh_degree": self.sh_degree,
            "near_plane": self.near_plane,
        }
        if self.unseen is not None:
            saved["unseen"] = self.unseen.cpu()
        write_checkpoint(run_dir / DECODER_NAME, saved)

    @classmethod
    def load(cls, run_dir: str | Path) -> FeatureField:
        """Read a field written by :meth:`save`; checks that the PLY and the decoder agree."""
        run_dir = Path(run_dir)
        gaussians = read_ply(run_dir / PLY_NAME)
        path = run_dir / DECODER_NAME
        saved = read_checkpoint(path, "decoder file")
        if not isinstance(saved, dict) or not {"decoder_config", "decoder_state"} <= set(saved):
            raise CheckpointError(f"{path}: expected decoder_config and decoder_state entries")
        decoder = SpeedUpDecoder.from_state(
            saved["decoder_config"], saved["decoder_state"], str(path)
        )
        background, sh_degree = saved.get("background"), saved.get("sh_degree")
        if decoder.in_dim != gaussians.feature_dim:
            raise CheckpointError(
                f"{path}: decoder expects {decoder.in_dim} feature channels but {run_dir / PLY_NAME} "
                f"has {gaussians.feature_dim} (f_feat_*)"
            )
        if not isinstance(background, Tensor) or background.shape != (3 + gaussians.feature_dim,):
            raise CheckpointError(
                f"{path}: background: expected {3 + gaussians.feature_dim} values (RGB + features)"
            )
        if not bool(torch.isfinite(background).all()):
            raise CheckpointError(f"{path}: background holds NaN or infinite values")
        if not isinstance(sh_degree, int) or not 0 <= sh_degree <= gaussians.sh_degree:
            raise CheckpointError(
                f"{path}: sh_degree: expected 0..{gaussians.sh_degree} (the PLY's), got {sh_degree!r}"
            )
        near_plane = saved.get("near_plane", 0.01)  # fields from before the near plane was stored
        if not isinstance(near_plane, float) or not 0 < near_plane < 1e10:
            raise CheckpointError(
                f"{path}: near_plane: expected a positive distance, got {near_plane!r}"
            )
        unseen = saved.get("unseen")
        if unseen is not None and (
            not isinstance(unseen, Tensor)
            or unseen.dtype != torch.bool
            or unseen.shape != (len(gaussians),)
        ):
            raise CheckpointError(
                f"{path}: unseen: expected a bool mask of {len(gaussians)} Gaussians (the PLY's)"
            )
        return cls(gaussians, decoder, background.float(), sh_degree, near_plane, unseen)
