"""Questions asked of a distilled field: text (and, later, point and box) prompts."""

from feature_splat.prompts.text import text_similarity

__all__ = ["text_similarity"]
