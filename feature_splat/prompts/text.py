"""Text prompts: how strongly each pixel, or each Gaussian, matches a phrase.

- :func:`text_similarity`: cosine between decoded rendered features and the text embedding.
- :func:`relevancy`: LERF's relevancy, the minimum over canonical negatives of
  ``softmax(10 * [sim(query), sim(negative)])[query]``, so one query works without a label set.
- :func:`segment_labels`: a label per pixel, softmax (with temperature) over a label set.
- :func:`gaussian_scores`: the same scores for each Gaussian, by decoding its own feature (exact
  for the linear decoder, which commutes with compositing); threshold them to select Gaussians.
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import ConfigError
from feature_splat.field import FeatureField
from feature_splat.options import check_choice
from feature_splat.teachers import Teacher

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
RELEVANCY_SCALE = 10.0


def negatives_for(teacher: Teacher, text: str) -> tuple[str, ...]:
    """Relevancy's negatives: the canonical ones, or for a teacher that knows only a closed set
    of labels (``label_names``: precomputed features), the labels other than ``text``."""
    labels = getattr(teacher, "label_names", None)
    if not labels:
        return CANONICAL_NEGATIVES
    others = tuple(n for n in labels if n.strip().lower() != text.strip().lower())
    if not others:
        raise ConfigError(f"--text {text!r}: relevancy needs another label to compare against")
    return others


def _text_embeddings(teacher: Teacher | None, texts: list[str]) -> Tensor:
    if teacher is None:
        raise ConfigError(
            "--text: this field was trained with --teacher none (RGB only): it has no features"
        )
    if not teacher.language_aligned:
        raise ConfigError(
            f"--text: the teacher '{teacher.name}' has no text encoder; text prompts need a "
            f"field distilled from a language-aligned teacher (clip, lseg, synthetic)"
        )
    return torch.nn.functional.normalize(teacher.encode_text(texts).float(), dim=-1)


def _cosines(decoded: Tensor, texts: Tensor) -> Tensor:
    """Cosine of features [..., M] with unit text embeddings [T, M] -> [..., T]."""
    return torch.nn.functional.normalize(decoded.float(), dim=-1) @ texts.T


def relevancy_from_cosines(cosines: Tensor) -> Tensor:
    """LERF relevancy from cosines [..., 1 + K] (query first, then K negatives) -> [...]."""
    query, negatives = cosines[..., :1], cosines[..., 1:]
    pairs = torch.stack([query.expand_as(negatives), negatives], dim=-1) * RELEVANCY_SCALE
    return pairs.softmax(dim=-1)[..., 0].min(dim=-1).values


@torch.no_grad()
def text_similarity(field: FeatureField, cameras: Cameras, teacher: Teacher, text: str) -> Tensor:
    """Cosine similarity [C, H, W] between decoded rendered features and the text's embedding."""
    texts = _text_embeddings(teacher, [text])
    return _cosines(field.decode(field.render(cameras).features), texts)[..., 0]


@torch.no_grad()
def relevancy(
    field: FeatureField,
    cameras: Cameras,
    teacher: Teacher,
    text: str,
    negatives: tuple[str, ...] | None = None,
) -> Tensor:
    """LERF relevancy [C, H, W] in (0, 1) of ``text`` against ``negatives`` (default:
    :func:`negatives_for`)."""
    negatives = negatives_for(teacher, text) if negatives is None else negatives
    texts = _text_embeddings(teacher, [text, *negatives])
    return relevancy_from_cosines(_cosines(field.decode(field.render(cameras).features), texts))


@torch.no_grad()
def segment_labels(
    field: FeatureField,
    cameras: Cameras,
    teacher: Teacher,
    labels: list[str],
    temperature: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Probabilities [C, H, W, T] (softmax of cosine / temperature) and the argmax label [C, H, W]."""
    texts = _text_embeddings(teacher, labels)
    probs = (_cosines(field.decode(field.render(cameras).features), texts) / temperature).softmax(
        -1
    )
    return probs, probs.argmax(dim=-1)


@torch.no_grad()
def gaussian_scores(
    field: FeatureField,
    teacher: Teacher,
    text: str,
    mode: str = "relevancy",
    negatives: tuple[str, ...] | None = None,
) -> Tensor:
    """Per-Gaussian score [N] for ``text``: LERF ``relevancy`` (default) or raw ``cosine`` (the score
    Feature 3DGS thresholds for its edits)."""
    check_choice(mode, "mode", ("relevancy", "cosine"))
    decoded = field.decode(field.gaussians.features)
    if mode == "cosine":
        return _cosines(decoded, _text_embeddings(teacher, [text]))[:, 0]
    negatives = negatives_for(teacher, text) if negatives is None else negatives
    return relevancy_from_cosines(_cosines(decoded, _text_embeddings(teacher, [text, *negatives])))
