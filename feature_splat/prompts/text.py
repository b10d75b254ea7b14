"""Text prompts: how strongly each pixel, or each Gaussian, matches a phrase.

- :func:`text_similarity`: cosine between decoded rendered features and the text embedding.
- :func:`relevancy`: LERF's relevancy, the minimum over canonical negatives of
  ``softmax(10 * [sim(query), sim(negative)])[query]``, so one query works without a label set.
- :func:`segment_labels`: a label per pixel, softmax (with temperature) over a label set.
- :func:`gaussian_scores`: the same scores for each Gaussian, by decoding its own feature (exact
  for the linear decoder, which commutes with compositing); threshold them to select Gaussians.

Each has a form on features already rendered (:func:`cosine_scores`, :func:`relevancy_scores`,
:func:`label_probabilities`), for callers that render once and ask several questions (the
viewer); given the decoder, a linear one never decodes to the teacher's width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import ConfigError
from feature_splat.field import FeatureField
from feature_splat.options import check_choice
from feature_splat.teachers import Teacher

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
RELEVANCY_SCALE = 10.0
UNCALIBRATED_THRESHOLD = 0.5  # a selection's default where the teacher's score scale is unknown


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


def _cosines(features: Tensor, texts: Tensor, decoder: SpeedUpDecoder | None = None) -> Tensor:
    """Cosine of decoded features with unit text embeddings [T, M] -> [..., T]: ``features`` are
    decoded [..., M], or with ``decoder`` low-dimensional [..., F] (see
    :meth:`SpeedUpDecoder.cosines`: no decoding for a linear decoder)."""
    if decoder is not None:
        return decoder.cosines(features, texts)
    return torch.nn.functional.normalize(features.float(), dim=-1) @ texts.T


def relevancy_from_cosines(cosines: Tensor) -> Tensor:
    """LERF relevancy from cosines [..., 1 + K] (query first, then K negatives) -> [...]."""
    query, negatives = cosines[..., :1], cosines[..., 1:]
    pairs = torch.stack([query.expand_as(negatives), negatives], dim=-1) * RELEVANCY_SCALE
    return pairs.softmax(dim=-1)[..., 0].min(dim=-1).values


def cosine_scores(
    features: Tensor, teacher: Teacher, text: str, decoder: SpeedUpDecoder | None = None
) -> Tensor:
    """Cosine [...] of features (rendered pixels or Gaussians) with ``text``: decoded [..., M],
    or [..., F] with their ``decoder``."""
    return _cosines(features, _text_embeddings(teacher, [text]), decoder)[..., 0]


def relevancy_scores(
    features: Tensor,
    teacher: Teacher,
    text: str,
    negatives: tuple[str, ...] | None = None,
    decoder: SpeedUpDecoder | None = None,
) -> Tensor:
    """LERF relevancy [...] in (0, 1) of features (as for :func:`cosine_scores`) for ``text``
    against ``negatives`` (default: :func:`negatives_for`)."""
    negatives = negatives_for(teacher, text) if negatives is None else negatives
    texts = _text_embeddings(teacher, [text, *negatives])
    return relevancy_from_cosines(_cosines(features, texts, decoder))


def label_probabilities(
    features: Tensor,
    teacher: Teacher,
    labels: list[str],
    temperature: float = 0.1,
    decoder: SpeedUpDecoder | None = None,
) -> Tensor:
    """Probabilities [..., T] over ``labels`` (softmax of cosine / temperature) of features (as
    for :func:`cosine_scores`)."""
    cosines = _cosines(features, _text_embeddings(teacher, labels), decoder)
    return (cosines / temperature).softmax(-1)


def selection_threshold(teacher: Teacher, mode: str = "relevancy") -> float:
    """The default threshold of a text selection (``mode`` scores above it are selected).

    For the synthetic oracle, whose image features are its class embeddings, it is measured on
    them: per class, halfway between the score its own embedding gets for its name and the
    highest score another class's embedding gets; the median over classes. That is about 0.54
    (cosine) in the random text space, where classes are orthogonal, and 0.84 in MiniLM's, where
    "a photo of a chair" and "a photo of a sofa" have cosine 0.68. Other teachers' image features
    do not live on their text embeddings, so nothing here measures their scale:
    :data:`UNCALIBRATED_THRESHOLD`, to be set per scene.
    """
    check_choice(mode, "mode", ("relevancy", "cosine"))
    names = _oracle_class_names(teacher)
    if len(names) < 2:
        return UNCALIBRATED_THRESHOLD
    classes = _text_embeddings(teacher, names)  # [K, M]: the image features of each class
    cosines = classes @ classes.T  # [feature j, prompt k]
    if mode == "cosine":
        scores = cosines
    else:
        negatives = classes @ _text_embeddings(teacher, list(CANONICAL_NEGATIVES)).T  # [j, K']
        pairs = torch.cat(
            [cosines[..., None], negatives[:, None, :].expand(-1, len(names), -1)], -1
        )
        scores = relevancy_from_cosines(pairs)
    own = scores.diagonal()
    others = scores.masked_fill(torch.eye(len(names), dtype=torch.bool), -torch.inf).amax(dim=0)
    return round(float(((own + others) / 2).median()), 3)


def _oracle_class_names(teacher: Teacher) -> list[str]:
    """The class names of a synthetic oracle (itself, or as a run's record holds it), else []."""
    if teacher.name != "synthetic":
        return []
    names = getattr(teacher, "class_names", None) or getattr(teacher, "vocabulary", [])
    return [name for name in names if name not in CANONICAL_NEGATIVES]


def _decoded_render(field: FeatureField, cameras: Cameras) -> Tensor:
    return field.decode(field.render(cameras).features)


@torch.no_grad()
def text_similarity(field: FeatureField, cameras: Cameras, teacher: Teacher, text: str) -> Tensor:
    """Cosine similarity [C, H, W] between decoded rendered features and the text's embedding."""
    return cosine_scores(_decoded_render(field, cameras), teacher, text)


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
    return relevancy_scores(_decoded_render(field, cameras), teacher, text, negatives)


@torch.no_grad()
def segment_labels(
    field: FeatureField,
    cameras: Cameras,
    teacher: Teacher,
    labels: list[str],
    temperature: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Probabilities [C, H, W, T] (softmax of cosine / temperature) and the argmax label [C, H, W]."""
    probs = label_probabilities(_decoded_render(field, cameras), teacher, labels, temperature)
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
    Feature 3DGS thresholds for its edits). Gaussians the field flags ``unseen`` score the floor
    (-1 cosine, 0 relevancy), so no selection includes them."""
    check_choice(mode, "mode", ("relevancy", "cosine"))
    features, decoder = field.gaussians.features, field.decoder
    if mode == "cosine":
        scores = cosine_scores(features, teacher, text, decoder)
    else:
        scores = relevancy_scores(features, teacher, text, negatives, decoder)
    lowest = -1.0 if mode == "cosine" else 0.0  # the score's floor: no threshold selects it
    return torch.where(field.selectable().to(scores.device), scores, lowest)
