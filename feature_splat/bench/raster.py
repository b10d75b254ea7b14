"""``feature-splat bench raster``: wall time and peak memory of every rasterizer backend.

For each (N, D, image size) the seeded scene of :func:`~feature_splat.bench.scenes.raster_scene`
is rendered by each backend available in this run: forward (no autograd) and forward + backward
(a loss on features, depth and alpha), median of ``repeats`` runs after a warm-up, with a fixed
thread count. Ratios are against ``reference`` measured in the same run. Never run as a test.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from feature_splat.bench.config import RasterBenchConfig
from feature_splat.bench.scenes import BenchScene, raster_scene
from feature_splat.errors import BackendUnavailableError
from feature_splat.io import write_json, write_png
from feature_splat.io.outputs import prepare_output
from feature_splat.rasterizer import project, rasterize
from feature_splat.rasterizer.gsplat_backend import gsplat_available
from feature_splat.rasterizer.reference import tile_intersections
from feature_splat.visualize import depth_rgb, pca_rgb


@dataclass
class Measurement:
    backend: str
    n: int
    dim: int
    size: int
    forward_s: float | None = None
    forward_backward_s: float | None = None
    peak_mb: float | None = None
    skipped: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (sampled every 1 ms)."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc: fall back to the lifetime peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)

    def __enter__(self) -> PeakRSS:
        self._start = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)


def _pixel_pairs(scene: BenchScene) -> int:
    """Pixel x Gaussian pairs a tile rasterizer evaluates (tiles touched x 256)."""
    proj = project(
        *scene.args()[:4],
        scene.viewmats,
        scene.Ks,
        scene.width,
        scene.height,
        near_plane=0.01,
        far_plane=1e10,
        eps2d=0.3,
    )
    return len(tile_intersections(proj, scene.width, scene.height, 16)[0]) * 256


def _run_once(args: list, weights: torch.Tensor, backend: str, backward: bool) -> None:
    """One render (and backward through a loss on features, depth and alpha)."""
    if not backward:
        with torch.no_grad():
            rasterize(*args, backend=backend)
    else:
        params = [t.detach().requires_grad_() for t in args[:5]]
        out = rasterize(*params, *args[5:], backend=backend)
        loss = (out.features[0] * weights).sum() + out.depth.mean() + out.alpha.sum()
        loss.backward()
    if args[0].is_cuda:
        torch.cuda.synchronize()


def _scene_args(n: int, dim: int, size: int, backend: str) -> tuple[list, torch.Tensor]:
    scene = raster_scene(n, dim, size)
    device = "cuda" if backend == "gsplat" else "cpu"
    args = [t.to(device) if isinstance(t, torch.Tensor) else t for t in scene.args()]
    weights = torch.randn(size, size, dim, generator=torch.Generator().manual_seed(1)).to(device)
    return args, weights


def _time_backend(n: int, dim: int, size: int, backend: str, repeats: int) -> tuple[float, float]:
    """Median forward and forward+backward seconds after one warm-up run each."""
    args, weights = _scene_args(n, dim, size, backend)
    medians = []
    for backward in (False, True):
        _run_once(args, weights, backend, backward)  # warm-up: compilation, caches
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _run_once(args, weights, backend, backward)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def _peak_memory_mb(n: int, dim: int, size: int, backend: str, threads: int) -> float:
    """Peak memory of one forward+backward, measured in a fresh process (MB above its start).

    A fresh process, because the allocator of a long-running one keeps freed memory and hides peaks.
    On the CPU this includes loading the compiled kernels, so it slightly overstates.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_peak_memory_child, (n, dim, size, backend, threads))


def _peak_memory_child(n: int, dim: int, size: int, backend: str, threads: int) -> float:
    torch.set_num_threads(threads)
    args, weights = _scene_args(n, dim, size, backend)
    if backend == "gsplat":
        torch.cuda.reset_peak_memory_stats()
        _run_once(args, weights, backend, backward=True)
        return torch.cuda.max_memory_allocated() / 2**20
    with PeakRSS() as peak:
        _run_once(args, weights, backend, backward=True)
    return peak.peak_bytes / 2**20


def available_backends() -> list[str]:
    """Backends that can run in this process."""
    names = ["reference", "cpu"]
    if torch.cuda.is_available() and gsplat_available():
        names.append("gsplat")
    return names


def run_raster_bench(config: RasterBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark grid; prints a table, writes ``results.json`` and PNGs to ``config.out``."""
    console = console or Console()
    out = prepare_output(config.out, "bench-raster")
    torch.set_num_threads(config.threads)
    ns, dims, sizes, repeats = config.grid()
    backends = list(config.backends) or available_backends()
    missing = sorted(set(backends) - set(available_backends()))
    if missing:
        raise BackendUnavailableError(
            f"--backends: {', '.join(missing)} cannot run here (gsplat needs CUDA and the gsplat "
            f"package); available: {', '.join(available_backends())}"
        )
    results: list[Measurement] = []
    cases = [(n, d, s) for s in sizes for n in ns for d in dims]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench raster", total=len(cases) * len(backends))
        for n, dim, size in cases:
            pairs = _pixel_pairs(raster_scene(n, dim, size)) if "reference" in backends else 0
            row: dict[str, Measurement] = {}
            for backend in backends:
                progress.update(task, description=f"{backend} N={n} D={dim} {size}px")
                m = Measurement(backend, n, dim, size)
                if backend == "reference" and pairs > config.reference_max_pairs:
                    m.skipped = (
                        f"{pairs:.2g} pixel-Gaussian pairs > {config.reference_max_pairs:.2g}"
                    )
                else:
                    m.forward_s, m.forward_backward_s = _time_backend(
                        n, dim, size, backend, repeats
                    )
                    m.peak_mb = _peak_memory_mb(n, dim, size, backend, config.threads)
                row[backend] = m
                progress.advance(task)
            ref = row.get("reference")
            for m in row.values():
                if ref is not None and ref.skipped is None and m.skipped is None:
                    m.ratios = {
                        "forward_speedup_vs_reference": ref.forward_s / m.forward_s,
                        "forward_backward_speedup_vs_reference": ref.forward_backward_s
                        / m.forward_backward_s,
                    }
            results.extend(row.values())

    report = {
        "benchmark": "raster",
        "command": "feature-splat bench raster" + (" --quick" if config.quick else ""),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": config.threads,
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "results": [asdict(m) for m in results],
    }
    write_json(out / "results.json", report)
    _write_pngs(out, raster_scene(ns[0], max(dims), sizes[0]))
    console.print(_table(results))
    console.print(f"results: {out / 'results.json'}")
    return report


def _write_pngs(out: Path, scene: BenchScene) -> None:
    """The benchmark scene as rendered by the cpu backend: feature PCA, depth and alpha."""
    with torch.no_grad():
        render = rasterize(*scene.args(), backend="cpu")
    write_png(
        out / "scene_features_pca.png", pca_rgb(render.features[0], render.alpha[0, ..., 0] > 0.5)
    )
    write_png(out / "scene_depth.png", depth_rgb(render.depth[0], render.alpha[0]))
    write_png(out / "scene_alpha.png", render.alpha[0].expand(-1, -1, 3))


def _table(results: list[Measurement]) -> Table:
    table = Table(title="rasterizer benchmark (median seconds; speed-up vs reference, same run)")
    for column in (
        "backend",
        "N",
        "D",
        "size",
        "fwd s",
        "fwd+bwd s",
        "peak MB",
        "fwd x",
        "fwd+bwd x",
    ):
        table.add_column(column, justify="right")
    for m in results:
        if m.skipped:
            table.add_row(
                m.backend, f"{m.n:,}", str(m.dim), str(m.size), "skipped", m.skipped, "", "", ""
            )
            continue
        table.add_row(
            m.backend,
            f"{m.n:,}",
            str(m.dim),
            str(m.size),
            f"{m.forward_s:.4f}",
            f"{m.forward_backward_s:.4f}",
            f"{m.peak_mb:.0f}",
            f"{m.ratios.get('forward_speedup_vs_reference', float('nan')):.1f}",
            f"{m.ratios.get('forward_backward_speedup_vs_reference', float('nan')):.1f}",
        )
    return table
