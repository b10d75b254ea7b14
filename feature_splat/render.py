"""``feature-splat render``: images of a run's field at dataset views, on an orbit, or at one camera."""

from __future__ import annotations

from pathlib import Path

import torch

from feature_splat.cameras import Cameras, look_at
from feature_splat.io import write_png
from feature_splat.io.names import view_file_names
from feature_splat.io.outputs import prepare_output
from feature_splat.run_folder import Run
from feature_splat.visualize import depth_rgb, pca_rgb

RENDER_KIND = "render"


def orbit_around(field_means: torch.Tensor, cameras: Cameras, n_views: int) -> Cameras:
    """``n_views`` cameras on a horizontal circle around the Gaussians' median (the cameras'
    centroid for a field without Gaussians), at the dataset cameras' mean distance and height,
    with the first camera's intrinsics."""
    centers = cameras.centers
    target = field_means.median(dim=0).values if len(field_means) else centers.mean(dim=0)
    radius = float((centers - target).norm(dim=-1).mean())
    height = float((centers[:, 2] - target[2]).mean())
    angles = torch.arange(n_views) * (2 * torch.pi / n_views)
    eyes = torch.stack(
        [target[0] + radius * torch.cos(angles), target[1] + radius * torch.sin(angles),
         torch.full_like(angles, float(target[2]) + height)], dim=-1,
    )  # fmt: skip
    K = cameras.Ks[:1].expand(n_views, 3, 3)
    return Cameras(look_at(eyes, target), K, cameras.width, cameras.height)


@torch.no_grad()
def render_run(
    run_dir: Path,
    views: list[int],
    orbit: int = 0,
    eye_target: tuple[float, ...] | None = None,
    out: Path | None = None,
) -> Path:
    """Render a run's field at dataset views (default: held-out), ``orbit`` views around the scene,
    or one camera at ``eye_target`` = (eye, target) with the dataset's intrinsics.

    Writes one PNG per view into ``out`` (default ``RUN/rendered``): RGB | depth | feature PCA
    (RGB-only fields: RGB | depth).
    """
    run = Run(run_dir)
    field, dataset = run.field, run.dataset
    out = prepare_output(out or run.path / "rendered", RENDER_KIND, inputs=[dataset.root])
    if orbit > 0:
        cameras = orbit_around(field.gaussians.means, dataset.cameras, orbit)
        names = [f"orbit_{i:03d}" for i in range(orbit)]
    elif eye_target is not None:
        viewmat = look_at(torch.tensor(eye_target[:3]), torch.tensor(eye_target[3:]))
        cameras = Cameras(viewmat, dataset.cameras.Ks[:1], dataset.width, dataset.height)
        names = ["look_at"]
    else:
        chosen = run.views(views)
        cameras = dataset.cameras[torch.tensor(chosen)]
        file_names = view_file_names(dataset.image_names)
        names = [file_names[v] for v in chosen]
    for i, name in enumerate(names):
        render = field.render(cameras[i])
        panels = [render.rgb[0].clamp(0, 1), depth_rgb(render.depth[0], render.alpha[0])]
        if field.gaussians.feature_dim:
            panels.append(pca_rgb(render.features[0]))
        write_png(out / f"{name}.png", torch.cat(panels, dim=1))
    return out
