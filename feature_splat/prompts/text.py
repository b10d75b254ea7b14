"""Text prompts: how strongly each pixel of a rendered view matches a phrase."""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.field import FeatureField
from feature_splat.teachers import Teacher


@torch.no_grad()
def text_similarity(field: FeatureField, cameras: Cameras, teacher: Teacher, text: str) -> Tensor:
    """Cosine similarity [C, H, W] between decoded rendered features and the text's embedding."""
    if not teacher.language_aligned:
        raise NotImplementedError(f"teacher '{teacher.name}' has no text encoder")
    query = torch.nn.functional.normalize(teacher.encode_text([text])[0].float(), dim=0)
    decoded = field.decode(field.render(cameras).features)
    return torch.nn.functional.normalize(decoded, dim=-1) @ query
