"""A run's teacher as training saved it, so that commands on the run need no teacher weights.

``teacher.npz`` in a run folder holds the teacher's identity (name, ``config_id``, width, cell
geometry) and the text embeddings of a vocabulary: the dataset's label names, the canonical
negatives of relevancy, and the labels of precomputed features. :class:`StoredTeacher` answers
from it; only a text outside the vocabulary, or features missing from the cache, need the real
teacher, which it then builds (and names what is missing when it cannot). The synthetic oracle's
record also names its text space: a text outside the vocabulary is then encoded by that space
directly (MiniLM, or the random vectors), without re-rendering the world.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from feature_splat.errors import CheckpointError, ConfigError, FeatureSplatError
from feature_splat.io.files import write_npz
from feature_splat.io.npz_cache import ArraySpec, read_cached
from feature_splat.teachers.base import Teacher, embeddings_by_name, grid_stride, label_index
from feature_splat.teachers.text_space import TextSpace

TEACHER_RECORD = "teacher.npz"
_FORMAT = 2  # 2 added the synthetic oracle's text space; records of format 1 are still read


class TeacherUnavailableError(ConfigError):
    """The real teacher is needed and cannot be built here (weights or package missing)."""


def vocabulary_of(teacher: Teacher) -> list[str]:
    """The only names a teacher without a text encoder has embeddings for (``label_names``, as
    precomputed features carry them); empty for an open vocabulary."""
    return list(getattr(teacher, "label_names", None) or [])


def write_teacher_record(path: Path, teacher: Teacher, vocabulary: list[str]) -> Path:
    """Save ``teacher``'s identity and the embeddings of ``vocabulary`` (language-aligned
    teachers only; duplicates dropped) to ``path``."""
    names = list(dict.fromkeys(vocabulary))
    if teacher.language_aligned and names:
        embeddings = teacher.encode_text(names).float().cpu().numpy()
    else:
        names, embeddings = [], np.zeros((0, teacher.dim), np.float32)
    stride = grid_stride(teacher)
    arrays = {
        "format": np.array(_FORMAT),
        "name": np.array(teacher.name),
        "config_id": np.array(teacher.config_id),
        "dim": np.array(teacher.dim),
        "stride": np.array(teacher.stride),
        "grid_stride": np.array(-1 if stride is None else stride),
        "language_aligned": np.array(bool(teacher.language_aligned)),
        "closed_vocabulary": np.array(bool(vocabulary_of(teacher))),
        "names": np.array(names, dtype=str) if names else np.zeros(0, dtype="<U1"),
        "embeddings": embeddings.astype(np.float32),
        # The synthetic oracle's text space: with it, any text is encoded without the world.
        "text_space": np.array(text.name if (text := getattr(teacher, "text", None)) else ""),
        "text_identity": np.array(text.identity if text else ""),
    }
    return write_npz(path, arrays)


class StoredTeacher:
    """The :class:`~feature_splat.teachers.base.Teacher` of a run, read from its ``teacher.npz``;
    ``build`` makes the real teacher when something outside the record is asked for."""

    def __init__(self, path: Path, build: Callable[[], Teacher | None]) -> None:
        self.path, self._build = path, build
        scalars = ("name", "config_id", "dim", "stride", "grid_stride", "language_aligned",
                   "closed_vocabulary")  # fmt: skip
        specs = {key: ArraySpec(()) for key in scalars}
        specs |= {
            "names": ArraySpec((None,)),
            "embeddings": ArraySpec((None, None), np.float32, True),
        }
        text_specs = {"text_space": ArraySpec(()), "text_identity": ArraySpec(())}
        arrays, why = read_cached(path, {"format": _FORMAT}, specs | text_specs)
        if arrays is None and why.startswith("made from something else"):
            arrays, why = read_cached(path, {"format": 1}, specs)  # before text spaces
            if arrays is not None:
                arrays |= {"text_space": np.array(""), "text_identity": np.array("")}
        if arrays is None:
            raise CheckpointError(f"{path}: not a teacher record this version can read ({why})")
        try:
            self.name = str(arrays["name"].item())
            self.config_id = str(arrays["config_id"].item())
            self.dim = int(arrays["dim"].item())
            self.stride = int(arrays["stride"].item())
            stride = int(arrays["grid_stride"].item())
            self.language_aligned = bool(arrays["language_aligned"].item())
            names = [str(n) for n in arrays["names"].tolist()]
            closed = bool(arrays["closed_vocabulary"].item())
            text_space = str(arrays["text_space"].item())
            text_identity = str(arrays["text_identity"].item())
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: malformed entry ({err})") from None
        self.resizes_input = stride < 0
        if arrays["embeddings"].shape != (len(names), self.dim):
            raise CheckpointError(
                f"{path}: embeddings: expected [{len(names)}, {self.dim}] (names x dim), got "
                f"{list(arrays['embeddings'].shape)}"
            )
        self.vocabulary = names
        self.label_names = names if closed else None  # a closed vocabulary: precomputed labels
        self._embeddings = torch.from_numpy(arrays["embeddings"])
        self._encoded: dict[str, Tensor] = {}  # texts the real teacher encoded
        self._text_space, self._text_identity = text_space, text_identity

    @cached_property
    def text(self) -> TextSpace | None:
        """The oracle's text space, rebuilt here when this machine gives the same one (so a text
        outside the vocabulary needs neither the world nor the real teacher); else None."""
        if not self._text_space:
            return None
        from feature_splat.prompts.text import CANONICAL_NEGATIVES
        from feature_splat.teachers.text_space import build_text_space, minilm_installed

        if self._text_space == "minilm" and not minilm_installed():
            return None
        classes = [name for name in self.vocabulary if name not in CANONICAL_NEGATIVES]
        dim = None if self._text_space == "minilm" else self.dim
        space = build_text_space(self._text_space, classes, dim)
        return space if space.identity == self._text_identity else None

    @cached_property
    def real(self) -> Teacher:
        """The teacher itself (its weights, its features folder, its world), built on first use."""
        try:
            teacher = self._build()
        except FeatureSplatError as err:
            raise TeacherUnavailableError(
                f"the run's teacher '{self.name}' is needed: {err}"
            ) from None
        if teacher is None or teacher.config_id != self.config_id:
            raise TeacherUnavailableError(
                f"{self.path}: the teacher built from the run's config is not the one it was "
                f"trained with (its weights or features changed)"
            )
        return teacher

    def encode(self, images: Tensor) -> Tensor:
        return self.real.encode(images)

    def encode_text(self, texts: list[str]) -> Tensor:
        """Embeddings [T, dim]: from the record for its vocabulary, else from the real teacher.

        What the real teacher answered is kept, so a prompt outside the vocabulary (asked again
        for every viewer frame) is encoded once.
        """
        known = label_index(self.vocabulary)
        unknown = [text for text in texts if text.strip().lower() not in known]
        if not unknown:
            return embeddings_by_name(texts, self.vocabulary, self._embeddings, str(self.path))
        new = list(dict.fromkeys(text for text in texts if text not in self._encoded))
        encoder = self.text.embed if self.text is not None else None
        try:
            if new:
                encoded = encoder(new) if encoder else self.real.encode_text(new)
                self._encoded.update(zip(new, encoded.float(), strict=True))
            return torch.stack([self._encoded[text] for text in texts])
        except TeacherUnavailableError as err:
            saved = ", ".join(self.vocabulary[:20]) or "none"
            raise TeacherUnavailableError(
                f"text {unknown[0]!r}: not among the texts saved with the run ({saved}), and {err}"
            ) from None
