"""Configs of the ``feature-splat bench`` commands (plain dataclasses, no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feature_splat.errors import ConfigError
from feature_splat.options import check_choice, check_float, check_int, check_text, flag
from feature_splat.rasterizer.backends import BACKENDS


def _check_sizes(
    values: tuple[int, ...], name: str, minimum: int = 1, maximum: int = 10**8
) -> None:
    for value in values:
        check_int(value, name, minimum, maximum)


@dataclass
class RasterBenchConfig:
    """Time every rasterizer backend (results.json + PNGs)."""

    quick: bool = False
    """Small grid (N 10k/50k, D 3/16, 256x256, 3 repeats): about a minute."""
    out: Path = Path("outputs/bench_raster")
    """Folder for results.json and the PNGs of the rendered scene."""
    ns: tuple[int, ...] = (10_000, 50_000, 200_000)
    dims: tuple[int, ...] = (3, 16, 32, 512)
    sizes: tuple[int, ...] = (256, 512)
    backends: tuple[str, ...] = ()
    """Backends to time (default: every one that can run here)."""
    repeats: int = 5
    threads: int = 2
    reference_max_pairs: float = 1.5e8
    """Skip ``reference`` where pixel x Gaussian pairs exceed this (its autograd graph would need
    tens of GB); the skip is recorded in the results."""

    def __post_init__(self) -> None:
        for name in ("ns", "dims", "sizes"):
            if not getattr(self, name):
                raise ConfigError(f"{flag(name)}: expected at least one value")
        _check_sizes(self.ns, "ns")
        _check_sizes(self.dims, "dims", 1, 1 << 16)
        _check_sizes(self.sizes, "sizes", 16, 16384)
        for backend in self.backends:
            check_choice(backend, "backends", BACKENDS)
        check_int(self.repeats, "repeats", 1, 1000)
        check_int(self.threads, "threads", 1, 1024)
        check_float(self.reference_max_pairs, "reference_max_pairs", positive=True)

    def grid(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
        if self.quick:
            return (10_000, 50_000), (3, 16), (256,), 3
        return self.ns, self.dims, self.sizes, self.repeats


@dataclass
class PromptBenchConfig:
    """Text prompts, 3D selection and deletion against a built-in world's truth."""

    run: Path
    """A run folder trained on a built-in world (`feature-splat worlds list`)."""
    classes: tuple[str, ...] = ("chair", "table", "sofa")
    threshold: float | None = None
    """Relevancy threshold for 2D masks and cosine threshold for 3D selection and deletion
    (default: the teacher's own for each, ``prompts.text.selection_threshold``)."""
    out: Path | None = None
    """Output folder for results.json (default: RUN/bench_prompts)."""

    def __post_init__(self) -> None:
        for name in self.classes:
            check_text(name, "classes")
        if self.threshold is not None:
            check_float(self.threshold, "threshold", -1.0, 1.0)


@dataclass
class TextBenchConfig:
    """Text prompts that are not class names (paraphrases, related words) against a world's truth,
    with LERF relevancy and raw cosine each at a threshold calibrated on the training views."""

    run: Path
    """A run folder trained on a built-in world with the synthetic teacher."""
    prompts: tuple[str, ...] = ()
    """``PROMPT=CLASS[+CLASS...]``: a prompt and the classes it means (default: the world's
    fixed list in feature_splat/bench/text.py)."""
    out: Path | None = None
    """Output folder for results.json and prompts.png (default: RUN/bench_text)."""

    def __post_init__(self) -> None:
        for entry in self.prompts:
            prompt, _, classes = entry.partition("=")
            if not prompt.strip() or not classes.strip():
                raise ConfigError(f"--prompts: expected PROMPT=CLASS[+CLASS...], got {entry!r}")


@dataclass
class SamBenchConfig:
    """SAM from any view: masks and latency against the image encoder."""

    world: str = "tabletop"
    width: int = 128
    height: int = 96
    iterations: int = 600
    feature_dim: int = 32
    out: Path = Path("outputs/bench_sam")
    time_vit_b: bool = True
    """Also time a full-size ViT-B image encoder at 1024 px (random weights)."""

    def __post_init__(self) -> None:
        check_text(self.world, "world")
        check_int(self.width, "width", 16, 4096)
        check_int(self.height, "height", 16, 4096)
        check_int(self.iterations, "iterations", 1, 10**8)
        check_int(self.feature_dim, "feature_dim", 1, 4096)


@dataclass
class SpeedupBenchConfig:
    """Speed-up decoder: F channels + decoder against rendering the teacher's width."""

    world: str = "room"
    feature_dims: tuple[int, ...] = (8, 16, 32, 128)
    """F values trained with a linear decoder to the teacher's width."""
    direct: bool = True
    """Also train F = M (the teacher's width) rendered directly, with no decoder."""
    iterations: int = 600
    threads: int = 2
    out: Path = Path("outputs/bench_speedup")

    def __post_init__(self) -> None:
        check_text(self.world, "world")
        if not self.feature_dims and not self.direct:
            raise ConfigError("--feature-dims: expected at least one value (or --direct)")
        _check_sizes(self.feature_dims, "feature_dims", 1, 4096)
        check_int(self.iterations, "iterations", 1, 10**8)
        check_int(self.threads, "threads", 1, 1024)


@dataclass
class ViewerBenchConfig:
    """Viewer frame time (render + JPEG and depth encoding) and click-to-selection time."""

    run: Path | None = None
    """A run folder to measure (the demo's, say) beside the synthetic field."""
    gaussians: int = 200_000
    """Gaussians of the synthetic field (the rasterizer benchmark's scene), 0 to skip it."""
    feature_dim: int = 16
    moving: int = 256
    """Longer side of a frame while the camera moves."""
    still: int = 512
    """Longer side of a frame once it stops."""
    text: str = "chair"
    """The text prompt of the relevancy frames (fields with a text side)."""
    repeats: int = 5
    threads: int = 2
    out: Path = Path("outputs/bench_viewer")

    def __post_init__(self) -> None:
        check_int(self.gaussians, "gaussians", 0, 10**8)
        check_int(self.feature_dim, "feature_dim", 1, 4096)
        check_text(self.text, "text")
        check_int(self.moving, "moving", 16, 4096)
        check_int(self.still, "still", 16, 4096)
        check_int(self.repeats, "repeats", 1, 1000)
        check_int(self.threads, "threads", 1, 1024)
        if self.run is None and self.gaussians == 0:
            raise ConfigError("bench viewer: give --run, or --gaussians above 0")


@dataclass
class LiftBenchConfig:
    """Lifting against distillation on the same RGB Gaussians of each built-in world."""

    worlds: tuple[str, ...] = ("room", "tabletop", "street")
    feature_dim: int = 64
    """F of every field (the demo's)."""
    iterations: int = 1500
    """Training of the RGB Gaussians, and of both distillations (the demo's)."""
    refine: int = 300
    """Distillation iterations of lift + refine."""
    solve_iterations: int = 1
    """Solver steps of the lift + solve case."""
    out: Path = Path("outputs/bench_lift")

    def __post_init__(self) -> None:
        for world in self.worlds:
            check_text(world, "worlds")
        check_int(self.feature_dim, "feature_dim", 1, 4096)
        check_int(self.iterations, "iterations", 1, 10**8)
        check_int(self.refine, "refine", 1, 10**8)
        check_int(self.solve_iterations, "solve_iterations", 1, 1000)


@dataclass
class LiftScaleBenchConfig:
    """Lifting time and peak memory for many Gaussians and a wide teacher (random scene)."""

    gaussians: int = 1_000_000
    teacher_dim: int = 512
    size: int = 256
    """Square image side in pixels."""
    views: int = 4
    stride: int = 8
    """Teacher cell size in pixels."""
    feature_dim: int = 16
    threads: int = 2
    out: Path = Path("outputs/bench_lift_scale")

    def __post_init__(self) -> None:
        check_int(self.gaussians, "gaussians", 1, 10**8)
        check_int(self.teacher_dim, "teacher_dim", 1, 4096)
        check_int(self.size, "size", 16, 4096)
        check_int(self.views, "views", 1, 1000)
        check_int(self.stride, "stride", 1, 256)
        check_int(self.feature_dim, "feature_dim", 1, self.teacher_dim)
        check_int(self.threads, "threads", 1, 1024)


@dataclass
class TrainStepBenchConfig:
    """Seconds per training step of the demo and of tabletop at 256x192 (results.json)."""

    out: Path = Path("outputs/bench_train_step")
    steps: int = 300
    """Timed steps per case (all before the first densification, at the demo's defaults)."""
    warmup: int = 10
    """Untimed steps first (kernel compilation, first-touch memory)."""
    threads: tuple[int, ...] = (1, 2)
    baseline: Path | None = None
    """results.json of an earlier run of this benchmark (say, on an earlier commit): adds the
    speed-up over it and the largest difference of any step's loss."""

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", 1, 100_000)
        check_int(self.warmup, "warmup", 0, 100_000)
        if not self.threads:
            raise ConfigError("--threads: expected at least one value")
        _check_sizes(self.threads, "threads", 1, 1024)

    def cases(self) -> list:
        """The training settings timed: the demo's, and tabletop at 256x192 (F = 16)."""
        from feature_splat.config import DemoConfig
        from feature_splat.training.config import TrainConfig

        return [DemoConfig().train, TrainConfig(data="tabletop", width=256, height=192)]


@dataclass
class RooflineBenchConfig:
    """Roofline of the cpu backend's compositing kernels (results.json + roofline.png)."""

    out: Path = Path("outputs/bench_roofline")
    """Folder for results.json and roofline.png."""
    n: int = 50_000
    dim: int = 16
    size: int = 256
    threads: tuple[int, ...] = (1, 2)
    """Thread counts to measure the machine and the kernels at."""
    repeats: int = 5

    def __post_init__(self) -> None:
        check_int(self.n, "n", 1, 10**8)
        check_int(self.dim, "dim", 1, 1 << 16)
        check_int(self.size, "size", 16, 16384)
        if not self.threads:
            raise ConfigError(f"{flag('threads')}: expected at least one value")
        for t in self.threads:
            check_int(t, "threads", 1, 1024)
        check_int(self.repeats, "repeats", 1, 1000)
