"""Per-scene feature distillation: fit Gaussians to posed images and a teacher's feature maps.

One step renders RGB and F feature channels of one training view in a single rasterizer pass, pools
the features to the teacher's cells, decodes them to the teacher's width, and minimises
``0.8 L1 + 0.2 (1 - SSIM)`` on RGB plus ``gamma`` times the feature loss. gsplat's DefaultStrategy
densifies and prunes from the rasterizer's ``meta``. Checkpoints hold every piece of state (RNGs,
optimizer moments, the view queue), so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data import Dataset
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError, DatasetError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, num_sh_bases, rgb_to_sh0
from feature_splat.io.checkpoints import read_checkpoint, write_checkpoint
from feature_splat.near_field import NEAR_FIELD, find_veils, scene_scale
from feature_splat.training.config import MIN_IMAGE_SIDE, TrainConfig
from feature_splat.training.loop import LiveControl, run_steps
from feature_splat.training.losses import distillation_loss, photometric_loss

CHECKPOINT_NAME = "checkpoint.pt"
RAY_DEPTHS = (0.3, 1.7)
"""Depths of ray-initialised Gaussians, as multiples of each camera's distance to the focus."""
RAY_CANDIDATES = 24
"""Depths tried along each initial ray, besides the far shell."""
FAR_SHELL = 3.0
"""Radius of the far shell of ray-initialised Gaussians, in the cameras' largest distance to the
focus."""
FAR_SHARE = 0.1
"""Largest share of ray-initialised Gaussians on the far shell."""
FAR_TOLERANCE = 0.02
"""Colour disagreement by which the far shell may lose and still be chosen."""


def _gsplat_radii_per_axis() -> bool:
    """Whether the installed gsplat's strategies read radii per axis ([C, N, 2], gsplat >= 1.5)
    rather than one per Gaussian ([C, N], gsplat 1.4, which nerfstudio 1.1.5 pins)."""
    major, minor = (int(part) for part in metadata.version("gsplat").split(".")[:2])
    return (major, minor) >= (1, 5)


GSPLAT_RADII_PER_AXIS = _gsplat_radii_per_axis()


def strategy_info(meta: dict) -> dict:
    """The rasterizer's meta (radii [C, N, 2]) as the installed gsplat's strategies read it."""
    if GSPLAT_RADII_PER_AXIS:
        return meta
    return {**meta, "radii": meta["radii"].max(dim=-1).values}


def initial_gaussians(
    dataset: Dataset, config: TrainConfig, generator: torch.Generator
) -> tuple[GaussianField, Tensor]:
    """``config.init_points`` Gaussians placed as ``config.init`` says, sized by their
    neighbours, and the background colour to start from [3]: with ``rays``, the median colour
    of the pixels found to be distant (so the background, not Gaussians, explains a plain sky);
    otherwise black."""
    background = torch.zeros(3)
    n = config.init_points
    has_points = dataset.points is not None and len(dataset.points) > 0
    mode = ("points" if has_points else "rays") if config.init == "auto" else config.init
    if mode == "points":
        if not has_points:
            raise DatasetError(f"--init points: {dataset.root or 'the dataset'} has no point cloud")
        pick = torch.randperm(len(dataset.points), generator=generator)[:n]
        means = dataset.points[pick].float()
        colors = (
            dataset.point_colors[pick].float()
            if dataset.point_colors is not None
            else torch.full_like(means, 0.5)
        )
    elif mode == "rays":
        means, colors, far = points_on_rays(dataset, n, generator)
        if far.any():
            background = colors[far].median(dim=0).values
    else:
        centers = dataset.cameras.centers
        radius = scene_scale(dataset.cameras)
        lo, hi = centers.min(0).values - radius, centers.max(0).values + radius
        means = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
        colors = torch.rand(n, 3, generator=generator)
    scales = _neighbour_distance(means).clamp_min(1e-4)[:, None].expand(-1, 3)
    quats = torch.zeros(len(means), 4)
    quats[:, 0] = 1.0
    gaussians = GaussianField(
        means=means,
        quats=quats,
        log_scales=torch.log(scales).clone(),
        logit_opacities=torch.full(
            (len(means),), math.log(config.init_opacity / (1 - config.init_opacity))
        ),
        sh0=rgb_to_sh0(colors)[:, None, :],
        shN=torch.zeros(len(means), num_sh_bases(config.sh_degree) - 1, 3),
        features=0.01 * torch.randn(len(means), config.feature_dim, generator=generator),
    )
    return gaussians, background


def focus_point(cameras: Cameras) -> Tensor:
    """The point nearest to every camera's optical axis (least squares): where a capture looks.
    For axes that are (nearly) parallel, as in a forward-facing capture, the cameras' centroid
    moved one scene scale along their mean viewing direction."""
    centers = cameras.centers.double()
    axes = cameras.viewmats[:, 2, :3].double()  # camera z (forward) in world coordinates
    axes = axes / axes.norm(dim=-1, keepdim=True)
    projectors = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]
    system, target = projectors.sum(0), (projectors @ centers[:, :, None]).sum(0)[:, 0]
    eigenvalues = torch.linalg.eigvalsh(system)
    if eigenvalues[0] > 1e-3 * eigenvalues[-1]:
        point = torch.linalg.solve(system, target)
        if bool(((point - centers) * axes).sum(-1).gt(0).float().mean() > 0.5):  # in front
            return point.float()
    spread = 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-3))
    return (centers.mean(0) + spread * axes.mean(0)).float()


def points_on_rays(
    dataset: Dataset, n: int, generator: torch.Generator, candidates: int = RAY_CANDIDATES
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` points [n, 3] on the rays of random pixels of the training views, coloured by those
    pixels [n, 3], each at the depth its colour agrees with best in the other training views
    (:func:`place_on_rays`), and whether each lies on the far shell [n]. At most
    :data:`FAR_SHARE` do: a smooth sky needs few Gaussians, and large far ones slow every
    render; the rest lie in the scene."""
    means, colors, far = place_on_rays(dataset, 2 * n, generator, candidates)
    far_kept = min(int(far.sum()), max(n - int((~far).sum()), math.ceil(FAR_SHARE * n)))
    keep = torch.cat([(~far).nonzero()[: n - far_kept, 0], far.nonzero()[:far_kept, 0]])
    return means[keep], colors[keep], far[keep]


def place_on_rays(
    dataset: Dataset, n: int, generator: torch.Generator, candidates: int = RAY_CANDIDATES
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` points [n, 3] on the rays of random pixels of the training views, their pixels'
    colours [n, 3], and whether each lies on the far shell [n] (bool).

    The depths tried along a ray are ``candidates`` stratified draws within :data:`RAY_DEPTHS`
    times the camera's distance to the :func:`focus_point` (where the scene is, as the camera
    arrangement tells), plus the far shell: where the ray leaves a sphere of :data:`FAR_SHELL`
    times the cameras' largest distance around the focus (a sky or distant background). A depth's
    score is the median, over the other training views that see it, of the colour difference
    with the pixel it falls on (the median tolerates occlusion). The far shell wins ties within
    :data:`FAR_TOLERANCE`, and so does a ray that agrees equally well at most of its depths: sky
    pixels, which carry no depth evidence, go there rather than float in the scene as fog.
    """
    cameras, train = dataset.cameras, torch.tensor(dataset.train_indices)
    views = train[torch.randint(len(train), (n,), generator=generator)]
    u = torch.rand(n, generator=generator) * dataset.width
    v = torch.rand(n, generator=generator) * dataset.height
    colors = dataset.images[views, v.long(), u.long()]
    Ks, viewmats = cameras.Ks[views], cameras.viewmats[views]
    directions = torch.stack(
        [(u - Ks[:, 0, 2]) / Ks[:, 0, 0], (v - Ks[:, 1, 2]) / Ks[:, 1, 1], torch.ones(n)], dim=-1
    )  # camera space, z = 1: the point at depth t is t * direction
    rays = (directions[:, None, :] @ viewmats[:, :3, :3])[:, 0, :]  # world, R^T d
    origins = cameras.centers[views]
    focus = focus_point(cameras)
    offsets = origins - focus
    distance = offsets.norm(dim=-1)
    low, high = RAY_DEPTHS
    strata = (
        torch.arange(candidates) + torch.rand(n, candidates, generator=generator)
    ) / candidates
    depths = distance[:, None] * (low + (high - low) * strata)  # [n, K]
    radius = FAR_SHELL * float(distance.max())  # |offset + t ray| = radius, the positive root
    a, b = rays.square().sum(-1), (rays * offsets).sum(-1)
    c = offsets.square().sum(-1) - radius**2
    far = (-b + (b * b - a * c).clamp_min(0).sqrt()) / a
    depths = torch.cat([depths, far[:, None]], dim=1)  # [n, K + 1], the far shell last
    scores = torch.cat(
        [_colour_disagreement(dataset, origins[s:e], rays[s:e], depths[s:e], colors[s:e],
                              views[s:e]) for s, e in _chunks(n, 1024)]
    )  # fmt: skip
    best = scores[:, :-1].argmin(dim=1)
    lowest = scores[torch.arange(n), best]
    undecided = (scores[:, :-1] <= lowest[:, None] + FAR_TOLERANCE).float().mean(1) > 0.5
    far_wins = (scores[:, -1] <= lowest + FAR_TOLERANCE) | undecided
    depth = torch.where(far_wins, far, depths[torch.arange(n), best])
    return origins + depth[:, None] * rays, colors, far_wins


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _colour_disagreement(
    dataset: Dataset, origins: Tensor, rays: Tensor, depths: Tensor, colors: Tensor, views: Tensor
) -> Tensor:
    """[n, K]: for each point ``origins + depths * rays``, the median over the training views
    other than its own that see it of the largest channel difference between its colour and the
    pixel it falls on (1 where fewer than two views see it)."""
    points = origins[:, None, :] + depths[..., None] * rays[:, None, :]  # [n, K, 3]
    train = torch.tensor(dataset.train_indices)
    cameras = dataset.cameras[train]
    pixels, z = cameras.project(points.reshape(-1, 3))  # [C, n K, 2], [C, n K]
    x, y = pixels.unbind(-1)
    seen = (z > 0) & (x >= 0) & (x < dataset.width) & (y >= 0) & (y < dataset.height)
    seen &= train[:, None] != views.repeat_interleave(depths.shape[1])[None]
    xi = x.clamp(0, dataset.width - 1).long()
    yi = y.clamp(0, dataset.height - 1).long()
    observed = dataset.images[train[:, None], yi, xi]  # [C, n K, 3]
    difference = (observed - colors.repeat_interleave(depths.shape[1], 0)[None]).abs().amax(-1)
    difference = torch.where(seen, difference, torch.full_like(difference, float("nan")))
    median = difference.nanmedian(dim=0).values
    enough = seen.sum(0) >= 2
    return torch.where(enough, median, torch.ones_like(median)).reshape(depths.shape)


def _neighbour_distance(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Root mean squared distance of each point to its k nearest neighbours (3DGS's initial scale)."""
    out = torch.empty(len(points))
    for start in range(0, len(points), chunk):
        d2 = torch.cdist(points[start : start + chunk], points).square()
        nearest = d2.topk(min(k + 1, len(points)), largest=False).values[:, 1:]
        out[start : start + chunk] = nearest.mean(-1).sqrt()
    return out


class Trainer:
    """Optimises a :class:`FeatureField` on the training views of a dataset."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        teacher_maps: Tensor | None,
        teacher_dim: int,
        grid_stride: int | None = None,
    ) -> None:
        """``teacher_maps`` [V, h, w, M] holds the teacher's features of every view (train and
        test), or is None to fit RGB only (``feature_dim`` 0); ``grid_stride`` is the teacher's
        stride when its cells tile the image exactly (:func:`~feature_splat.teachers.grid_stride`),
        else None (rendered maps are resampled)."""
        if not dataset.train_indices:
            raise DatasetError("Trainer: the dataset has no training views")
        if min(dataset.width, dataset.height) < MIN_IMAGE_SIDE:
            raise DatasetError(
                f"Trainer: images of {dataset.width}x{dataset.height} pixels; training needs at "
                f"least {MIN_IMAGE_SIDE} per side (SSIM's window)"
            )
        self.config, self.dataset, self.teacher_maps = config, dataset, teacher_maps
        self.stride = grid_stride
        self.scene_scale = scene_scale(dataset.cameras)
        self.near_plane = config.near_plane * self.scene_scale
        torch.manual_seed(config.seed)  # gsplat's split draws from the global generator
        self.view_generator = torch.Generator().manual_seed(config.seed)
        gaussians, background = initial_gaussians(dataset, config, self.view_generator)
        self.params = gaussians.to_parameters()
        rgb_only = teacher_maps is None
        self.decoder = SpeedUpDecoder(
            config.feature_dim,
            teacher_dim,
            hidden=config.decoder_hidden if config.decoder == "mlp" and not rgb_only else (),
            identity=config.decoder == "none" or rgb_only,
        )
        self.background = torch.nn.Parameter(
            torch.cat([background, torch.zeros(config.feature_dim)])
        )
        lr = config.lr
        rates = {
            "means": lr.means * self.scene_scale, "quats": lr.quats, "scales": lr.scales,
            "opacities": lr.opacities, "sh0": lr.sh0, "shN": lr.shN, "features": lr.features,
        }  # fmt: skip
        # fused: one kernel per step instead of a dozen tensor operations (5x faster on a CPU)
        self.optimizers = {
            name: torch.optim.Adam([self.params[name]], lr=rate, eps=1e-15, fused=True)
            for name, rate in rates.items()
        }
        self.extra_optimizers = {
            "background": torch.optim.Adam([self.background], lr=lr.background, fused=True)
        }
        if not self.decoder.identity:
            self.extra_optimizers["decoder"] = torch.optim.Adam(
                self.decoder.parameters(), lr=lr.decoder, fused=True
            )
        d = config.densify
        self.strategy = DefaultStrategy(
            refine_start_iter=d.refine_start, refine_stop_iter=d.refine_stop,
            refine_every=d.refine_every, reset_every=d.reset_every, grow_grad2d=d.grow_grad2d,
            grow_scale3d=d.grow_scale3d, prune_opa=d.prune_opacity, verbose=False,
        )  # fmt: skip
        self.strategy.check_sanity(self.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.view_queue: list[int] = []
        self.step = 0
        self.field().check_values(dataset.cameras)  # once: every step renders unchecked

    # -- the model ------------------------------------------------------------------------------
    def active_sh_degree(self) -> int:
        return min(self.config.sh_degree, self.step // max(self.config.sh_degree_every, 1))

    def field(self) -> FeatureField:
        """The field as it stands (sharing the trainable tensors)."""
        return FeatureField(
            GaussianField.from_parameters(dict(self.params)),
            self.decoder,
            self.background,
            self.active_sh_degree(),
            self.near_plane,
        )

    # -- one step -------------------------------------------------------------------------------
    def _next_view(self) -> int:
        if not self.view_queue:
            order = torch.randperm(len(self.dataset.train_indices), generator=self.view_generator)
            self.view_queue = [self.dataset.train_indices[i] for i in order.tolist()]
        return self.view_queue.pop()

    def train_step(self) -> dict[str, Tensor | float]:
        """One optimisation step on one training view; returns losses (0-d tensors: reading
        them, which the progress bar does every 10 steps, is the only host sync) and the
        Gaussian count."""
        config = self.config
        view = self._next_view()
        progress = self.step / max(config.iterations - 1, 1)
        means_lr = (
            self.scene_scale
            * config.lr.means
            * (config.lr.means_final / config.lr.means) ** progress
        )
        for group in self.optimizers["means"].param_groups:
            group["lr"] = means_lr

        render = self.field().render(
            self.dataset.cameras[view], backend=config.backend, validate=False
        )
        target = self.dataset.images[view]
        rgb = render.rgb[0]
        if self.dataset.masks is not None:  # invalid pixels are blacked out in both
            valid = self.dataset.masks[view][..., None].to(rgb.dtype)
            rgb, target = rgb * valid, target * valid
        rgb_loss = photometric_loss(rgb, target)
        if self.teacher_maps is None:
            feature_loss = torch.zeros(())
        else:
            feature_loss = distillation_loss(
                render.features[0], self.teacher_maps[view], self.decoder, self.stride,
                config.feature_loss,
            )  # fmt: skip
        loss = rgb_loss + config.feature_weight * feature_loss

        info = strategy_info(render.meta)
        self.strategy.step_pre_backward(
            self.params, self.optimizers, self.strategy_state, self.step, info
        )
        loss.backward()
        for optimizer in [*self.optimizers.values(), *self.extra_optimizers.values()]:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.strategy.step_post_backward(
            self.params, self.optimizers, self.strategy_state, self.step, info, packed=False
        )
        if config.densify.prune_veils and self.step % config.densify.refine_every == 0:
            self.prune_veils()
        self.step += 1
        mse = ((rgb.detach() - target) ** 2).mean()
        return {
            "loss": loss.detach(),
            "feature_loss": feature_loss.detach(),
            "psnr": -10 * torch.log10(mse.clamp_min(1e-12)),
            "gaussians": len(self.params["means"]),
        }

    def prune_veils(self) -> int:
        """Remove the Gaussians that veil a training view from inside its near field
        (:mod:`feature_splat.near_field`); returns how many."""
        gaussians = GaussianField.from_parameters(dict(self.params))
        cameras = self.dataset.cameras[torch.tensor(self.dataset.train_indices)]
        veils = find_veils(gaussians, cameras, NEAR_FIELD * self.scene_scale)
        if veils.any():
            remove(self.params, self.optimizers, self.strategy_state, veils)
        return int(veils.sum())

    # -- the loop -------------------------------------------------------------------------------
    def train(
        self, show_progress: bool = True, until: int | None = None, live: LiveControl | None = None
    ) -> None:
        """Run to step ``until`` (default ``config.iterations``), checkpointing every
        ``checkpoint_every`` steps and on Ctrl-C; ``live``: a viewer follows (and may pause) it."""
        config = self.config
        run_steps(
            self,
            total=config.iterations,
            until=until,
            checkpoint_every=config.checkpoint_every,
            label="train",
            status=lambda stats: (
                f"loss {stats['loss']:.4f}  PSNR {stats['psnr']:.2f}  N {stats['gaussians']:,}"
            ),
            show_progress=show_progress,
            live=live,
        )

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.config.out / CHECKPOINT_NAME

    def save_checkpoint(self) -> Path:
        """Write every piece of training state atomically."""
        state = {
            "step": self.step,
            "config": self.config.to_dict(),
            "params": {k: v.detach() for k, v in self.params.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "extra_optimizers": {k: v.state_dict() for k, v in self.extra_optimizers.items()},
            "decoder": self.decoder.state_dict(),
            "background": self.background.detach(),
            "strategy_state": self.strategy_state,
            "view_queue": list(self.view_queue),
            "view_generator": self.view_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        return write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self, path: Path | None = None) -> None:
        """Restore the state written by :meth:`save_checkpoint` (tensors and plain containers
        only: the file is read with ``weights_only=True``, so it cannot run code)."""
        path = path or self.checkpoint_path
        state = read_checkpoint(path, "checkpoint")
        params = state.get("params") if isinstance(state, dict) else None
        if not isinstance(params, dict) or not all(isinstance(v, Tensor) for v in params.values()):
            raise CheckpointError(
                f"{path}: params: expected a dict of tensors (a training checkpoint)"
            )
        features = params.get("features")
        if not isinstance(features, Tensor) or features.ndim != 2:
            raise CheckpointError(f"{path}: params.features: expected a tensor [N, F]")
        if features.shape[1] != self.config.feature_dim:
            raise CheckpointError(
                f"{path}: checkpoint has features of shape {list(features.shape)}, the config "
                f"asks for {self.config.feature_dim} channels"
            )
        try:
            self._restore(state)
        except Exception as err:
            raise CheckpointError(f"{path}: does not match this run ({err})") from None

    def _restore(self, state: dict) -> None:
        if set(state["params"]) != set(self.params):
            raise KeyError(f"parameters {sorted(state['params'])}")
        fields = GaussianField.from_parameters(state["params"])  # checks the shapes agree
        fields.check_finite()
        for name, value in state["params"].items():
            self.params[name] = torch.nn.Parameter(value.clone())
            optimizer = self.optimizers[name]
            optimizer.param_groups[0]["params"] = [self.params[name]]
            optimizer.state.clear()
            optimizer.load_state_dict(state["optimizers"][name])
        self.decoder.load_state_dict(state["decoder"])
        with torch.no_grad():
            self.background.copy_(state["background"])
        for name, optimizer in self.extra_optimizers.items():
            optimizer.load_state_dict(state["extra_optimizers"][name])
        self.strategy_state = state["strategy_state"]
        queue = [int(v) for v in state["view_queue"]]
        if not set(queue) <= set(self.dataset.train_indices):
            raise ValueError("its view queue names views that are not training views")
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step {step}")
        self.view_queue = queue
        self.view_generator.set_state(state["view_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = step
