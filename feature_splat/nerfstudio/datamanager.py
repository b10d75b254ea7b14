"""nerfstudio's full-image data manager, with the teacher's features of every image.

The maps come from a feature cache that ``feature-splat encode`` filled in the main environment
(where the teachers' packages live): this environment needs no teacher. Each cached image entry
gains ``teacher_features`` [h, w, M], so the model's loss sees it in the batch; the training views
also travel to the model as our :class:`~feature_splat.data.Dataset` (for ray initialisation and
the scene scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
)
from nerfstudio.data.datasets.base_dataset import InputDataset

from feature_splat.cameras import Cameras
from feature_splat.data import Dataset
from feature_splat.errors import DatasetError
from feature_splat.io.feature_cache import read_cache_folder
from feature_splat.teachers import Teacher

SOURCE_KEY = "feature_splat"
"""Key of the :class:`FeatureSource` in the training dataset's metadata (the model's kwargs)."""


@dataclass
class FeatureSource:
    """What the model needs from the data: the training views and the teacher (None: RGB only)."""

    scene: Dataset
    teacher: Teacher | None


@dataclass
class FeatureDataManagerConfig(FullImageDatamanagerConfig):
    """Full images plus cached teacher features."""

    _target: type = field(default_factory=lambda: FeatureDataManager)
    feature_cache: Path | None = None
    """The teacher folder of a feature cache, as `feature-splat encode DATA --cache-dir DIR`
    prints it (DIR/<teacher>-<hash>); none trains RGB only."""
    cache_images: Literal["cpu", "gpu"] = "gpu"
    """Where images are cached: "gpu" means the training device (also the CPU); nerfstudio's
    "cpu" pins memory, which needs CUDA."""
    cache_images_type: Literal["uint8", "float32"] = "uint8"


def _names(dataset: InputDataset) -> list[str]:
    return [Path(p).stem for p in dataset.image_filenames]


def _images(entries: list[dict]) -> torch.Tensor:
    images = [entry["image"][..., :3] for entry in entries]
    if len({tuple(image.shape) for image in images}) > 1:
        raise DatasetError("feature-splat method: the images must all be one size")
    stacked = torch.stack(images).cpu()
    return stacked.float() / 255 if stacked.dtype == torch.uint8 else stacked.float()


class FeatureDataManager(FullImageDatamanager):
    """:class:`FullImageDatamanager` whose cached images carry ``teacher_features``."""

    config: FeatureDataManagerConfig

    def __init__(self, config: FeatureDataManagerConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        train, evaluation = self.cached_train, self.cached_eval
        train_images, teacher = _images(train), None
        if config.feature_cache is not None:
            images = torch.cat([train_images, _images(evaluation)])
            names = _names(self.train_dataset) + _names(self.eval_dataset)
            teacher, maps = read_cache_folder(Path(config.feature_cache), images, names)
            for entry, value in zip([*train, *evaluation], maps, strict=True):
                entry["teacher_features"] = value.to(self.device)
        source = FeatureSource(self._training_views(train_images), teacher)
        self.train_dataset.metadata[SOURCE_KEY] = source

    def _training_views(self, images: torch.Tensor) -> Dataset:
        """The training views as our :class:`Dataset` (nerfstudio's frame, OpenCV cameras)."""
        cameras = self.train_dataset.cameras
        height, width = images.shape[1:3]
        ours = Cameras.from_camtoworlds(
            cameras.camera_to_worlds.float().cpu(),
            cameras.get_intrinsics_matrices().float().cpu(),
            int(width), int(height), convention="opengl",
        )  # fmt: skip
        metadata = self.train_dataparser_outputs.metadata
        points, colors = metadata.get("points3D_xyz"), metadata.get("points3D_rgb")
        has_points = points is not None and len(points) > 0
        return Dataset(
            images=images,
            cameras=ours,
            image_names=_names(self.train_dataset),
            train_indices=list(range(len(images))),
            test_indices=[],
            points=points.float() if has_points else None,
            point_colors=colors.float() / 255 if has_points and colors is not None else None,
            root=Path(self.config.data) if self.config.data is not None else None,
        )
