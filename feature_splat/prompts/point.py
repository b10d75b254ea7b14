"""Point prompts by feature similarity: which pixels carry what the clicked pixel carries.

A click at pixel (x, y) of a rendered view takes the decoded feature there as the query and scores
every pixel by cosine similarity to it. (Prompting SAM's decoder with rendered SAM features is the
other kind of point prompt; it needs a SAM field.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField


@torch.no_grad()
def point_similarity(field: FeatureField, cameras: Cameras, x: int, y: int) -> Tensor:
    """Cosine similarity [C, H, W] of each pixel's decoded feature to that of pixel (x, y) of view 0."""
    if not (0 <= x < cameras.width and 0 <= y < cameras.height):
        raise InputShapeError(
            f"point ({x}, {y}): outside the {cameras.width}x{cameras.height} image"
        )
    decoded = torch.nn.functional.normalize(field.decode(field.render(cameras).features), dim=-1)
    return decoded @ decoded[0, y, x]
