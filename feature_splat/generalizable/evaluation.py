"""Object-mode evaluation: keypoint transfer and part co-segmentation (FeatureNeRF's protocol).

Every test instance is seen through its first ``input_views`` views only (the source views). A
*feature source* then gives, for each instance, feature maps at all its views and features at any 3D
point:

- a trained predictor (:class:`ModelFeatures`): the field predicted from the source views, rendered
  at every view; 3D features from :meth:`~feature_splat.field.FeatureField.features_at`; both
  decoded to the teacher's width (the distilled features; for the no-distillation baseline, a
  fixed random linear map of its features);
- the teacher's own 2D features (:class:`TeacherFeatures`): the teacher map of each actual view
  (bilinearly upsampled); for 3D points, the teacher maps of the source views sampled where the
  point projects (occlusion ignored, as a 2D method must).

For each category, ``pairs`` seeded pairs (source instance a, target instance b != a, a novel view
t of b, a novel view t' of a) are scored on six tasks, all by nearest feature (cosine):

==================  ==========================================================================
task                what is transferred
==================  ==========================================================================
``kp2d_cross``      keypoints visible in a's source view -> pixels of b's view t (PCK, px at 128^2)
``kp2d_novel``      keypoints visible in a's source view -> pixels of a's novel view t'
``kp3d_cross``      every 3D keypoint of a -> the surface points of b (PCK, fraction of b's size)
``parts2d_cross``   part labels of a's source view pixels -> b's view t pixels (part mIoU)
``parts2d_novel``   part labels of a's source view pixels -> a's novel view t' pixels
``parts3d_cross``   part labels of a's surface points -> b's surface points
==================  ==========================================================================

2D searches are restricted to the target view's true object mask, so every method is scored on its
features, not on its silhouette. The 3D tasks are also reported on the ``hidden`` subset: keypoints
of a (for ``kp3d_cross``) or surface points of b (for ``parts3d_cross``) that no source view sees,
where a 2D method has nothing to go on. PCK values are pooled over all pairs of a category; part
mIoU comes from one confusion matrix per category and task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.data.synthetic.object_views import ObjectViews
from feature_splat.eval.correspondence import (
    PCK_2D_REFERENCE_SIZE,
    PCK_2D_THRESHOLDS_PX,
    PCK_3D_THRESHOLDS,
    accumulate_confusion,
    part_iou_from_confusion,
    pck,
    sample_map,
    sample_nearest_in_mask,
    transfer_keypoints_2d,
    transfer_keypoints_3d,
    transfer_labels,
)
from feature_splat.field import FeatureField
from feature_splat.generalizable.network import GaussianPredictor
from feature_splat.teachers.object_oracle import ObjectOracleTeacher

TASKS = (
    "kp2d_cross",
    "kp2d_novel",
    "kp3d_cross",
    "parts2d_cross",
    "parts2d_novel",
    "parts3d_cross",
)


class FeatureSource:
    """Features of a method for one test instance: maps at every view and features at 3D points."""

    name: str

    def view_maps(self, index: int) -> Tensor:
        """Feature maps [V, H, W, D] of instance ``index`` at all its views."""
        raise NotImplementedError

    def point_features(self, index: int, points: Tensor) -> Tensor:
        """Features [N, D] at world points [N, 3] of instance ``index``."""
        raise NotImplementedError


class ModelFeatures(FeatureSource):
    """A predictor's fields, each predicted once from an instance's source views."""

    def __init__(
        self, name: str, model: GaussianPredictor, objects: list[ObjectViews], input_views: int
    ) -> None:
        self.name = name
        self.fields: list[FeatureField] = []
        self.maps: list[Tensor] = []
        with torch.no_grad():
            for views in objects:
                source = list(range(input_views))
                predicted = model(views.rgb[source][None], [views.cameras[source]])[0]
                self.fields.append(predicted)
                self.maps.append(predicted.decode(predicted.render(views.cameras).features))

    def view_maps(self, index: int) -> Tensor:
        return self.maps[index]

    def point_features(self, index: int, points: Tensor) -> Tensor:
        with torch.no_grad():
            field = self.fields[index]
            return field.decode(field.features_at(points))


class TeacherFeatures(FeatureSource):
    """The teacher's 2D maps of the actual views; 3D points read from the source views' maps."""

    def __init__(
        self, teacher: ObjectOracleTeacher, objects: list[ObjectViews], input_views: int
    ) -> None:
        self.name = "teacher 2D"
        self.objects = objects
        self.input_views = input_views
        self.coarse = [teacher.encode_views(views) for views in objects]  # [V, M, h, w]

    def view_maps(self, index: int) -> Tensor:
        views = self.objects[index]
        size = (views.cameras.height, views.cameras.width)
        fine = F.interpolate(self.coarse[index], size=size, mode="bilinear", align_corners=False)
        return fine.permute(0, 2, 3, 1)

    def point_features(self, index: int, points: Tensor) -> Tensor:
        views = self.objects[index]
        pixels, _ = views.cameras[: self.input_views].project(points.float())
        stride = views.cameras.width / self.coarse[index].shape[-1]
        sampled = [
            F.normalize(
                sample_map(self.coarse[index][view].permute(1, 2, 0), pixels[view] / stride), dim=-1
            )
            for view in range(self.input_views)
        ]
        return torch.stack(sampled).mean(0)


@dataclass
class _Accumulator:
    """Pooled errors (for PCK) and confusion matrices (for part mIoU) of one category."""

    errors: dict[tuple[str, str, str], list[Tensor]] = field(default_factory=dict)
    scales: dict[tuple[str, str, str], list[Tensor]] = field(default_factory=dict)
    confusion: dict[tuple[str, str, str], Tensor] = field(default_factory=dict)

    def add_errors(self, key: tuple[str, str, str], errors: Tensor, scale: Tensor) -> None:
        self.errors.setdefault(key, []).append(errors.double())
        self.scales.setdefault(key, []).append(scale.double().expand_as(errors))

    def add_labels(
        self, key: tuple[str, str, str], predicted: Tensor, truth: Tensor, n_parts: int
    ) -> None:
        empty = torch.zeros(n_parts, n_parts, dtype=torch.long)
        self.confusion[key] = accumulate_confusion(self.confusion.get(key, empty), predicted, truth)


@dataclass
class _Instance:
    """Per test instance: sampled surface points, their parts and whether a source view sees them."""

    points: Tensor
    parts: Tensor
    hidden: Tensor
    keypoints_hidden: Tensor
    masks: Tensor  # [V, H, W] object masks


def _instance_points(views: ObjectViews, input_views: int, n_points: int, seed: int) -> _Instance:
    points, parts, _ = views.surface_points()
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(points.shape[0], generator=generator)[:n_points]
    points, parts = points[keep], parts[keep]
    source = list(range(input_views))
    keypoints_seen = views.keypoints_visible[:input_views].any(0)
    hidden = ~views.visible(points, parts, source).any(0)
    return _Instance(points, parts, hidden, ~keypoints_seen, views.masks())


def keypoint_queries(feature_map: Tensor, views: ObjectViews, seen: Tensor) -> Tensor:
    """Features [Q, D] of the keypoints ``seen`` [K] in the first view, each read at the nearest
    pixel showing the keypoint's own part (as an annotator clicks it: a keypoint on an edge often
    projects onto the background or onto the part in front)."""
    parts = torch.as_tensor(views.instance.keypoint_parts)[seen]
    pixels = views.keypoints_2d[0][seen]
    return (
        torch.cat(
            [
                sample_nearest_in_mask(feature_map, views.parts[0] == part, pixel[None])
                for part, pixel in zip(parts.tolist(), pixels, strict=True)
            ]
        )
        if len(pixels)
        else feature_map.new_zeros(0, feature_map.shape[-1])
    )


def evaluate_category(
    objects: list[ObjectViews],
    sources: list[FeatureSource],
    *,
    input_views: int = 1,
    pairs: int = 200,
    surface_points: int = 2000,
    seed: int = 0,
) -> dict:
    """Scores of every source on every task for one category's test instances (see the module doc)."""
    if len(objects) < 2:
        raise ValueError("evaluate_category: need at least two instances to form pairs")
    n_views = objects[0].rgb.shape[0]
    if n_views <= input_views:
        raise ValueError(
            f"evaluate_category: {n_views} views leave no novel view after {input_views} inputs"
        )
    category = objects[0].instance.category
    n_parts = len(objects[0].instance.part_names)
    image_size = objects[0].cameras.width
    instances = [
        _instance_points(v, input_views, surface_points, seed + i) for i, v in enumerate(objects)
    ]
    rng = np.random.default_rng([seed, sum(map(ord, category))])
    acc = _Accumulator()
    cache: dict[tuple[str, int], Tensor] = {}

    def points_features(source: FeatureSource, index: int) -> Tensor:
        key = (source.name, index)
        if key not in cache:
            cache[key] = source.point_features(index, instances[index].points)
        return cache[key]

    for _ in range(pairs):
        a, b = (int(i) for i in rng.choice(len(objects), 2, replace=False))
        target_view = int(rng.integers(input_views, n_views))
        novel_view = int(rng.integers(input_views, n_views))
        va, vb = objects[a], objects[b]
        keypoints_a = torch.as_tensor(va.instance.keypoints, dtype=torch.float32)
        keypoints_b = torch.as_tensor(vb.instance.keypoints, dtype=torch.float32)
        for source in sources:
            maps_a, maps_b = source.view_maps(a), source.view_maps(b)
            # 2D tasks: from a's first source view to b's view t and to a's novel view t'.
            seen = va.keypoints_visible[0]
            query = keypoint_queries(maps_a[0], va, seen)
            mask_a = instances[a].masks[0]
            source_labels = va.parts[0][mask_a]
            for kind, target, maps, view in (
                ("cross", b, maps_b, target_view),
                ("novel", a, maps_a, novel_view),
            ):
                views, mask = objects[target], instances[target].masks[view]
                found = views.keypoints_visible[view][seen]
                predicted = transfer_keypoints_2d(query[found], maps[view], mask)
                errors = (predicted - views.keypoints_2d[view][seen][found]).norm(dim=-1)
                scale = torch.tensor(image_size / PCK_2D_REFERENCE_SIZE)
                acc.add_errors((f"kp2d_{kind}", source.name, "all"), errors, scale)
                labels = transfer_labels(maps_a[0][mask_a], source_labels, maps[view][mask])
                key = (f"parts2d_{kind}", source.name, "all")
                acc.add_labels(key, labels, views.parts[view][mask], n_parts)
            # 3D keypoints: a's keypoints (3D features) -> b's surface points.
            query = source.point_features(a, keypoints_a)
            predicted = transfer_keypoints_3d(
                query, instances[b].points, points_features(source, b)
            )
            errors = (predicted - keypoints_b).norm(dim=-1)
            size = torch.tensor(vb.instance.size)
            acc.add_errors(("kp3d_cross", source.name, "all"), errors, size)
            hidden = instances[a].keypoints_hidden
            acc.add_errors(("kp3d_cross", source.name, "hidden"), errors[hidden], size)
            # 3D parts: a's surface points -> b's surface points.
            labels = transfer_labels(
                points_features(source, a), instances[a].parts, points_features(source, b)
            )
            acc.add_labels(
                ("parts3d_cross", source.name, "all"), labels, instances[b].parts, n_parts
            )
            hidden = instances[b].hidden
            acc.add_labels(
                ("parts3d_cross", source.name, "hidden"),
                labels[hidden],
                instances[b].parts[hidden],
                n_parts,
            )
    return _summarise(acc, objects[0].instance.part_names)


def _summarise(acc: _Accumulator, part_names: tuple[str, ...]) -> dict:
    """Nested dict task -> method -> subset -> scores."""
    out: dict = {}
    for key, errors in acc.errors.items():
        task, method, subset = key
        thresholds = PCK_2D_THRESHOLDS_PX if task.startswith("kp2d") else PCK_3D_THRESHOLDS
        all_errors = torch.cat(errors)
        values = pck(all_errors, thresholds, torch.cat(acc.scales[key]))
        out.setdefault(task, {}).setdefault(method, {})[subset] = {
            "pck": {f"{t:g}": v for t, v in values.items()},
            "queries": int(all_errors.numel()),
        }
    for key, confusion in acc.confusion.items():
        task, method, subset = key
        scores = part_iou_from_confusion(confusion)
        out.setdefault(task, {}).setdefault(method, {})[subset] = {
            "miou": scores.miou,
            "per_part": {part_names[p]: v for p, v in scores.per_part.items()},
            "points": int(confusion.sum()),
        }
    return out


def headline(results: dict, task: str, method: str, subset: str = "all") -> float:
    """The single number a table shows: PCK at the second threshold, or part mIoU."""
    scores = results.get(task, {}).get(method, {}).get(subset)
    if scores is None:
        return math.nan
    if "miou" in scores:
        return scores["miou"]
    return list(scores["pck"].values())[1]
