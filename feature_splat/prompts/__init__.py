"""Questions asked of a distilled field: text and point prompts."""

from feature_splat.prompts.point import point_similarity
from feature_splat.prompts.text import text_similarity

__all__ = ["point_similarity", "text_similarity"]
