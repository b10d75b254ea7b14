"""Build a teacher by name. Foundation-model teachers import their packages only when asked for."""

from __future__ import annotations

import importlib
from pathlib import Path

from feature_splat.data import Dataset
from feature_splat.errors import BackendUnavailableError, DatasetError
from feature_splat.teachers.base import Teacher

TEACHER_NAMES = ("synthetic", "sam", "clip", "lseg", "dino", "precomputed")
# The package each teacher needs and the extra that installs it.
_REQUIREMENTS = {
    "sam": ("segment_anything", "sam"),
    "clip": ("open_clip", "clip"),
    "lseg": ("open_clip", "lseg"),
    "dino": ("timm", "dino"),
}


def build_teacher(
    name: str,
    dataset: Dataset | None = None,
    *,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    dim: int | None = None,
    stride: int = 8,
    oracle_text: str = "auto",
    allow_torchscript: bool = False,
    features: str | Path | None = None,
    features_layout: str = "auto",
) -> Teacher:
    """The teacher ``name`` (one of :data:`TEACHER_NAMES`).

    ``checkpoint`` is the local weights file of a foundation model and ``model`` its variant
    (SAM: vit_b / vit_l / vit_h; CLIP: an open_clip model name, default ViT-B-16; DINOv2: a timm
    name, default vit_small_patch14_dinov2; LSeg: clip_vitl16_384). ``dim``, ``stride`` and
    ``oracle_text`` (its text space, :mod:`feature_splat.teachers.text_space`) set the synthetic
    oracle; ``stride`` also sets CLIP's cell size in pixels. The synthetic oracle needs
    ``dataset`` with ground-truth labels (a built-in world). ``allow_torchscript`` lets a CLIP
    checkpoint be an OpenAI TorchScript archive, which runs code when loaded. ``precomputed``
    reads the maps in the folder ``features`` for the views of ``dataset``
    (:mod:`feature_splat.teachers.precomputed`).
    """
    if name == "precomputed":
        from feature_splat.teachers.precomputed import PrecomputedTeacher

        if dataset is None or features is None:
            raise DatasetError("teacher 'precomputed': needs the dataset and a --features folder")
        return PrecomputedTeacher(features, dataset, features_layout)
    if name == "synthetic":
        from feature_splat.teachers.synthetic import SyntheticTeacher

        if dataset is None or dataset.labels is None:
            raise DatasetError(
                "teacher 'synthetic': needs ground-truth labels, which only the built-in worlds "
                "have; use a foundation-model teacher (sam, clip, lseg, dino) for real data"
            )
        return SyntheticTeacher.for_dataset(dataset, dim=dim, stride=stride, text_space=oracle_text)
    if name not in _REQUIREMENTS:
        raise BackendUnavailableError(f"teacher: expected one of {TEACHER_NAMES}, got {name!r}")
    package, extra = _REQUIREMENTS[name]
    try:
        importlib.import_module(package)
    except ImportError as err:
        raise BackendUnavailableError(
            f"teacher '{name}': needs the {package} package (pip install 'feature-splat[{extra}]')"
        ) from err
    if name == "sam":
        from feature_splat.teachers.sam import SamTeacher

        return SamTeacher(checkpoint, model_type=model or "vit_b")
    if name == "clip":
        from feature_splat.teachers.clip import ClipTeacher

        return ClipTeacher(
            model or "ViT-B-16", checkpoint, stride=stride, allow_torchscript=allow_torchscript
        )
    if name == "dino":
        from feature_splat.teachers.dino import DinoTeacher

        return DinoTeacher.from_checkpoint(checkpoint, model or "vit_small_patch14_dinov2")
    from feature_splat.teachers.lseg import LSegTeacher

    return LSegTeacher(checkpoint, model_type=model or "clip_vitl16_384")
