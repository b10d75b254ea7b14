"""The ``feature-splat lift`` command's config (imports no heavy package)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from feature_splat.errors import ConfigError
from feature_splat.options import check_choice, check_float, check_int, check_seed
from feature_splat.rasterizer.backends import Backend
from feature_splat.training.config import FeatureLayout, OracleText, TeacherName, TrainConfig


@dataclass
class LiftConfig:
    """Lift a teacher's features onto Gaussians you already have (a 3DGS PLY or a run folder):
    one rendering pass over the training views, no optimisation; optionally refined by a short
    distillation with the geometry frozen."""

    data: tyro.conf.Positional[str]
    """A built-in world (room, tabletop, street) or a dataset folder whose cameras the
    Gaussians were trained with."""
    gaussians: Path
    """A 3DGS PLY (Inria's layout, ``ns-export gaussian-splat``, ...) or a run folder."""
    out: Path = Path("outputs/lifted")
    """The run folder to write (query, edit, view, render and eval open it)."""
    dataparser_transforms: Path | None = None
    """nerfstudio's ``dataparser_transforms.json`` of the run the PLY came from: the PLY is then
    in nerfstudio's frame and is mapped back to the dataset's (docs/lifting.md)."""
    teacher: TeacherName = "synthetic"
    features: Path | None = None
    """Folder of per-image feature maps for --teacher precomputed."""
    features_layout: FeatureLayout = "auto"
    teacher_checkpoint: Path | None = None
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""
    teacher_model: str | None = None
    teacher_dim: int | None = None
    """Width of the synthetic oracle (unset: its text space's own)."""
    oracle_text: OracleText = "auto"
    """The synthetic oracle's text space: minilm, random, or auto (minilm where installed)."""
    teacher_stride: int = 8
    cache_dir: Path | None = None
    """Teacher-feature cache folder (``feature-splat encode`` fills it); none = memory only."""
    teacher_pca: int | None = None
    feature_dim: int = 16
    """Channels per Gaussian (F): the PCA of the lifted features; a linear decoder restores the
    teacher's width."""
    basis: Literal["teacher", "lifted"] = "teacher"
    """Where the F channels come from: a PCA of the teacher's features, applied before lifting
    (lifts F channels: fast, memory N x F), or a PCA of the features lifted at the teacher's full
    width (lifts M channels: memory N x M)."""
    min_weight: float = 0.01
    """Gaussians whose total rendering weight over the training views is below this (in teacher
    cells) are flagged unseen: selections leave them out."""
    solve_iterations: int = 0
    """Steps of a least-squares solver (SIRT) after the rendering-weight average: each costs about
    one lifting pass and sharpens what averaging over the teacher's cells blurred."""
    refine: int = 0
    """Distillation iterations after lifting (features and decoder; the geometry stays fixed)."""
    near_plane: float = 0.02
    """For a PLY: Gaussians closer to a camera than this fraction of the scene scale are not
    rendered (a run folder keeps its own)."""
    holdout_every: int | None = None
    test_views: tuple[str, ...] = ()
    width: int = 128
    height: int = 96
    world_seed: int = 0
    seed: int = 0
    """Seed of the refinement's view order."""
    allow_outside_paths: bool = False
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.teacher == "none":
            raise ConfigError("lift: --teacher none has no features to lift; name a teacher")
        check_choice(self.basis, "basis", ("teacher", "lifted"))
        check_float(self.min_weight, "min_weight", 0.0)
        check_int(self.solve_iterations, "solve_iterations", 0, 1000)
        check_int(self.refine, "refine", 0, 1_000_000)
        check_seed(self.seed)
        self.train_config()  # checks the shared data, teacher and model settings

    def train_config(self) -> TrainConfig:
        """The run folder's config: the data, teacher and field settings as training names them
        (``iterations`` is the refinement's)."""
        return TrainConfig(
            data=self.data, out=self.out, teacher=self.teacher, features=self.features,
            features_layout=self.features_layout, teacher_checkpoint=self.teacher_checkpoint,
            allow_torchscript=self.allow_torchscript, allow_outside_paths=self.allow_outside_paths,
            teacher_model=self.teacher_model, teacher_dim=self.teacher_dim, oracle_text=self.oracle_text,
            teacher_stride=self.teacher_stride, cache_dir=self.cache_dir,
            teacher_pca=self.teacher_pca, feature_dim=self.feature_dim, decoder="linear",
            iterations=max(1, self.refine), near_plane=self.near_plane,
            holdout_every=self.holdout_every, test_views=self.test_views, width=self.width,
            height=self.height, world_seed=self.world_seed, seed=self.seed, backend=self.backend,
        )  # fmt: skip
