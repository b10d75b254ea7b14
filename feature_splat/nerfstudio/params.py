"""Splatfacto's Gaussian parameters and feature-splat's :class:`GaussianField`, one mapping.

Splatfacto keeps ``features_dc`` [N, 3] (SH degree-0 coefficients), ``features_rest``
[N, K - 1, 3], logit ``opacities`` [N, 1], log ``scales`` and unnormalised ``quats`` (w x y z);
the method adds ``features`` [N, F]. Imports nothing from nerfstudio, so ``import-ns`` reads a
checkpoint in the main environment.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from feature_splat.gaussians import GaussianField

SPLATFACTO_PARAMS = (
    "means", "scales", "quats", "features_dc", "features_rest", "opacities", "features",
)  # fmt: skip


def splatfacto_params(gaussians: GaussianField) -> dict[str, Tensor]:
    """The field as splatfacto's parameter dict (plus ``features``)."""
    g = gaussians
    return {
        "means": g.means,
        "scales": g.log_scales,
        "quats": g.quats,
        "features_dc": g.sh0[:, 0],
        "features_rest": g.shN,
        "opacities": g.logit_opacities[:, None],
        "features": g.features,
    }


def gaussians_from_splatfacto(params: Mapping[str, Tensor]) -> GaussianField:
    """A :class:`GaussianField` viewing splatfacto's parameters (gradients flow through it)."""
    return GaussianField(
        means=params["means"],
        quats=params["quats"],
        log_scales=params["scales"],
        logit_opacities=params["opacities"][:, 0],
        sh0=params["features_dc"][:, None],
        shN=params["features_rest"],
        features=params["features"],
    )


VIEWER_GREY = (0.1490, 0.1647, 0.2157)
"""nerfstudio's viewer background: splatfacto renders over it where it trained over random ones."""


def rendered_background(kind: str, learned: Tensor) -> Tensor:
    """The background [3 + F] a trained model renders over, for its ``background_color`` setting:
    the learned one (RGB and features), or a fixed colour with the learned feature part."""
    if kind == "learned":
        return learned
    rgb = {"random": VIEWER_GREY, "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}[kind]
    return torch.cat([torch.tensor(rgb).to(learned), learned[3:]])
