"""Point prompts by feature similarity: which pixels carry what the clicked pixel carries.

A click at pixel (x, y) of a rendered view takes the decoded feature there as the query and scores
every pixel by cosine similarity to it. (Prompting SAM's decoder with rendered SAM features is the
other kind of point prompt; it needs a SAM field.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField


def similarity_to_pixel(
    features: Tensor, x: int, y: int, decoder: SpeedUpDecoder | None = None
) -> Tensor:
    """Cosine similarity [C, H, W] of decoded features to those of pixel (x, y) of view 0:
    ``features`` decoded [C, H, W, M], or rendered [C, H, W, F] with their ``decoder``."""
    height, width = features.shape[1:3]
    if not (0 <= x < width and 0 <= y < height):
        raise InputShapeError(f"point ({x}, {y}): outside the {width}x{height} image")
    if decoder is not None:
        query = torch.nn.functional.normalize(decoder(features[0, y, x]).float(), dim=-1)
        return decoder.cosines(features, query[None])[..., 0]
    unit = torch.nn.functional.normalize(features, dim=-1)
    return unit @ unit[0, y, x]


@torch.no_grad()
def point_similarity(field: FeatureField, cameras: Cameras, x: int, y: int) -> Tensor:
    """Cosine similarity [C, H, W] of each pixel's decoded feature to that of pixel (x, y) of view 0."""
    if not (0 <= x < cameras.width and 0 <= y < cameras.height):
        raise InputShapeError(
            f"point ({x}, {y}): outside the {cameras.width}x{cameras.height} image"
        )
    return similarity_to_pixel(field.render(cameras).features, x, y, field.decoder)
