"""``feature-splat bench viewer``: how fast the viewer answers on this machine.

For a run folder (``--run``) and a synthetic field of ``--gaussians`` Gaussians with
``--feature-dim`` channels (the rasterizer benchmark's scene), it times what one browser waits
for, through the viewer's own code: a frame (render through ``ViewerClient.render``, then viser's
JPEG and depth encoding in ``set_background_image``) while moving and once still, in RGB and (for
fields with features) PCA mode, in relevancy mode for ``--text`` (fields with a text side), and a
click until its 3D selection is known. Medians of
``--repeats`` after one warm-up. Never run as a test.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from feature_splat.bench.config import ViewerBenchConfig
from feature_splat.bench.scenes import raster_scene
from feature_splat.bench.timing import median_seconds
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField
from feature_splat.io import write_json
from feature_splat.io.outputs import prepare_output
from feature_splat.viewer.camera import dataset_pose
from feature_splat.viewer.server import FieldViewer, keep_freed_memory
from feature_splat.viewer.session import ViewerClient, ViewerSession


def synthetic_session(gaussians: int, feature_dim: int, size: int) -> tuple[ViewerSession, Any]:
    """A session on the rasterizer benchmark's scene as a field (random colours, a random linear
    decoder to 512 channels), and the pose of its camera."""
    scene = raster_scene(gaussians, feature_dim, size)
    generator = torch.Generator().manual_seed(1)
    field = FeatureField(
        GaussianField.from_activated(
            means=scene.means, scales=scene.scales, opacities=scene.opacities,
            rgb=torch.rand(gaussians, 3, generator=generator), features=scene.features,
            quats=scene.quats,
        ),
        SpeedUpDecoder(feature_dim, 512),
        torch.zeros(3 + feature_dim),
        sh_degree=0,
    )  # fmt: skip
    fov = 2.0 * np.arctan(0.5)  # focal length = image size
    return ViewerSession(field), (np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0]), fov, 1.0)


def _measure(
    name: str, session: ViewerSession, pose: Any, config: ViewerBenchConfig, encode: Callable
) -> dict[str, Any]:
    client = ViewerClient(
        session, long_side=config.still, moving_scale=config.moving / config.still
    )
    client.set_pose(*pose)
    row: dict[str, Any] = {"field": name, "gaussians": len(session.field.gaussians)}
    client.prompt.text = config.text
    for mode in ("rgb", "pca", "relevancy"):
        if mode not in session.modes:
            continue
        client.mode = mode
        for moving in (True, False):

            def frame(moving: bool = moving) -> None:
                shown = client.render(moving)
                encode(shown.image, format="jpeg", jpeg_quality=75 if moving else 90,
                       depth=shown.depth)  # fmt: skip

            key = f"{mode}_{'moving' if moving else 'still'}_ms"
            row[key] = 1000.0 * median_seconds(frame, config.repeats)
    if session.field.gaussians.feature_dim:

        def click() -> None:
            client.clear_selection()
            client.click(0.5, 0.5)
            client.set_pose(*pose)  # a new click sequence each time

        row["click_to_selection_ms"] = 1000.0 * median_seconds(click, config.repeats)
    return row


def run_viewer_bench(config: ViewerBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Measure, print a table and write ``results.json`` to ``config.out``."""
    console = console or Console()
    torch.set_num_threads(config.threads)
    keep_freed_memory()  # as `feature-splat view` does
    out = prepare_output(config.out, "bench")
    cases: list[tuple[str, ViewerSession, Any]] = []
    if config.run is not None:
        session = ViewerSession.open(config.run)
        assert session.cameras is not None
        focus = session.field.gaussians.means.median(0).values
        pose = dataset_pose(session.cameras, 0, focus)
        aspect = session.cameras.width / session.cameras.height
        cases.append((str(config.run), session, (np.array(pose.position), np.array(pose.wxyz),
                                                 pose.fov, aspect)))  # fmt: skip
    if config.gaussians:
        name = f"synthetic N={config.gaussians:,} D={config.feature_dim}"
        cases.append((name, *synthetic_session(config.gaussians, config.feature_dim, 512)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    viewer = FieldViewer(cases[0][1], port=port)  # its encoder is the one browsers get
    try:
        rows = [
            _measure(name, session, pose, config, viewer.server.scene.set_background_image)
            for name, session, pose in cases
        ]
    finally:
        viewer.stop()
    results = {"config": {k: str(v) for k, v in vars(config).items()}, "results": rows}
    write_json(out / "results.json", results)
    table = Table(title=f"viewer, {config.threads} threads (ms, median of {config.repeats})")
    table.add_column("measure")
    for row in rows:
        table.add_column(f"{row['field']} ({row['gaussians']:,} Gaussians)")
    for key in sorted({k for row in rows for k in row if k.endswith("_ms")}):
        table.add_row(key, *(f"{row[key]:.0f}" if key in row else "-" for row in rows))
    console.print(table)
    console.print(f"results: {out / 'results.json'}")
    return results
