"""What the viewer shows: one rendered frame of a field in one of the view modes.

Every mode is one rasterizer pass plus what the prompts and visualisation packages already do
with it; nothing here renders or scores on its own.

- ``rgb``, ``depth`` (inverse depth, near = bright), ``alpha``;
- ``pca``: the rendered features through a PCA colour map fixed per field (no flicker);
- ``relevancy``: a text prompt's relevancy (or cosine) as a heat map over RGB;
- ``labels``: label-set segmentation over user-typed labels;
- ``selection``: the current 3D selection (its share of each pixel) highlighted over RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import ConfigError
from feature_splat.field import FeatureField
from feature_splat.prompts.text import (
    CANONICAL_NEGATIVES,
    cosine_scores,
    label_probabilities,
    relevancy_scores,
)
from feature_splat.teachers import Teacher
from feature_splat.visualize import PcaColours, depth_rgb, heat_rgb, label_rgb, overlay_rgb

Mode = Literal["rgb", "depth", "alpha", "pca", "relevancy", "labels", "selection"]
MODES: tuple[Mode, ...] = ("rgb", "depth", "alpha", "pca", "relevancy", "labels", "selection")
FEATURE_MODES = ("pca", "relevancy", "labels")
TEXT_MODES = ("relevancy", "labels")
SELECTION_COLOUR = (1.0, 0.35, 0.1)
EMPTY_DEPTH = 1e3
"""Depth sent for pixels nothing covers (viser clips depth at about 168 scene units)."""


@dataclass
class TextPrompt:
    """A client's text prompt: the positive text, relevancy's negatives, the score and its
    threshold (for the 3D selection), and the labels of label-set segmentation."""

    text: str = ""
    negatives: tuple[str, ...] = CANONICAL_NEGATIVES
    score: Literal["relevancy", "cosine"] = "relevancy"
    threshold: float = 0.5
    labels: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Frame:
    """A rendered frame: ``image`` [H, W, 3] uint8 and camera ``depth`` [H, W] float32."""

    image: np.ndarray
    depth: np.ndarray


def available_modes(field: FeatureField, teacher: Teacher | None) -> tuple[Mode, ...]:
    """The modes a field can show: feature modes need feature channels, text modes a
    language-aligned teacher."""
    has_features = field.gaussians.feature_dim > 0
    has_text = has_features and teacher is not None and teacher.language_aligned
    return tuple(
        m
        for m in MODES
        if (m not in FEATURE_MODES or has_features) and (m not in TEXT_MODES or has_text)
    )


def _text_map(
    features: Tensor, field: FeatureField, teacher: Teacher, prompt: TextPrompt
) -> Tensor:
    if prompt.score == "cosine":
        return cosine_scores(features, teacher, prompt.text, field.decoder)
    return relevancy_scores(features, teacher, prompt.text, prompt.negatives, field.decoder)


def _heat_over(rgb: Tensor, scores: Tensor, floor: float) -> Tensor:
    """A heat map of ``scores`` [H, W] over ``rgb``: from ``floor`` (relevancy: chance, 0.5) to 1,
    opaque where high and fading to the plain image at the floor."""
    weight = ((scores - floor) / (1.0 - floor)).clamp(0, 1)[..., None]
    return rgb * (1 - 0.8 * weight) + heat_rgb(scores, floor, 1.0) * 0.8 * weight


@torch.no_grad()
def render_frame(
    field: FeatureField,
    camera: Cameras,
    mode: Mode,
    *,
    teacher: Teacher | None = None,
    prompt: TextPrompt | None = None,
    selection: Tensor | None = None,
    pca: PcaColours | None = None,
) -> Frame:
    """One frame of ``field`` seen by ``camera`` (one camera) in ``mode``.

    ``teacher`` and ``prompt`` serve the text modes, ``selection`` (bool [N]) the selection
    mode, ``pca`` the PCA mode (default: fitted to the field's Gaussians). The field is
    rendered without the rasterizer's value checks: its owner checks it once
    (:meth:`FeatureField.check_values`), as the viewer session does.
    """
    n = len(field.gaussians)
    if mode == "selection":
        chosen = selection if selection is not None else torch.zeros(n, dtype=torch.bool)
        render = field.render(camera, channels=chosen.float()[:, None], validate=False)
    elif mode in FEATURE_MODES:
        render = field.render(camera, validate=False)
    else:  # colour only: compositing no feature channels is about twice as fast
        render = field.render(
            camera, channels=field.gaussians.means.new_zeros(n, 0), validate=False
        )
    rgb = render.rgb[0].clamp(0, 1).cpu()
    alpha = render.alpha[0].cpu()
    if mode == "rgb":
        image = rgb
    elif mode == "depth":
        image = depth_rgb(render.depth[0].cpu(), alpha)
    elif mode == "alpha":
        image = alpha.expand(-1, -1, 3)
    elif mode == "selection":
        image = overlay_rgb(rgb, render.features[0, ..., 0].cpu() > 0.5, SELECTION_COLOUR)
    elif mode == "pca":
        features = render.features[0].cpu()
        if features.shape[-1] == 0:
            raise ConfigError("view mode pca: this field has no feature channels (RGB only)")
        image = (pca or PcaColours.fit(field.gaussians.features))(features)
    else:
        if teacher is None or prompt is None:
            raise ConfigError(f"view mode {mode}: needs a language-aligned teacher and a prompt")
        features = render.features[0]
        if mode == "relevancy":
            if not prompt.text:
                image = rgb
            else:
                scores = _text_map(features, field, teacher, prompt).cpu()
                image = _heat_over(rgb, scores, 0.5 if prompt.score == "relevancy" else 0.0)
        else:
            if not prompt.labels:
                image = rgb
            else:
                probs = label_probabilities(
                    features, teacher, list(prompt.labels), decoder=field.decoder
                )
                image = 0.3 * rgb + 0.7 * label_rgb(probs.argmax(-1).cpu())
    depth = torch.where(alpha[..., 0] > 0.5, render.depth[0, ..., 0].cpu(), EMPTY_DEPTH)
    pixels = (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    return Frame(np.ascontiguousarray(pixels), depth.float().numpy())
