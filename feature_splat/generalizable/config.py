"""Configs of the generalizable model and of the ``feature-splat gen`` commands.

Plain dataclasses that import no heavy package (the command line builds its parser from them
quickly); each checks its values in ``__post_init__`` and names the flag at fault.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

import tyro

from feature_splat.errors import ConfigError
from feature_splat.options import check_choice, check_float, check_int, check_seed
from feature_splat.rasterizer.backends import BACKENDS, Backend

if TYPE_CHECKING:
    from feature_splat.data.synthetic.object_views import ObjectViews
    from feature_splat.teachers.object_oracle import ObjectOracleTeacher

Category = Literal["chair", "table", "car"]
CATEGORIES = ("chair", "table", "car")


@dataclass
class ObjectDataConfig:
    """Which procedural object instances to use and how they are rendered."""

    categories: tuple[Category, ...] = CATEGORIES
    instances: int = 32
    """Instances per category."""
    views: int = 12
    """Ray-cast views per instance."""
    image_size: int = 64
    seed: int = 0
    cache_dir: Path | None = None
    """Render cache (default: $FEATURE_SPLAT_CACHE/objects or ~/.cache/feature-splat/objects)."""

    def __post_init__(self) -> None:
        if not self.categories:
            raise ConfigError("--data.categories: expected at least one category")
        for category in self.categories:
            check_choice(category, "data.categories", CATEGORIES)
        check_int(self.instances, "data.instances", 1, 10**5)
        check_int(self.views, "data.views", 2, 1000)
        check_int(self.image_size, "data.image_size", 16, 1024)
        check_seed(self.seed, "data.seed")

    def load(self, split: str, *, instances: int | None = None) -> list[ObjectViews]:
        """All categories' instances of ``split``, rendered (or read from the cache)."""
        from feature_splat.data.synthetic.object_views import load_objects

        out: list[ObjectViews] = []
        for category in self.categories:
            out += load_objects(
                category, split, n_instances=instances or self.instances, n_views=self.views,
                size=self.image_size, seed=self.seed, cache_dir=self.cache_dir,
            )  # fmt: skip
        return out


@dataclass
class TeacherConfig:
    """The synthetic DINO-like oracle teacher of the object categories."""

    dim: int = 64
    stride: int = 4
    noise: float = 0.15
    view_weight: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.dim, "teacher.dim", 1, 1 << 16)
        check_int(self.stride, "teacher.stride", 1, 1024)
        check_float(self.noise, "teacher.noise", 0.0)
        check_float(self.view_weight, "teacher.view_weight", 0.0)
        check_seed(self.seed, "teacher.seed")

    def build(self) -> ObjectOracleTeacher:
        from feature_splat.teachers.object_oracle import ObjectOracleTeacher

        return ObjectOracleTeacher(
            dim=self.dim, stride=self.stride, noise=self.noise, view_weight=self.view_weight,
            seed=self.seed,
        )  # fmt: skip


@dataclass(frozen=True)
class UNetPredictorConfig:
    """What every per-pixel Gaussian predictor's architecture has: a U-Net and a linear decoder."""

    feature_dim: int = 16
    """F: feature channels per Gaussian (rendered, then decoded to the teacher's width)."""
    teacher_dim: int = 64
    """M: the teacher's feature width (the decoder's output)."""
    widths: tuple[int, ...] = (32, 64, 96, 128)
    """U-Net channels per level; each level after the first halves the resolution."""

    def __post_init__(self) -> None:
        check_int(self.feature_dim, "model.feature_dim", 1, 1024)
        check_int(self.teacher_dim, "model.teacher_dim", 1, 8192)
        if not 1 <= len(self.widths) <= 8:
            raise ConfigError(f"--model.widths: expected 1 to 8 levels, got {len(self.widths)}")
        for width in self.widths:
            check_int(width, "model.widths", 1, 4096)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the U-Net halves them ``len(widths) - 1`` times)."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Self:
        """The config :meth:`to_dict` wrote (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class PredictorConfig(UNetPredictorConfig):
    """Architecture of :class:`~feature_splat.generalizable.network.GaussianPredictor`."""

    gaussians_per_pixel: int = 1
    """Gaussians predicted at each pixel of each input view (more can cover occluded surfaces)."""
    depth_range: float = 0.6
    """Predicted depths lie within ``ref * (1 +- depth_range)``."""
    max_offset: float = 0.1
    """Largest 3D offset from the ray point, as a fraction of ``ref``."""
    background_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the object (the object renders' background)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.gaussians_per_pixel, "model.gaussians_per_pixel", 1, 16)
        check_float(self.depth_range, "model.depth_range", 0.0, 0.99, positive=True)
        check_float(self.max_offset, "model.max_offset", 0.0)
        if len(self.background_rgb) != 3:
            raise ConfigError("--model.background-rgb: expected 3 values")
        for value in self.background_rgb:
            check_float(value, "model.background_rgb", 0.0, 1.0)


@dataclass
class GenTrainConfig:
    """Train the feed-forward feature-Gaussian predictor on procedural object categories."""

    out: tyro.conf.Positional[Path]
    """Run folder (created; refuses to overwrite an existing run unless --resume)."""
    data: ObjectDataConfig = field(default_factory=ObjectDataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: PredictorConfig = field(default_factory=PredictorConfig)
    input_views: int = 1
    """Most views fed to the network per instance (each step draws 1 to this many)."""
    target_views: int = 3
    """Novel views rendered per instance and step (the input views are rendered too)."""
    batch_size: int = 4
    """Instances per step."""
    iterations: int = 6000
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 5% of it)."""
    feature_weight: float = 1.0
    """Teacher feature distillation; 0 trains the no-distillation baseline."""
    alpha_weight: float = 0.1
    """Rendered alpha against the object mask."""
    depth_weight: float = 1.0
    """Rendered depth against the target depth (ray-cast, or the offline fields'), relative L1."""
    offline_fields: Path | None = None
    """Folder of per-scene fields from ``gen fit-fields``: their depth and features become targets."""
    offline_feature_weight: float = 0.5
    """The offline fields' decoded features as a second feature target."""
    checkpoint_every: int = 500
    resume: bool = False
    """Continue the run in OUT from its checkpoint."""
    seed: int = 0
    backend: Backend = "auto"
    """Rasterizer backend (auto: gsplat on CUDA tensors, the numba CPU backend otherwise)."""

    def __post_init__(self) -> None:
        check_int(self.input_views, "input_views", 1)
        check_int(self.target_views, "target_views", 1)
        if self.input_views + self.target_views > self.data.views:
            raise ConfigError(
                f"--input-views + --target-views = {self.input_views + self.target_views} exceeds "
                f"the {self.data.views} views per instance (--data.views)"
            )
        check_int(self.batch_size, "batch_size", 1, 4096)
        check_int(self.iterations, "iterations", 1, 10**8)
        check_float(self.lr, "lr", positive=True)
        for name in ("feature_weight", "alpha_weight", "depth_weight", "offline_feature_weight"):
            check_float(getattr(self, name), name, 0.0)
        check_int(self.checkpoint_every, "checkpoint_every", 1)
        check_seed(self.seed)
        check_choice(self.backend, "backend", ("auto", *BACKENDS))
        if self.teacher.dim != self.model.teacher_dim:
            raise ConfigError(
                f"--teacher.dim ({self.teacher.dim}) must equal --model.teacher-dim "
                f"({self.model.teacher_dim})"
            )
        if self.data.image_size % self.model.size_multiple:
            raise ConfigError(
                f"--data.image-size: {self.data.image_size} is not a multiple of "
                f"{self.model.size_multiple} (the U-Net of --model.widths halves it "
                f"{len(self.model.widths) - 1} times)"
            )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class GenEvalConfig:
    """Keypoint transfer and part co-segmentation on held-out instances, against the baselines."""

    model: tyro.conf.Positional[Path]
    """A `gen train` run folder (or its model.pt)."""
    baseline: Path | None = None
    """A run trained with --feature-weight 0 (the no-distillation baseline), scored in the same run."""
    out: Path | None = None
    """Output folder (default: MODEL/eval)."""
    data: ObjectDataConfig = field(default_factory=lambda: ObjectDataConfig(instances=16))
    """Held-out ('test' split) instances."""
    input_views: int = 1
    pairs: int = 200
    """Seeded (source, target) instance pairs per category."""
    surface_points: int = 2000
    """Surface points sampled per instance for the 3D tasks."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.data.instances, "data.instances", 2)  # pairs need two instances
        check_int(self.input_views, "input_views", 1, self.data.views - 1)
        check_int(self.pairs, "pairs", 1, 10**6)
        check_int(self.surface_points, "surface_points", 1, 10**7)
        check_seed(self.seed)


@dataclass
class GenPredictConfig:
    """Predict a feature field from one or a few posed images and render it around the object."""

    model: tyro.conf.Positional[Path]
    """A `gen train` run folder (or its model.pt)."""
    out: Path
    """Output folder: the field (point_cloud.ply + decoder.pt) and predict.png."""
    data: Path | None = None
    """A dataset folder (nerfstudio / Blender / COLMAP) with the object centred at the origin, z up;
    default: a built-in object instance (--category, --split, --index)."""
    allow_outside_paths: bool = False
    """Let the dataset's files lie outside its folder."""
    category: Category = "chair"
    split: Literal["train", "test"] = "test"
    index: int = 0
    views: tuple[int, ...] = (0,)
    """Input view indices."""
    orbit: int = 8
    """Novel views rendered on a circle around the object."""
    image_size: int = 64
    """Size of the built-in instance's renders."""

    def __post_init__(self) -> None:
        check_choice(self.category, "category", CATEGORIES)
        check_choice(self.split, "split", ("train", "test"))
        check_int(self.index, "index", 0, 10**5 - 1)
        if not self.views:
            raise ConfigError("--views: expected at least one input view")
        for view in self.views:
            check_int(view, "views", 0)
        check_int(self.orbit, "orbit", 1, 360)
        check_int(self.image_size, "image_size", 16, 1024)


@dataclass
class FitFieldsConfig:
    """Fit a per-scene feature field to every training instance (offline targets for `gen train
    --offline-fields`, the way DistillNeRF distils offline per-scene NeRFs)."""

    out: tyro.conf.Positional[Path]
    data: ObjectDataConfig = field(default_factory=ObjectDataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    iterations: int = 300
    feature_dim: int = 16

    def __post_init__(self) -> None:
        check_int(self.iterations, "iterations", 1, 10**8)
        check_int(self.feature_dim, "feature_dim", 1, 4096)
