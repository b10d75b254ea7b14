"""SAM point and box prompts on any view: masks from image embeddings, rendered or encoded.

A field distilled from :class:`~feature_splat.teachers.sam.SamTeacher` renders (after its decoder)
features that approximate the teacher's *cropped* embeddings at any camera. :func:`sam_masks` feeds
such an embedding to SAM's own prompt encoder and mask decoder in place of the image encoder,
following ``SamPredictor.predict`` / ``predict_torch`` step for step:

1. the cropped ``[256, rows, cols]`` embedding is placed in the top-left corner of SAM's full
   ``img_size / 16`` square grid (64 x 64 for the official models), where the image encoder put it;
2. prompt coordinates (original pixels) are mapped to the resized input with the teacher's
   ``ResizeLongestSide.apply_coords`` / ``apply_boxes`` (in float64 numpy, as the predictor does);
3. ``prompt_encoder`` embeds them and ``mask_decoder`` predicts low-resolution logits and scores;
4. ``Sam.postprocess_masks`` upsamples the logits, crops the padding and resizes to the original
   image, and ``logits > Sam.mask_threshold`` gives the masks.

Padding cells. For a square image every cell holds image content and the result equals
``SamPredictor``'s exactly. For a non-square image the cells past the resized image were never
rendered (they are cropped from the teacher's targets), yet the decoder attends to them. The real
encoder's output there is not zero (positional embeddings and attention spread the image into the
padding), so any fill is an approximation: ``padding="edge"`` (the default) repeats the last valid
row / column, which keeps those cells in the distribution of image embeddings; ``padding="zeros"``
leaves them at zero.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField
from feature_splat.teachers.sam import SamTeacher

PaddingFill = Literal["edge", "zeros"]


@torch.no_grad()
def sam_masks(
    teacher: SamTeacher,
    embedding: Tensor,
    image_size: tuple[int, int],
    points: Tensor | None = None,
    point_labels: Tensor | None = None,
    box: Tensor | None = None,
    multimask_output: bool = True,
    padding: PaddingFill = "edge",
) -> tuple[Tensor, Tensor, Tensor]:
    """SAM masks for point and / or box prompts on a cropped image embedding.

    Args:
        teacher: the SAM teacher whose prompt encoder and mask decoder answer the prompts.
        embedding: ``[256, rows, cols]``, the cropped embedding of an ``image_size`` image, as
            ``teacher.encode(images)[b]`` returns it or as decoded from a rendered view;
            ``(rows, cols)`` must be ``teacher.geometry(H, W).valid_cells``.
        image_size: ``(H, W)`` of the original image, in pixels.
        points: ``[P, 2]`` pixel coordinates ``(x, y)`` in the original image, in ``[0, W] x
            [0, H]``; requires ``point_labels``.
        point_labels: ``[P]``, 1 for a positive (foreground) point, 0 for a negative one.
        box: ``[4]``, ``(x0, y0, x1, y1)`` in original pixels, ``x0 <= x1``, ``y0 <= y1``.
        multimask_output: three candidate masks (SAM's choice for ambiguous prompts such as one
            click) if true, else one.
        padding: how to fill the grid cells past the image (non-square images only): ``"edge"``
            repeats the nearest valid cell, ``"zeros"`` leaves zeros. See the module docstring.

    Returns:
        ``masks`` ``[K, H, W]`` bool, ``scores`` ``[K]`` (SAM's predicted IoU) and
        ``low_res_logits`` ``[K, img_size / 4, img_size / 4]`` (256 x 256 for the official
        models), with ``K`` 3 or 1; on the teacher's device.

    Raises:
        InputShapeError: naming the argument, for a wrong shape, a missing or unknown label, a
            coordinate outside the image, an inverted box, an unknown padding, or no prompt at all.
    """
    height, width = _check_image_size(image_size)
    geometry = teacher.geometry(height, width)
    device = teacher.device
    full = _full_grid(embedding, geometry.valid_cells, teacher.embedding_size, padding)

    point_prompt = None
    if points is not None or point_labels is not None:
        coords, labels = _check_points(points, point_labels, height, width)
        mapped = teacher.transform.apply_coords(coords.numpy(), geometry.original_size)
        point_prompt = (
            torch.as_tensor(mapped, dtype=torch.float, device=device)[None],
            torch.as_tensor(labels, dtype=torch.int, device=device)[None],
        )
    box_prompt = None
    if box is not None:
        corners = _check_box(box, height, width)
        mapped = teacher.transform.apply_boxes(corners.numpy(), geometry.original_size)
        box_prompt = torch.as_tensor(mapped, dtype=torch.float, device=device)
    if point_prompt is None and box_prompt is None:
        raise InputShapeError("points, box: expected at least one prompt, got neither")

    model = teacher.model.eval()
    sparse, dense = model.prompt_encoder(points=point_prompt, boxes=box_prompt, masks=None)
    low_res, scores = model.mask_decoder(
        image_embeddings=full.to(device)[None],
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    logits = model.postprocess_masks(low_res, geometry.input_size, geometry.original_size)
    return logits[0] > model.mask_threshold, scores[0], low_res[0]


@torch.no_grad()
def rendered_sam_masks(
    teacher: SamTeacher,
    field: FeatureField,
    camera: Cameras,
    points: Tensor | None = None,
    point_labels: Tensor | None = None,
    box: Tensor | None = None,
    multimask_output: bool = True,
) -> tuple[Tensor, Tensor]:
    """SAM masks [K, H, W] and scores [K] for prompts on the view of ``camera`` (one camera),
    from the field's rendered features: pooled to SAM's cells, decoded, and passed to
    :func:`sam_masks` in place of the image encoder's embedding."""
    from feature_splat.teachers import to_teacher_cells

    height, width = camera.height, camera.width
    render = field.render(camera)
    cells = teacher.geometry(height, width).valid_cells
    pooled = to_teacher_cells(render.features[0].permute(2, 0, 1)[None], cells, None)[0]
    embedding = field.decode(pooled.permute(1, 2, 0)).permute(2, 0, 1)
    masks, scores, _ = sam_masks(
        teacher, embedding, (height, width), points, point_labels, box, multimask_output
    )
    return masks, scores


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` as two positive ints, or an InputShapeError naming ``image_size``."""
    if len(image_size) != 2 or any(int(side) != side or side < 1 for side in image_size):
        raise InputShapeError(f"image_size: expected (H, W), two positive ints, got {image_size}")
    return int(image_size[0]), int(image_size[1])


def _full_grid(
    embedding: Tensor,
    valid_cells: tuple[int, int],
    grid: tuple[int, int],
    padding: PaddingFill,
) -> Tensor:
    """The cropped ``[256, rows, cols]`` embedding placed top-left in the full ``grid``, the rest
    filled as ``padding`` says."""
    rows, cols = valid_cells
    if embedding.ndim != 3 or tuple(embedding.shape) != (embedding.shape[0], rows, cols):
        raise InputShapeError(
            f"embedding: expected [256, {rows}, {cols}] (the valid cells of image_size), got "
            f"{list(embedding.shape)}"
        )
    if embedding.shape[0] != SamTeacher.dim:
        raise InputShapeError(
            f"embedding: expected {SamTeacher.dim} channels, got {list(embedding.shape)}"
        )
    pad = (0, grid[1] - cols, 0, grid[0] - rows)  # left, right, top, bottom
    values = embedding.detach().float()
    if padding == "edge":
        return F.pad(values[None], pad, mode="replicate")[0]
    if padding == "zeros":
        return F.pad(values, pad)
    raise InputShapeError(f"padding: expected 'edge' or 'zeros', got {padding!r}")


def _check_points(
    points: Tensor | None, point_labels: Tensor | None, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Points ``[P, 2]`` (float64, CPU) inside the image and labels ``[P]`` in {0, 1}."""
    if points is None or point_labels is None:
        missing = "point_labels" if points is not None else "points"
        raise InputShapeError(
            f"{missing}: required when the other of points / point_labels is given"
        )
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise InputShapeError(f"points: expected [P, 2] pixel (x, y), got {list(points.shape)}")
    if tuple(point_labels.shape) != (points.shape[0],):
        raise InputShapeError(
            f"point_labels: expected [{points.shape[0]}] (one per point), got "
            f"{list(point_labels.shape)}"
        )
    labels = point_labels.detach().cpu()
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise InputShapeError(f"point_labels: expected 1 (positive) or 0 (negative), got {labels}")
    coords = points.detach().cpu().double()
    _check_inside("points", coords, height, width)
    return coords, labels


def _check_box(box: Tensor, height: int, width: int) -> Tensor:
    """The box ``[4]`` as ``[1, 4]`` (float64, CPU), inside the image and not inverted."""
    if tuple(box.shape) != (4,):
        raise InputShapeError(f"box: expected [4] (x0, y0, x1, y1), got {list(box.shape)}")
    corners = box.detach().cpu().double()
    _check_inside("box", corners.reshape(2, 2), height, width)
    if corners[0] > corners[2] or corners[1] > corners[3]:
        raise InputShapeError(f"box: expected x0 <= x1 and y0 <= y1, got {corners.tolist()}")
    return corners[None]


def _check_inside(name: str, xy: Tensor, height: int, width: int) -> None:
    """Raise an InputShapeError naming ``name`` unless every ``(x, y)`` row is finite and in
    ``[0, W] x [0, H]``."""
    x, y = xy[:, 0], xy[:, 1]
    inside = torch.isfinite(xy).all(dim=1) & (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    if not bool(inside.all()):
        raise InputShapeError(
            f"{name}: expected pixel coordinates in [0, {width}] x [0, {height}], got "
            f"{xy[~inside].tolist()}"
        )
