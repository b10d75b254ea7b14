"""A short distillation from lifted features, with the geometry fixed: the features, the decoder
and nothing else are optimised, by the loss training uses (:func:`distillation_loss`)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from rich.progress import track
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.field import FeatureField
from feature_splat.rasterizer import rasterize
from feature_splat.rasterizer.backends import Backend
from feature_splat.training.config import LearningRates
from feature_splat.training.losses import distillation_loss


def refine_features(
    field: FeatureField,
    cameras: Cameras,
    teacher_maps: Tensor,
    stride: int | None,
    iterations: int,
    *,
    loss: str = "l1",
    rates: LearningRates | None = None,
    seed: int = 0,
    backend: Backend = "auto",
) -> tuple[FeatureField, list[float]]:
    """``field`` after ``iterations`` steps of Adam on its features and decoder against
    ``teacher_maps`` [V, h, w, M] (one per camera, visited in seeded random order); returns the
    new field and the loss of each step."""
    rates = rates or LearningRates()
    g = field.gaussians.detach()
    features = torch.nn.Parameter(g.features.clone())
    decoder = copy.deepcopy(field.decoder)
    optimizer = torch.optim.Adam(
        [{"params": [features], "lr": rates.features},
         {"params": decoder.parameters(), "lr": rates.decoder}],
        eps=1e-15,
    )  # fmt: skip
    background = field.background[3:].detach()
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    for _ in track(range(iterations), description="refining", transient=True):
        if not order:
            order = torch.randperm(len(cameras), generator=generator).tolist()
        view = order.pop()
        camera = cameras[view]
        out = rasterize(
            g.means, g.quats, g.scales, g.opacities, features, camera.viewmats.to(g.means),
            camera.Ks.to(g.means), camera.width, camera.height, near_plane=field.near_plane,
            backgrounds=background, backend=backend,
        )  # fmt: skip
        step_loss = distillation_loss(out.features[0], teacher_maps[view], decoder, stride, loss)
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.item())
    refined = replace(field, gaussians=g.with_features(features.detach()), decoder=decoder)
    return refined, losses
