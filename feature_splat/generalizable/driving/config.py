"""Configs of the driving model and of the ``feature-splat drive`` commands.

Plain dataclasses that import no heavy package (the command line builds its parser from them
quickly); each checks its values in ``__post_init__`` and names the flag at fault.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import tyro

from feature_splat.errors import ConfigError
from feature_splat.generalizable.config import UNetPredictorConfig
from feature_splat.options import check_choice, check_float, check_int, check_seed
from feature_splat.rasterizer.backends import BACKENDS, Backend
from feature_splat.training.config import OracleText

if TYPE_CHECKING:
    from feature_splat.data.synthetic.drives import DriveViews

DepthSource = Literal["offline", "raycast"]


@dataclass
class DriveDataConfig:
    """Which procedural drives of the ``street`` world, and how they are rendered."""

    drives: int = 6
    """Drives of the split (train drives for training; test drives for evaluation)."""
    frames: int = 6
    """Frames per drive (the ego moves ``frame_spacing`` metres between frames)."""
    frame_spacing: float = 2.0
    width: int = 64
    """Per-camera image width (nuScenes' 1600 x 900 reduced for a CPU)."""
    height: int = 40
    cache_dir: Path | None = None
    """Render cache (default: $FEATURE_SPLAT_CACHE or ~/.cache/feature-splat)."""

    def __post_init__(self) -> None:
        check_int(self.drives, "data.drives", 1, 10**4)
        check_int(self.frames, "data.frames", 2, 1000)
        check_float(self.frame_spacing, "data.frame_spacing", 0.1, 10.0)
        check_int(self.width, "data.width", 16, 4096)
        check_int(self.height, "data.height", 16, 4096)

    def load(self, split: str) -> list[DriveViews]:
        """The split's drives, rendered (or read from the cache)."""
        from feature_splat.data.synthetic.drives import load_drives

        return load_drives(
            split, self.drives, self.width, self.height, n_frames=self.frames,
            frame_spacing=self.frame_spacing, cache_dir=self.cache_dir,
        )  # fmt: skip


@dataclass
class DriveTeacherConfig:
    """The synthetic oracle teacher of the street classes (its image side is the ground truth)."""

    oracle_text: OracleText = "auto"
    """Its text space: real all-MiniLM-L6-v2 sentence embeddings (auto, where installed) or
    seeded random vectors."""
    dim: int | None = None
    """Teacher width M (default: 384 for MiniLM, 512 for random)."""
    stride: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.oracle_text, "teacher.oracle_text", ("auto", "minilm", "random"))
        if self.dim is not None:
            check_int(self.dim, "teacher.dim", 1, 1 << 16)
        check_int(self.stride, "teacher.stride", 1, 1024)
        check_seed(self.seed, "teacher.seed")


@dataclass(frozen=True)
class DrivingModelConfig(UNetPredictorConfig):
    """Architecture of :class:`~feature_splat.generalizable.driving.network.DrivingPredictor`."""

    teacher_dim: int = 384
    """M: the teacher's width (the decoder's output); set from the teacher when training."""
    widths: tuple[int, ...] = (32, 48, 64, 96)
    """U-Net channels per level; each level after the first halves the resolution."""
    depth_bins: int = 32
    """Stage one of the depth head: bins over the parameterised depth range."""
    near: float = 0.5
    """Nearest depth (metres)."""
    linear_depth: float = 20.0
    """Bins are uniform in depth up to here, then uniform in inverse depth (contracted)."""
    far: float = 150.0
    """Farthest depth: rays that hit nothing (sky) belong here."""
    max_offset: float = 0.02
    """Largest 3D offset of a Gaussian from its ray point, as a fraction of its depth."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.depth_bins, "model.depth_bins", 2, 1024)
        for name in ("near", "linear_depth", "far"):
            check_float(getattr(self, name), f"model.{name}", positive=True)
        if not self.near < self.linear_depth < self.far:
            raise ConfigError(
                f"--model.near, --model.linear-depth, --model.far: expected near < linear-depth < "
                f"far, got {self.near}, {self.linear_depth}, {self.far}"
            )
        check_float(self.max_offset, "model.max_offset", 0.0, 1.0)


@dataclass
class DriveFitConfig:
    """Fit a per-scene feature field to every frame of each training drive: the offline fields
    whose depth and features `drive train --offline-fields` distils (DistillNeRF's recipe)."""

    out: tyro.conf.Positional[Path]
    data: DriveDataConfig = field(default_factory=DriveDataConfig)
    split: Literal["train", "val", "test"] = "train"
    """Which drives (fit the test drives too for the per-scene upper bound of `drive eval`)."""
    teacher: DriveTeacherConfig = field(default_factory=DriveTeacherConfig)
    iterations: int = 1500
    feature_dim: int = 16
    points: int = 20000
    """Initial Gaussians, drawn from the drive's depth maps (the LiDAR sweep of a real drive)."""

    def __post_init__(self) -> None:
        check_choice(self.split, "split", ("train", "val", "test"))
        check_int(self.iterations, "iterations", 1, 10**8)
        check_int(self.feature_dim, "feature_dim", 1, 4096)
        check_int(self.points, "points", 1, 10**7)


@dataclass
class DriveTrainConfig:
    """Train the driving predictor: six camera images of one frame -> a feature field."""

    out: tyro.conf.Positional[Path]
    """Run folder (created; refuses to overwrite an existing run unless --resume)."""
    data: DriveDataConfig = field(default_factory=DriveDataConfig)
    teacher: DriveTeacherConfig = field(default_factory=DriveTeacherConfig)
    model: DrivingModelConfig = field(default_factory=DrivingModelConfig)
    offline_fields: Path | None = None
    """Folder of `drive fit-fields`: the depth, features and virtual views the model distils.
    Required unless --depth-source raycast."""
    depth_source: DepthSource = "offline"
    """Depth targets: the offline fields' renders, or the world's ray-cast depth (the ablation)."""
    virtual_views: int = 2
    """Virtual cameras (between and beyond the real ones) rendered per step; targets from the
    offline fields (DistillNeRF's 'Virt.'); 0 without offline fields."""
    iterations: int = 1500
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 5% of it)."""
    feature_weight: float = 1.0
    """Teacher features (1 - cosine); 0 with --offline-feature-weight 0 trains the RGB-only model."""
    offline_feature_weight: float = 0.5
    """The offline fields' decoded features, at real and virtual cameras."""
    depth_weight: float = 0.5
    """Both depth stages against the depth targets: bin cross-entropy and log-depth L1."""
    virtual_weight: float = 0.5
    """Losses at virtual cameras, relative to real ones."""
    checkpoint_every: int = 500
    resume: bool = False
    seed: int = 0
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        check_int(self.virtual_views, "virtual_views", 0, 12)
        check_int(self.iterations, "iterations", 1, 10**8)
        check_float(self.lr, "lr", positive=True)
        for name in ("feature_weight", "offline_feature_weight", "depth_weight", "virtual_weight"):
            check_float(getattr(self, name), name, 0.0)
        check_int(self.checkpoint_every, "checkpoint_every", 1)
        check_seed(self.seed)
        check_choice(self.backend, "backend", ("auto", *BACKENDS))
        check_choice(self.depth_source, "depth_source", ("offline", "raycast"))
        if self.offline_fields is None and self.depth_source == "offline":
            raise ConfigError(
                "--offline-fields: required for --depth-source offline (run `feature-splat drive "
                "fit-fields` first), or pass --depth-source raycast"
            )
        for side, name in ((self.data.width, "width"), (self.data.height, "height")):
            if side % self.model.size_multiple:
                raise ConfigError(
                    f"--data.{name}: {side} is not a multiple of {self.model.size_multiple} (the "
                    f"U-Net of --model.widths halves it {len(self.model.widths) - 1} times)"
                )

    @property
    def rgb_only(self) -> bool:
        """Whether no feature target is used (the RGB-only baseline)."""
        return self.feature_weight == 0 and self.offline_feature_weight == 0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class DriveEvalConfig:
    """Held-out drives, one frame in: reconstruction, novel views, depth, text queries and
    zero-shot semantic occupancy, against the baselines."""

    model: tyro.conf.Positional[Path]
    """A `drive train` run folder."""
    rgb_only: Path | None = None
    """A run trained with no feature target, scored in the same run (RGB and depth only)."""
    offline_fields: Path | None = None
    """`drive fit-fields --split test` output: the per-scene upper bound (saw the whole drive)."""
    out: Path | None = None
    """Output folder (default: MODEL/eval)."""
    data: DriveDataConfig = field(default_factory=lambda: DriveDataConfig(drives=2))
    """Test drives (their size must match the model's training size)."""
    frames_per_drive: int = 2
    """Input frames evaluated per drive (spread over the drive; the next frame is the novel view)."""
    voxel_scale: float = 1.0
    """Occupancy grid: Occ3D-nuScenes' (0.4 m voxels, x, y in [-40, 40] m, z in [-1, 5.4] m)
    times this."""
    density_threshold: float = 0.1
    """A voxel is occupied where the Gaussians' density at its centre exceeds this (chosen on a
    training drive's offline field, where 0.1 gave the best geometric IoU of 0.05 to 0.5)."""
    density_sweep: tuple[float, ...] = (0.05, 0.2, 0.5)
    """Further thresholds whose occupancy scores are reported too."""

    def __post_init__(self) -> None:
        check_int(self.frames_per_drive, "frames_per_drive", 1, 1000)
        if self.frames_per_drive > self.data.frames - 1:
            raise ConfigError(
                f"--frames-per-drive: {self.frames_per_drive} frames need a next frame each, so at "
                f"most --data.frames - 1 = {self.data.frames - 1}"
            )
        check_float(self.voxel_scale, "voxel_scale", 0.05, 10.0)
        for threshold in (self.density_threshold, *self.density_sweep):
            check_float(threshold, "density_threshold", positive=True)
