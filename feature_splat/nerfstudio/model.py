"""The feature-splat model for nerfstudio: splatfacto's parts, our rasterizer, decoder and loss.

Splatfacto renders with gsplat's CUDA ``rasterization`` and calls ``.cuda()`` on the way, so it
cannot train on a CPU. This subclass keeps its configuration, densification (gsplat's
DefaultStrategy), schedules, camera optimiser, losses and callbacks, and replaces what runs the
Gaussians: one pass of our ``rasterize()`` (the numba kernels on CPU, gsplat on CUDA) renders RGB
and F feature channels together; the speed-up decoder lifts the features to the teacher's width
at its cells and our distillation loss compares them with the cached teacher map.

nerfstudio's viewer gets the prompts: a text prompt and its negatives (LERF relevancy), a click
for a point prompt, and a render mode shown in the viewer's ``feature_view`` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove
from nerfstudio.cameras.cameras import Cameras as NerfstudioCameras
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig, get_viewmat
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerClick,
    ViewerControl,
    ViewerDropdown,
    ViewerText,
)
from pytorch_msssim import SSIM
from torch import Tensor
from torch.nn import Parameter

from feature_splat.cameras import Cameras, intrinsics_from_fov, look_at
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import FeatureSplatError
from feature_splat.eval.metrics import feature_cosine
from feature_splat.field import FeatureField
from feature_splat.gaussians import SH_C0
from feature_splat.near_field import NEAR_FIELD, find_veils, scene_scale
from feature_splat.nerfstudio.datamanager import SOURCE_KEY, FeatureSource
from feature_splat.nerfstudio.params import (
    VIEWER_GREY,
    gaussians_from_splatfacto,
    rendered_background,
    splatfacto_params,
)
from feature_splat.prompts.text import CANONICAL_NEGATIVES
from feature_splat.teachers import grid_stride
from feature_splat.training.config import InitName, TrainConfig, resolve_feature_loss
from feature_splat.training.losses import decode_at_cells, distillation_loss
from feature_splat.training.trainer import initial_gaussians, strategy_info
from feature_splat.viewer.frames import TextPrompt, render_frame
from feature_splat.visualize import PcaColours, heat_rgb

RenderMode = Literal["rgb", "pca", "relevancy", "similarity"]


@dataclass
class FeatureSplatModelConfig(SplatfactoModelConfig):
    """Splatfacto's settings, plus the feature channels, decoder and feature loss.

    Defaults differ from splatfacto where our rasterizer or the CPU ask for it: no absgrad (and
    our trainer's threshold for plain gradients), full resolution from the start, a learned
    background as our trainer has, and SH degree 1.
    """

    _target: type = field(default_factory=lambda: FeatureSplatModel)
    feature_dim: int = 16
    """Feature channels per Gaussian (F); 0 without a feature cache."""
    decoder: Literal["linear", "mlp"] = "linear"
    """Speed-up decoder F -> the teacher's width: linear (exact per-Gaussian decoding) or an MLP."""
    decoder_hidden: tuple[int, ...] = (128,)
    feature_loss: Literal["auto", "l1", "cosine"] = "auto"
    """auto: 1 - cosine for language-aligned teachers (synthetic, CLIP, LSeg), L1 otherwise, as
    `feature-splat train` chooses."""
    feature_weight: float = 1.0
    """Weight of the feature loss against splatfacto's RGB loss."""
    background_color: Literal["learned", "random", "black", "white"] = "learned"
    """learned: an optimised RGB + feature background, as `feature-splat train` has."""
    use_absgrad: bool = False
    densify_grad_thresh: float = 0.0003
    num_downscales: int = 0
    """Splatfacto starts at 1/4 resolution (2); at the small images a CPU trains on, its
    screen-size split then runs away (room at 128 x 96: 486k Gaussians in 1500 steps)."""
    sh_degree: int = 1
    init: InitName = "auto"
    """Initial Gaussians: the dataset's points (auto, when it has them), on the training rays at
    the depth the views agree on (our floater-free start without points), or a box."""
    init_points: int = 30_000
    init_opacity: float = 0.1
    near_plane: float = 0.02
    """Nearest rendered depth, as a fraction of the scene scale."""
    prune_veils: bool = True
    """Every refine_every steps, remove the Gaussians that veil a training camera from inside
    its near field, as `feature-splat train --densify.prune-veils` does."""
    seed: int = 0


class FeatureSplatModel(SplatfactoModel):
    """Splatfacto with F feature channels, rendered by feature-splat's rasterizer."""

    config: FeatureSplatModelConfig

    # -- set-up ---------------------------------------------------------------------------------
    def populate_modules(self) -> None:
        """Splatfacto's modules, with our initial Gaussians (no CUDA, no downloads)."""
        config = self.config
        source: FeatureSource = self.kwargs["metadata"][SOURCE_KEY]
        self.teacher = source.teacher
        self.grid_stride = None if source.teacher is None else grid_stride(source.teacher)
        self.feature_loss = resolve_feature_loss(
            config.feature_loss, None if source.teacher is None else source.teacher.name
        )
        feature_dim = config.feature_dim if source.teacher is not None else 0
        self.scene_scale = scene_scale(source.scene.cameras)
        self.training_cameras = source.scene.cameras
        generator = torch.Generator().manual_seed(config.seed)
        start = TrainConfig(
            data=str(source.scene.root or "nerfstudio"), teacher="none",
            sh_degree=config.sh_degree, init=config.init, init_points=config.init_points,
            init_opacity=config.init_opacity,
        )  # fmt: skip
        gaussians, background = initial_gaussians(source.scene, start, generator)
        features = 0.01 * torch.randn(len(gaussians), feature_dim, generator=generator)
        gaussians = replace(gaussians, features=features)
        self.gauss_params = torch.nn.ParameterDict(
            {k: Parameter(v.contiguous()) for k, v in splatfacto_params(gaussians).items()}
        )
        teacher_dim = source.teacher.dim if source.teacher is not None else 0
        self.decoder = SpeedUpDecoder(
            feature_dim, teacher_dim,
            hidden=config.decoder_hidden if config.decoder == "mlp" else (),
            identity=feature_dim == 0,
        )  # fmt: skip
        self.background = Parameter(torch.cat([background, torch.zeros(feature_dim)]))
        self.camera_optimizer = config.camera_optimizer.setup(
            num_cameras=self.num_train_data, device="cpu"
        )
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = _lpips_if_available()
        self.step = 0
        self.crop_box = None
        self.background_color = torch.tensor(VIEWER_GREY)
        if config.use_bilateral_grid:
            from nerfstudio.model_components.lib_bilagrid import BilateralGrid

            self.bil_grids = BilateralGrid(self.num_train_data, *config.grid_shape)
        self.strategy = DefaultStrategy(
            prune_opa=config.cull_alpha_thresh, grow_grad2d=config.densify_grad_thresh,
            grow_scale3d=config.densify_size_thresh, grow_scale2d=config.split_screen_size,
            prune_scale3d=config.cull_scale_thresh, prune_scale2d=config.cull_screen_size,
            refine_scale2d_stop_iter=config.stop_screen_size_at,
            refine_start_iter=config.warmup_length, refine_stop_iter=config.stop_split_at,
            reset_every=config.reset_alpha_every * config.refine_every,
            refine_every=config.refine_every,
            pause_refine_after_reset=self.num_train_data + config.refine_every,
            absgrad=config.use_absgrad, revised_opacity=False, verbose=False,
        )  # fmt: skip
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self._setup_viewer_elements()

    def _setup_viewer_elements(self) -> None:
        has_text = self.teacher is not None and self.teacher.language_aligned
        self.render_mode: RenderMode = "rgb"
        self.prompt = TextPrompt()
        self.clicked_feature: Tensor | None = None
        self._pca: tuple[int, PcaColours] | None = None
        self.viewer_control = ViewerControl()
        if self.decoder.in_dim == 0:
            return
        modes = ["rgb", "pca", "relevancy", "similarity"]
        if not has_text:
            modes.remove("relevancy")
        self.render_mode_element = ViewerDropdown(
            "Render mode", "rgb", modes, cb_hook=lambda element: self.show(element.value)
        )
        if has_text:
            self.text_element = ViewerText("Text prompt", "", cb_hook=self._on_text)
            self.negatives_element = ViewerText(
                "Negatives", ", ".join(CANONICAL_NEGATIVES), cb_hook=self._on_text
            )
        self.click_element = ViewerButton("Point prompt: click the scene", self._arm_click)

    def step_post_backward(self, step: int) -> None:
        """Splatfacto's densification, then the near-field veils are pruned."""
        super().step_post_backward(step)
        if self.config.prune_veils and step % self.config.refine_every == 0:
            gaussians = gaussians_from_splatfacto(self.gauss_params)
            cameras = self.training_cameras.to(self.means.device)
            veils = find_veils(gaussians, cameras, NEAR_FIELD * self.scene_scale)
            if veils.any():
                remove(self.gauss_params, self.optimizers, self.strategy_state, veils)

    # -- parameters -----------------------------------------------------------------------------
    @property
    def colors(self) -> Tensor:
        """Base colours [N, 3] (the SH convention at every degree, unlike splatfacto's degree 0)."""
        return (self.features_dc * SH_C0 + 0.5).clamp(0, 1)

    @property
    def shs_0(self) -> Tensor:
        return self.features_dc

    def get_gaussian_param_groups(self) -> dict[str, list[Parameter]]:
        return {name: [self.gauss_params[name]] for name in self.gauss_params}

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        groups = super().get_param_groups()
        groups["background"] = [self.background]
        if not self.decoder.identity:
            groups["decoder"] = list(self.decoder.parameters())
        return groups

    def field(self, crop: Tensor | None = None) -> FeatureField:
        """The field as it stands (sharing the trainable tensors), cropped to ``crop`` [N]."""
        gaussians = gaussians_from_splatfacto(self.gauss_params)
        if crop is not None:
            gaussians = gaussians[crop]
        degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        near_plane = self.config.near_plane * self.scene_scale
        return FeatureField(gaussians, self.decoder, self._background(), degree, near_plane)

    def _background(self) -> Tensor:
        if self.training and self.config.background_color == "random":
            return torch.cat([torch.rand(3).to(self.background), self.background[3:]])
        return rendered_background(self.config.background_color, self.background)

    # -- rendering ------------------------------------------------------------------------------
    def get_outputs(self, camera: NerfstudioCameras) -> dict[str, Tensor | list]:
        """RGB, depth, accumulation and F-channel features of one camera, in one pass."""
        if not isinstance(camera, NerfstudioCameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            camtoworld = self.camera_optimizer.apply_to_camera(camera)
        else:
            camtoworld = camera.camera_to_worlds
        crop = None
        if self.crop_box is not None and not self.training:
            crop = self.crop_box.within(self.means).squeeze()
            if crop.sum() == 0:
                return self.get_empty_outputs(
                    int(camera.width.item()), int(camera.height.item()), self.background_color
                )
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        Ks = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(scale)
        cameras = Cameras(get_viewmat(camtoworld).to(self.device), Ks, width, height)
        field = self.field(crop)
        render = field.render(cameras)
        self.info = strategy_info(render.meta)
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        rgb = render.rgb[0].clamp(0, 1)
        metadata = camera.metadata or {}
        if self.config.use_bilateral_grid and self.training and "cam_idx" in metadata:
            rgb = self._apply_bilateral_grid(rgb[None], metadata["cam_idx"], height, width)[0]
        background = field.background[:3].detach()
        outputs: dict[str, Tensor | list] = {
            "rgb": rgb,
            "depth": render.depth[0],
            "accumulation": render.alpha[0],
            "background": background if self.training else background.expand(height, width, 3),
            "features": render.features[0],
        }
        if not self.training and self.decoder.in_dim > 0 and hasattr(self.viewer_control, "viewer"):
            outputs["feature_view"] = self._feature_view(field, cameras, rgb, render.features[0])
        return outputs

    def _feature_view(
        self, field: FeatureField, cameras: Cameras, rgb: Tensor, features: Tensor
    ) -> Tensor:
        """What the viewer's render mode shows [H, W, 3]: RGB, feature PCA, the text prompt's
        relevancy, or the similarity to the clicked point's feature."""
        if self.render_mode == "rgb":
            return rgb
        try:
            if self.render_mode == "relevancy" and self.teacher is not None:
                frame = render_frame(
                    field, cameras, "relevancy", teacher=self.teacher, prompt=self.prompt
                )
                return torch.from_numpy(frame.image).float().div(255).to(rgb)
            if self.render_mode == "similarity" and self.clicked_feature is not None:
                query = torch.nn.functional.normalize(self.decoder(self.clicked_feature), dim=-1)
                scores = self.decoder.cosines(features.detach(), query[None])[..., 0]
                return 0.4 * rgb + 0.6 * heat_rgb(scores.cpu(), 0.0, 1.0).to(rgb)
        except FeatureSplatError as err:  # an unknown word, say: the viewer keeps going
            CONSOLE.log(f"[yellow]feature-splat: {err}")
        if self._pca is None or self._pca[0] != self.step:
            self._pca = (self.step, PcaColours.fit(self.gauss_params["features"]))
        return self._pca[1](features).to(rgb)

    # -- viewer callbacks -----------------------------------------------------------------------
    def show(self, mode: RenderMode) -> None:
        """Switch the render mode, and the viewer's output to what it renders (``rgb`` for RGB,
        ``feature_view`` for the others)."""
        self.render_mode = mode
        element = getattr(self, "render_mode_element", None)
        if element is not None and element.value != mode:
            element.value = mode
        viewer = getattr(self.viewer_control, "viewer", None)
        output = getattr(getattr(viewer, "control_panel", None), "_output_render", None)
        wanted = "rgb" if mode == "rgb" else "feature_view"
        if output is not None and wanted in output.options and output.value != wanted:
            output.value = wanted

    def _on_text(self, _: ViewerText) -> None:
        negatives = tuple(n.strip() for n in self.negatives_element.value.split(",") if n.strip())
        self.prompt = TextPrompt(self.text_element.value.strip(), negatives or CANONICAL_NEGATIVES)
        if self.prompt.text:
            self.show("relevancy")

    def _arm_click(self, _: ViewerButton) -> None:
        self.viewer_control.register_pointer_cb("click", self._on_click)

    def _on_click(self, click: ViewerClick) -> None:
        self.viewer_control.unregister_pointer_cb()
        origin, direction = (
            torch.tensor(v, dtype=torch.float32) for v in (click.origin, click.direction)
        )
        self.point_prompt(origin, direction)

    def point_prompt(self, origin: Tensor, direction: Tensor) -> None:
        """Prompt with the point where the ray ``origin + t direction`` meets the field: the
        viewer then shows every pixel's similarity to its feature."""
        self.clicked_feature = feature_on_ray(self.field(), origin, direction)
        self.show("similarity")

    # -- losses and metrics ---------------------------------------------------------------------
    def _decoded(self, outputs: dict, batch: dict) -> tuple[Tensor, Tensor] | None:
        """Decoded rendered features at the teacher's cells and the teacher's map, if any."""
        target = batch.get("teacher_features")
        if target is None or self.decoder.in_dim == 0:
            return None
        target = target.float().to(self.device)
        decoded = decode_at_cells(
            outputs["features"], target.shape[:2], self.decoder, self.grid_stride
        )
        return decoded, target

    def get_metrics_dict(self, outputs: dict, batch: dict) -> dict[str, Tensor]:
        metrics = super().get_metrics_dict(outputs, batch)
        decoded = self._decoded(outputs, batch)
        if decoded is not None:
            with torch.no_grad():
                metrics["feature_cosine"] = torch.nn.functional.cosine_similarity(
                    decoded[0], decoded[1], dim=-1
                ).mean()
        return metrics

    def get_loss_dict(
        self, outputs: dict, batch: dict, metrics_dict: dict | None = None
    ) -> dict[str, Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        target = batch.get("teacher_features")
        if target is not None and self.decoder.in_dim > 0:
            losses["feature_loss"] = self.config.feature_weight * distillation_loss(
                outputs["features"], target.to(self.device), self.decoder, self.grid_stride,
                self.feature_loss,
            )  # fmt: skip
        return losses

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """PSNR, SSIM, LPIPS (when its weights are on the machine) and feature cosine of one
        evaluation image; the images: truth | render, and the features' PCA."""
        truth = self.composite_with_background(
            self.get_gt_img(batch["image"]), outputs["background"]
        )
        rendered = outputs["rgb"]
        pair = [torch.moveaxis(image, -1, 0)[None] for image in (truth, rendered)]
        metrics = {"psnr": float(self.psnr(*pair).item()), "ssim": float(self.ssim(*pair))}
        if self.lpips is not None:
            metrics["lpips"] = float(self.lpips(*pair))
        images = {"img": torch.cat([truth, rendered], dim=1)}
        decoded = self._decoded(outputs, batch)
        if decoded is not None:
            metrics["feature_cosine"] = feature_cosine(*decoded)
            images["features"] = PcaColours.fit(self.gauss_params["features"])(outputs["features"])
        return metrics, images


def feature_on_ray(field: FeatureField, origin: Tensor, direction: Tensor, size: int = 9) -> Tensor:
    """The rendered feature [F] where a ray (a viewer click) meets the field: the centre pixel of
    a narrow ``size`` x ``size`` camera at ``origin`` looking along ``direction``."""
    direction = direction / direction.norm().clamp_min(1e-12)
    up = (
        torch.tensor([0.0, 0.0, 1.0])
        if abs(float(direction[2])) < 0.9
        else torch.tensor([0.0, 1.0, 0.0])
    )
    viewmat = look_at(origin, origin + direction, up)
    K = intrinsics_from_fov(1.0, size, size)[None]
    render = field.render(
        Cameras(viewmat.to(field.gaussians.means), K.to(field.gaussians.means), size, size)
    )
    centre = size // 2
    return render.features[0, centre, centre].detach()


def _lpips_if_available() -> torch.nn.Module | None:
    """nerfstudio's LPIPS metric, or None where its AlexNet weights cannot be fetched (offline)."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    except Exception as err:
        CONSOLE.log(
            f"[yellow]feature-splat: LPIPS skipped ({type(err).__name__}: weights unavailable)"
        )
        return None
