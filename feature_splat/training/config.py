"""Configuration of per-scene training (a tyro-driven dataclass, like nerfstudio's configs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import tyro

from feature_splat.errors import ConfigError
from feature_splat.options import (
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_text,
)
from feature_splat.rasterizer.backends import BACKENDS, Backend

TeacherName = Literal["synthetic", "sam", "clip", "lseg", "dino", "precomputed", "none"]
FeatureLayout = Literal["auto", "hwc", "chw"]
# Teachers whose features are compared with text by cosine: distilled with the cosine loss.
COSINE_TEACHERS = ("synthetic", "clip", "lseg")
# The synthetic oracle's text spaces (feature_splat.teachers.text_space).
OracleText = Literal["auto", "minilm", "random"]
InitName = Literal["auto", "points", "rays", "box"]
# Bounds that keep a run's tensors within reach of one machine (3DGS scenes reach a few million
# Gaussians; teachers' widths are 256 to 1536) and images large enough for SSIM's 11-pixel window.
MAX_ITERATIONS = 10**8
MAX_GAUSSIANS = 10**7
MAX_FEATURE_DIM = 4096
MAX_TEACHER_DIM = 1 << 16
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 16384


def resolve_feature_loss(choice: str, teacher: str | None) -> str:
    """``auto`` made definite for a teacher named ``teacher``: cosine for the teachers whose
    features are compared with text by cosine (:data:`COSINE_TEACHERS`), L1 for the others."""
    if choice != "auto":
        return choice
    return "cosine" if teacher in COSINE_TEACHERS else "l1"


@dataclass
class LearningRates:
    """Adam learning rates per parameter group (the 3DGS defaults; means scale with the scene)."""

    means: float = 1.6e-4
    means_final: float = 1.6e-6
    """Exponential decay of the position learning rate reaches this at the last step."""
    quats: float = 1e-3
    scales: float = 5e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20
    features: float = 2.5e-3
    decoder: float = 1e-3
    background: float = 1e-3

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check_float(value, f"lr.{name}", positive=True)


@dataclass
class DensifyConfig:
    """Options passed to gsplat's DefaultStrategy (steps are absolute iterations)."""

    refine_start: int = 300
    refine_stop: int = 1000
    refine_every: int = 100
    reset_every: int = 100_000
    """Opacity reset period; effectively off for short runs."""
    grow_grad2d: float = 3e-4
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_veils: bool = True
    """Every refine_every steps and once at the end, remove the Gaussians that veil a training
    view from its near field (feature_splat.near_field)."""

    def __post_init__(self) -> None:
        check_int(self.refine_start, "densify.refine_start")
        check_int(self.refine_stop, "densify.refine_stop")
        check_int(self.refine_every, "densify.refine_every", 1)
        check_int(self.reset_every, "densify.reset_every", 1)
        check_float(self.grow_grad2d, "densify.grow_grad2d", positive=True)
        check_float(self.grow_scale3d, "densify.grow_scale3d", positive=True)
        check_float(self.prune_opacity, "densify.prune_opacity", 0.0, 1.0)


@dataclass
class TrainConfig:
    """Per-scene feature distillation (Feature 3DGS with a speed-up decoder)."""

    data: tyro.conf.Positional[str] = "room"
    """A built-in world (room, tabletop, street, tabletop-real, playroom-real) or a dataset folder
    (nerfstudio, Blender, COLMAP)."""
    out: Path = Path("outputs/run")
    """Run folder: PLY, decoder, config, metrics, PNGs, checkpoints."""
    teacher: TeacherName = "synthetic"
    """The 2D teacher distilled: the synthetic oracle (built-in worlds only), a foundation model
    (sam, clip, lseg, dino: local weights), ``precomputed`` (feature maps made elsewhere, read from
    --features) or ``none`` (RGB only: no feature channels, no decoder)."""
    features: Path | None = None
    """Folder of per-image feature maps for --teacher precomputed (docs/own_data.md)."""
    features_layout: FeatureLayout = "auto"
    """Axis order of precomputed maps: [h, w, M] (hwc), [M, h, w] (chw) or auto (from the shape)."""
    teacher_checkpoint: Path | None = None
    """Local weights of a foundation-model teacher (nothing is ever downloaded)."""
    allow_torchscript: bool = False
    """Let --teacher-checkpoint be an OpenAI TorchScript CLIP archive. Such an archive is a
    program: loading it runs code from the file, so only pass files you trust. Never stored: each
    command that loads the teacher needs the flag again."""
    allow_outside_paths: bool = False
    """Let the dataset's files (file_path, mask_path, ply_file_path) lie outside its folder."""
    teacher_model: str | None = None
    """Variant: SAM vit_b|vit_l|vit_h, an open_clip model name, a timm DINOv2 name, LSeg clip_vitl16_384."""
    teacher_dim: int | None = None
    """Width of the synthetic oracle: unset, its text space's own (384 for MiniLM, 512 for
    random); another width selects the random space under --oracle-text auto. Foundation models
    have their own."""
    oracle_text: OracleText = "auto"
    """The synthetic oracle's text space: minilm (real all-MiniLM-L6-v2 sentence embeddings,
    ``pip install 'feature-splat[language]'``), random (class-name-seeded vectors and a synonym
    list) or auto (minilm where installed). Stored resolved with the run."""
    teacher_stride: int = 8
    """Cell size in pixels of the synthetic oracle and of CLIP."""
    cache_dir: Path | None = None
    """Teacher-feature cache folder (one fp16 file per image, reused across runs); none = memory only."""
    teacher_pca: int | None = None
    """Store the cached teacher features as this many PCA coefficients (needs cache_dir)."""
    feature_dim: int | None = None
    """Channels rendered per Gaussian (F); the decoder lifts them to the teacher's width.
    Default 16, and 0 with --teacher none."""
    decoder: Literal["linear", "mlp", "none"] = "linear"
    """Speed-up decoder: linear (exact per-Gaussian decoding), an MLP, or none (render the
    teacher's width directly; needs feature_dim == teacher_dim)."""
    decoder_hidden: tuple[int, ...] = (128,)
    """Hidden widths of the MLP decoder."""
    iterations: int = 1500
    """Defaults are sized for the built-in worlds on a laptop CPU (about 2 minutes); real scenes
    want more (3DGS uses 30k) with densification stretched to match."""
    feature_loss: Literal["auto", "l1", "cosine"] = "auto"
    """Distillation loss: auto is cosine for the teachers whose features are used by cosine
    against text (synthetic, clip, lseg) and L1 for the others (sam, dino, precomputed), whose
    magnitudes matter. Stored resolved. On the real-mesh worlds with the MiniLM oracle, cosine
    gives text mIoU 0.87-0.89 where L1 gives 0.32-0.49 (docs/benchmarks.md)."""
    feature_weight: float = 1.0
    """gamma: weight of the feature loss against the RGB loss (0.8 L1 + 0.2 (1 - SSIM))."""
    sh_degree: int = 1
    sh_degree_every: int = 1000
    """Raise the active SH degree by one every this many steps, up to ``sh_degree``."""
    init_points: int = 30_000
    """Number of initial Gaussians."""
    init: InitName = "auto"
    """Where they start: at the dataset's points, on the training cameras' rays (coloured by
    their pixels, at depths within the scene bounds), or uniformly in a box around the cameras.
    auto: points when the dataset has them, else rays."""
    near_plane: float = 0.02
    """Gaussians closer to a camera than this fraction of the scene scale are not rendered (in
    training and afterwards), and large ones inside twice that are pruned while densifying."""
    holdout_every: int | None = None
    """Hold out every K-th view (0, K, 2K, ...) for evaluation; 0 holds none out. Default: the
    dataset's own split lists, else every 8th."""
    test_views: tuple[str, ...] = ()
    """Held-out views by name (as in dataset.json), instead of --holdout-every."""
    init_opacity: float = 0.1
    width: int = 128
    height: int = 96
    """Image size of built-in worlds (real datasets keep their own size)."""
    world_seed: int = 0
    """Seed of a built-in world's generation (its layout, textures and rig)."""
    seed: int = 0
    """Seed of training: initial Gaussians, view order, densification."""
    checkpoint_every: int = 1000
    resume: bool = False
    """Continue from the run folder's latest checkpoint (gives the same result as an uninterrupted run)."""
    backend: Backend = "auto"
    viewer: bool = False
    """Serve the interactive viewer while training (the field as it is now; pause and resume
    from its panel), on loopback at --viewer-port; it stays up after training until Ctrl-C.
    Never stored with the run."""
    viewer_port: int = 8080
    lr: LearningRates = field(default_factory=LearningRates)
    densify: DensifyConfig = field(default_factory=DensifyConfig)

    def __post_init__(self) -> None:
        check_text(self.data, "data")
        check_choice(self.teacher, "teacher", get_args(TeacherName))
        check_choice(self.features_layout, "features_layout", get_args(FeatureLayout))
        if (self.teacher == "precomputed") != (self.features is not None):
            raise ConfigError(
                "--features: give it with --teacher precomputed, and only then"
                if self.features is not None
                else "--teacher precomputed: needs --features DIR (the folder of feature maps)"
            )
        if self.feature_dim is None:
            self.feature_dim = 0 if self.teacher == "none" else 16
        if self.teacher == "none" and self.feature_dim != 0:
            raise ConfigError(
                f"feature_dim: --teacher none trains RGB only (0 channels), got {self.feature_dim}"
            )
        if self.teacher_dim is not None:
            check_int(self.teacher_dim, "teacher_dim", 1, MAX_TEACHER_DIM)
        check_choice(self.oracle_text, "oracle_text", get_args(OracleText))
        check_int(self.teacher_stride, "teacher_stride", 1, MAX_IMAGE_SIDE)
        if self.teacher_pca is not None:
            check_int(self.teacher_pca, "teacher_pca", 1)
        check_int(self.feature_dim, "feature_dim", 0 if self.teacher == "none" else 1,
                  MAX_FEATURE_DIM)  # fmt: skip
        check_choice(self.decoder, "decoder", ("linear", "mlp", "none"))
        for width in self.decoder_hidden:
            check_int(width, "decoder_hidden", 1, MAX_TEACHER_DIM)
        check_int(self.iterations, "iterations", 1, MAX_ITERATIONS)
        check_choice(self.feature_loss, "feature_loss", ("auto", "l1", "cosine"))
        self.feature_loss = resolve_feature_loss(self.feature_loss, self.teacher)
        check_float(self.feature_weight, "feature_weight", 0.0)
        check_int(self.sh_degree, "sh_degree", 0, 3)
        check_int(self.sh_degree_every, "sh_degree_every", 1)
        check_int(self.init_points, "init_points", 1, MAX_GAUSSIANS)
        check_choice(self.init, "init", get_args(InitName))
        check_float(self.near_plane, "near_plane", 1e-6, 1.0)
        if self.holdout_every is not None:
            check_int(self.holdout_every, "holdout_every", 0, 1 << 30)
            if self.test_views:
                raise ConfigError("--test-views and --holdout-every: give one of them")
        for name in self.test_views:
            check_text(name, "test_views")
        check_float(self.init_opacity, "init_opacity", 1e-6, 1 - 1e-6)
        check_int(self.width, "width", MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
        check_int(self.height, "height", MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
        check_seed(self.world_seed, "world_seed")
        check_seed(self.seed)
        check_int(self.checkpoint_every, "checkpoint_every", 1)
        check_choice(self.backend, "backend", ("auto", *BACKENDS))
        check_int(self.viewer_port, "viewer_port", 1, 65535)

    def to_dict(self) -> dict:
        """The config as JSON values (paths as strings); ``allow_torchscript`` and the viewer
        settings are never stored."""
        data = asdict(self)
        for session_only in ("allow_torchscript", "viewer", "viewer_port"):
            del data[session_only]
        data["out"] = str(self.out)
        for key in ("cache_dir", "teacher_checkpoint", "features"):
            data[key] = None if data[key] is None else str(data[key])
        data["decoder_hidden"] = list(self.decoder_hidden)
        data["test_views"] = list(self.test_views)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The config :meth:`to_dict` wrote (a ConfigError names a bad value)."""
        data = dict(data)
        data["out"] = Path(data["out"])
        for key in ("cache_dir", "teacher_checkpoint", "features"):
            data[key] = None if data.get(key) is None else Path(data[key])
        data["decoder_hidden"] = tuple(data.get("decoder_hidden", ()))
        data["test_views"] = tuple(data.get("test_views", ()))
        data["lr"] = LearningRates(**data.get("lr", {}))
        data["densify"] = DensifyConfig(**data.get("densify", {}))
        return cls(**data)
