"""Configs of the top-level ``feature-splat`` commands that work on run folders and datasets.

Plain dataclasses that import no heavy package (the command line builds its parser from them
quickly); each checks its values in ``__post_init__`` and names the flag at fault. Training's
config is :class:`~feature_splat.training.config.TrainConfig`; the ``gen`` and ``bench`` commands
have theirs in their packages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from feature_splat.errors import ConfigError
from feature_splat.options import check_float, check_int, check_seed, check_text
from feature_splat.training.config import (
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    FeatureLayout,
    OracleText,
    TeacherName,
    TrainConfig,
)


def _check_views(views: tuple[int, ...]) -> None:
    for view in views:
        check_int(view, "views", 0)


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None:
        check_float(threshold, "threshold", -1.0, 1.0)


@dataclass
class SamPrompt:
    """SAM point (x, y; label 1 = foreground, 0 = background) and/or box prompts, in pixels."""

    points: list[tuple[int, int]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if not self.points and self.box is None:
            raise ConfigError("--point / --box: expected at least one point or a box")
        for point in self.points:
            for value in point:
                check_int(value, "point", 0)
        if self.point_labels and len(self.point_labels) != len(self.points):
            raise ConfigError(
                f"--point-labels: expected one label per point ({len(self.points)}), "
                f"got {len(self.point_labels)}"
            )
        for label in self.point_labels:
            check_int(label, "point_labels", 0, 1)
        for value in self.box or ():
            check_float(value, "box", 0.0)

    @property
    def labels(self) -> list[int]:
        """The point labels, 1 (foreground) for every point when none were given."""
        return self.point_labels or [1] * len(self.points)

    @classmethod
    def from_flags(
        cls, point: tuple[int, ...], labels: tuple[int, ...], box: tuple[float, ...] | None
    ) -> SamPrompt | None:
        """The prompt of ``--point x y ... --point-labels ... --box ...``; None without one."""
        if not point and box is None:
            return None
        if len(point) % 2:
            raise ConfigError(f"--point: expected x y pairs, got {len(point)} numbers")
        pairs = list(zip(point[::2], point[1::2], strict=True))
        return cls(points=pairs, point_labels=list(labels), box=box)


@dataclass
class EvalConfig:
    """Re-evaluate a run folder on its held-out views."""

    run: tyro.conf.Positional[Path]
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""


@dataclass
class RenderConfig:
    """Render a trained field: dataset views or an orbit; writes RGB, depth and feature PCA PNGs."""

    run: tyro.conf.Positional[Path]
    views: tuple[int, ...] = ()
    """Dataset view indices to render (default: the held-out views)."""
    orbit: int = 0
    """Render this many views on an orbit around the scene instead."""
    look_at: tuple[float, float, float, float, float, float] | None = None
    """Render one camera at EYE looking at TARGET (world coordinates, z up): EX EY EZ TX TY TZ."""
    out: Path | None = None
    """Output folder (default: RUN/rendered)."""

    def __post_init__(self) -> None:
        _check_views(self.views)
        check_int(self.orbit, "orbit", 0, 3600)
        for value in self.look_at or ():
            check_float(value, "look_at")


@dataclass
class ImportNsConfig:
    """Turn a finished `ns-train feature-splat` run into a run folder that query, edit, view,
    render and eval open (runs in this environment; nerfstudio is not needed)."""

    config: tyro.conf.Positional[Path]
    """The nerfstudio run's config.yml (OUTPUT/<experiment>/feature-splat/<timestamp>/config.yml)."""
    out: tyro.conf.Positional[Path]
    """The run folder to write."""
    data: str | None = None
    """The dataset folder, if not where the config says (relative paths there are relative to
    the folder ns-train ran in: run import-ns from there, or give this); or a built-in world's
    name for a run trained on its export (then scored against the world's truth)."""
    feature_cache: Path | None = None
    """The feature cache's teacher folder, if not where the config says."""
    features: Path | None = None
    """The feature-map folder of a --teacher precomputed cache."""


@dataclass
class ViewConfig:
    """Open a run folder in the browser: views, text and click prompts, edits."""

    run: tyro.conf.Positional[Path]
    host: str = "127.0.0.1"
    """Address to listen on; the default is reachable from this machine only (0.0.0.0: every
    network the machine is on)."""
    port: int = 8080
    resolution: int = 512
    """Longer side in pixels of a frame while the camera is still."""
    moving_scale: float = 0.5
    """Frames while the camera moves are this fraction of ``resolution``."""
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""

    def __post_init__(self) -> None:
        check_text(self.host, "host")
        check_int(self.port, "port", 1, 65535)
        check_int(self.resolution, "resolution", 16, 4096)
        check_float(self.moving_scale, "moving_scale", 0.05, 1.0)


@dataclass
class QueryConfig:
    """Ask a run's field a text prompt (relevancy maps, 3D selection count) or, for a SAM-distilled
    run, SAM point / box prompts on its rendered features."""

    run: tyro.conf.Positional[Path]
    text: str | None = None
    """Text prompt (language-aligned teachers)."""
    point: tuple[int, ...] = ()
    """SAM point prompt(s) as x y pairs in pixels (SAM-distilled runs)."""
    point_labels: tuple[int, ...] = ()
    """1 = foreground, 0 = background, one per point (default: all 1)."""
    box: tuple[float, float, float, float] | None = None
    """SAM box prompt x0 y0 x1 y1 in pixels (SAM-distilled runs)."""
    labels: tuple[str, ...] = ()
    """Also segment the views over this label set."""
    views: tuple[int, ...] = ()
    """Dataset view indices (default: the held-out views)."""
    threshold: float | None = None
    """Score above which a pixel (relevancy) or a Gaussian (cosine) counts as selected
    (default: the teacher's own, ``prompts.text.selection_threshold``)."""
    out: Path | None = None
    """Output folder (default: RUN/queries/<prompt>-<hash>, or RUN/queries/sam)."""
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.sam_prompt() is None):
            raise ConfigError(
                "query: give either --text, or --point / --box for a SAM-distilled run"
            )
        if self.text is not None:
            check_text(self.text, "text")
        for label in self.labels:
            check_text(label, "labels")
        _check_views(self.views)
        _check_threshold(self.threshold)

    def sam_prompt(self) -> SamPrompt | None:
        """The SAM prompt of --point / --point-labels / --box, if any."""
        return SamPrompt.from_flags(self.point, self.point_labels, self.box)


@dataclass
class EditConfig:
    """Delete, extract or recolour what a prompt selects; writes a new field to OUT."""

    run: tyro.conf.Positional[Path]
    op: Literal["delete", "extract", "recolour"]
    out: Annotated[Path, tyro.conf.arg(aliases=["-o"])]
    text: str | None = None
    """Select by a text prompt (per-Gaussian score above --threshold)."""
    point: tuple[int, ...] = ()
    """Or select by SAM point prompt(s), x y pairs on dataset view --view (SAM-distilled runs)."""
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    """Or a SAM box prompt x0 y0 x1 y1 on --view."""
    view: int = 0
    """Dataset view the SAM prompt is given on; its mask is lifted to 3D."""
    threshold: float | None = None
    """Score above which a Gaussian is selected (default: the teacher's own for --mode,
    ``prompts.text.selection_threshold``: 0.84 cosine in MiniLM's text space, 0.54 in the random
    one, 0.5 for foundation models)."""
    mode: Literal["relevancy", "cosine"] = "cosine"
    """Score thresholded per Gaussian: raw cosine of its decoded feature with the text (Feature
    3DGS's semantics), or LERF relevancy (noisier per Gaussian: hidden Gaussians' features are
    barely constrained by training and sit near relevancy 0.5)."""
    color: tuple[float, float, float] = (0.1, 0.8, 0.1)
    """RGB for --op recolour."""
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""

    def sam_prompt(self) -> SamPrompt | None:
        """The SAM prompt of --point / --point-labels / --box, if any."""
        return SamPrompt.from_flags(self.point, self.point_labels, self.box)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.sam_prompt() is None):
            raise ConfigError("edit: give either --text or a SAM --point / --box prompt")
        if self.text is not None:
            check_text(self.text, "text")
        check_int(self.view, "view", 0)
        _check_threshold(self.threshold)
        for value in self.color:
            check_float(value, "color", 0.0, 1.0)


@dataclass
class EncodeConfig:
    """Encode every view of a dataset with a teacher into the on-disk feature cache (resumable)."""

    data: tyro.conf.Positional[str]
    """A built-in world (room, tabletop, street, tabletop-real, playroom-real) or a dataset folder."""
    cache_dir: Path = Path("outputs/cache")
    teacher: TeacherName = "synthetic"
    teacher_checkpoint: Path | None = None
    """Local weights of a foundation-model teacher."""
    allow_torchscript: bool = False
    """Let a CLIP teacher checkpoint be an OpenAI TorchScript archive (runs code from the file)."""
    teacher_model: str | None = None
    teacher_dim: int | None = None
    """Width of the synthetic oracle (unset: its text space's own)."""
    oracle_text: OracleText = "auto"
    """The synthetic oracle's text space: minilm, random, or auto (minilm where installed)."""
    teacher_stride: int = 8
    features: Path | None = None
    """Folder of per-image feature maps for --teacher precomputed."""
    features_layout: FeatureLayout = "auto"
    pca: int | None = None
    """Store k PCA coefficients per cell instead of the teacher's full width."""
    batch: int = 8
    width: int = 128
    height: int = 96
    world_seed: int = 0
    allow_outside_paths: bool = False
    """Let the dataset's files lie outside its folder."""

    def __post_init__(self) -> None:
        check_int(self.batch, "batch", 1)
        if self.teacher == "none":
            raise ConfigError("encode: --teacher none has no features to cache")
        self.train_config()  # checks the data and teacher settings

    def train_config(self) -> TrainConfig:
        """The equivalent training settings (data, teacher): training with them reads this cache."""
        return TrainConfig(
            data=self.data, teacher=self.teacher, teacher_checkpoint=self.teacher_checkpoint,
            allow_torchscript=self.allow_torchscript, teacher_model=self.teacher_model,
            teacher_dim=self.teacher_dim, teacher_stride=self.teacher_stride, oracle_text=self.oracle_text,
            cache_dir=self.cache_dir, teacher_pca=self.pca, width=self.width, height=self.height,
            world_seed=self.world_seed, allow_outside_paths=self.allow_outside_paths,
            features=self.features, features_layout=self.features_layout,
        )  # fmt: skip


@dataclass
class WorldsExportConfig:
    """Export a built-in synthetic world in nerfstudio format (images, cameras, splits)."""

    name: tyro.conf.Positional[
        Literal["room", "tabletop", "street", "tabletop-real", "playroom-real"]
    ]
    out: tyro.conf.Positional[Path]
    width: int = 128
    height: int = 96
    world_seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.width, "width", MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
        check_int(self.height, "height", MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
        check_seed(self.world_seed, "world_seed")


@dataclass
class DemoConfig:
    """Train on a built-in world, evaluate, answer a text and a point prompt (all synthetic)."""

    out: Path = Path("outputs/demo")
    """A new run folder is made inside for every demo run."""
    text: str = "chair"
    point: tuple[int, int] | None = None
    """Pixel (x, y) of the first held-out view to prompt with (default: its centre)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(feature_dim=64))
    """Training options (``--train.out`` is replaced by the demo's run folder). F = 64: on the
    oracle teacher's maps, fewer channels squeeze out the small classes (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        check_text(self.text, "text")
        for value in self.point or ():
            check_int(value, "point", 0)
