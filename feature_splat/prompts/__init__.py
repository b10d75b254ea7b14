"""Questions asked of a distilled field: text and point prompts, and lifting 2D answers to 3D."""

from feature_splat.prompts.lifting import mask_weights, select_by_masks
from feature_splat.prompts.point import point_similarity
from feature_splat.prompts.text import (
    gaussian_scores,
    relevancy,
    segment_labels,
    text_similarity,
)

__all__ = [
    "gaussian_scores",
    "mask_weights",
    "point_similarity",
    "relevancy",
    "segment_labels",
    "select_by_masks",
    "text_similarity",
]
