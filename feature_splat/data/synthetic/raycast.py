"""An independent ray-caster for synthetic worlds (plain torch, float64; not the project's rasterizer).

:func:`render_views` casts, for every pixel, one ray through its centre (giving ``depth``,
``normals``, ``labels`` and ``instances``) and ``supersample x supersample`` rays on a regular
sub-pixel grid whose shaded colours are averaged into ``rgb`` (anti-aliasing). Shading is diffuse
and view-independent: ``albedo * (ambient + (1 - ambient) * max(0, n . light))`` with one directional
light, the normal turned to face the viewer. Rays that hit nothing get the world's sky colour,
class ``sky`` and instance -1.

Each view is processed in bands of rows (at most ``chunk`` rays each) to bound memory. Within a
band, a primitive is intersected only with the rays inside the screen rectangle that contains its
projected bounding sphere and that enter that sphere before the nearest hit found so far.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.data.synthetic.classes import SKY
from feature_splat.errors import InputShapeError

if TYPE_CHECKING:
    from feature_splat.data.synthetic.worlds import World

DEFAULT_CHUNK = 1 << 18
_NEAR = 1e-3  # a bounding sphere closer than this to the camera plane gets the whole image


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (the previous count is restored after).

    The ray-caster issues many small tensor operations (tens of thousands of elements); they gain
    little from a second thread and, when another process keeps the cores busy, a 2-thread pool
    made them 5-40x slower in our measurements.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Hits:
    """Nearest hits of N rays: distance (inf on miss), world unit normal, primitive index (-1)."""

    t: Tensor  # [N] float64
    normals: Tensor  # [N, 3] float64, zero on a miss
    primitive: Tensor  # [N] int64 index into world.primitives, -1 on a miss


def _screen_boxes(world: World, viewmat: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """Per primitive, the pixel rectangle [row0, row1, col0, col1) its bounding sphere projects into.

    The rectangle bounds the projections of the corners of a camera-aligned cube around the sphere
    (a convex set in front of the camera projects inside the hull of its corners' projections).
    Spheres crossing the near plane get the whole image; spheres behind the camera an empty one.
    """
    centers = torch.tensor([p.center for p in world.primitives], dtype=torch.float64)
    radii = torch.tensor([p.bounding_radius for p in world.primitives], dtype=torch.float64)
    cam = centers @ viewmat[:3, :3].T + viewmat[:3, 3]
    signs = torch.tensor(
        [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float64
    )
    corners = cam[:, None, :] + radii[:, None, None] * signs  # [P, 8, 3]
    z = corners[..., 2].clamp_min(_NEAR)
    u = K[0, 0] * corners[..., 0] / z + K[0, 2]
    v = K[1, 1] * corners[..., 1] / z + K[1, 2]
    boxes = torch.stack(
        [
            v.amin(1).floor().clamp(0, height),
            (v.amax(1).floor() + 1).clamp(0, height),
            u.amin(1).floor().clamp(0, width),
            (u.amax(1).floor() + 1).clamp(0, width),
        ],
        dim=1,
    ).to(torch.int64)
    crossing = cam[:, 2] - radii <= _NEAR
    boxes[crossing] = torch.tensor([0, height, 0, width])
    boxes[cam[:, 2] + radii <= 0] = 0
    return boxes


def _trace_band(
    world: World, origin: Tensor, directions: Tensor, boxes: Tensor, first_row: int
) -> Hits:
    """Nearest hits of the rays ``directions`` [R, W, S, 3] from ``origin`` [3].

    The band holds image rows ``first_row .. first_row + R``; ``boxes`` are the primitives' pixel
    rectangles from :func:`_screen_boxes`.
    """
    rows, width, samples = directions.shape[:3]
    flat = directions.reshape(-1, 3)
    n = flat.shape[0]
    ray_index = torch.arange(n).view(rows, width, samples)
    best_t = torch.full((n,), torch.inf, dtype=torch.float64)
    best_normals = torch.zeros(n, 3, dtype=torch.float64)
    best_primitive = torch.full((n,), -1, dtype=torch.int64)
    for index, (primitive, box) in enumerate(zip(world.primitives, boxes.tolist(), strict=True)):
        row0, row1 = max(box[0] - first_row, 0), min(box[1] - first_row, rows)
        if row0 >= row1 or box[2] >= box[3]:
            continue
        rays = ray_index[row0:row1, box[2] : box[3]].reshape(-1)
        d = flat[rays]
        # Keep the rays that enter the bounding sphere before their nearest hit so far.
        offset = origin - torch.tensor(primitive.center, dtype=torch.float64)
        half_b = d @ offset
        disc = half_b * half_b - (offset @ offset - primitive.bounding_radius**2)
        root = torch.sqrt(disc.clamp_min(0.0))
        near = (disc >= 0) & (root - half_b > 0) & (-half_b - root < best_t[rays])
        rays, d = rays[near], d[near]
        if rays.numel() == 0:
            continue
        t, normals = primitive.intersect(origin.expand_as(d), d)
        closer = t < best_t[rays]
        rays = rays[closer]
        best_t[rays] = t[closer]
        best_normals[rays] = normals[closer]
        best_primitive[rays] = index
    return Hits(best_t, best_normals, best_primitive)


def shade(world: World, hits: Hits, origin: Tensor, directions: Tensor) -> Tensor:
    """Colours [N, 3] (float64 in [0, 1]) of traced rays: textured diffuse shading, sky on a miss."""
    colors = torch.tensor(world.sky_color, dtype=torch.float64).repeat(directions.shape[0], 1)
    light = torch.tensor(world.light_direction, dtype=torch.float64)
    light = light / light.norm()
    for index in hits.primitive.unique().tolist():
        if index < 0:
            continue
        primitive = world.primitives[index]
        rays = (hits.primitive == index).nonzero().squeeze(1)
        points = origin + hits.t[rays, None] * directions[rays]
        normals = _facing(hits.normals[rays], directions[rays])
        rotation = torch.tensor(primitive.rotation, dtype=torch.float64)
        albedo = primitive.texture.evaluate(primitive.to_local(points), normals @ rotation)
        diffuse = (normals @ light).clamp_min(0.0)
        colors[rays] = albedo * (world.ambient + (1.0 - world.ambient) * diffuse[:, None])
    return colors.clamp(0.0, 1.0)


def _facing(normals: Tensor, directions: Tensor) -> Tensor:
    """``normals`` flipped where needed to face back along the rays ``directions``."""
    away = (normals * directions).sum(1, keepdim=True) > 0
    return torch.where(away, -normals, normals)


def camera_rays(
    cameras: Cameras, index: int, offsets: Tensor, rows: range
) -> tuple[Tensor, Tensor, Tensor]:
    """Rays of view ``index`` through the points ``(col, row) + offsets`` of image ``rows``.

    ``offsets`` [S, 2] are sub-pixel positions in [0, 1)^2 (0.5, 0.5 is the pixel centre). Returns
    the camera centre [3], unit world directions [R, W, S, 3] and the camera-space z travelled per
    unit of distance [R, W, S] (which turns distances into depths).
    """
    viewmat = cameras.viewmats[index].to(torch.float64)
    K = cameras.Ks[index].to(torch.float64)
    row = torch.arange(rows.start, rows.stop, dtype=torch.float64)
    col = torch.arange(cameras.width, dtype=torch.float64)
    u = col[None, :, None] + offsets[None, None, :, 0].to(torch.float64)
    v = row[:, None, None] + offsets[None, None, :, 1].to(torch.float64)
    u, v = torch.broadcast_tensors(u, v)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    camera_dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    length = camera_dirs.norm(dim=-1)
    rotation = viewmat[:3, :3]
    directions = (camera_dirs / length[..., None]) @ rotation  # rotation^T @ d, row form
    center = -(rotation.T @ viewmat[:3, 3])
    return center, directions, 1.0 / length


def _sample_offsets(supersample: int) -> Tensor:
    """The pixel centre followed by a ``supersample x supersample`` grid of sub-pixel offsets [S, 2]."""
    steps = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample
    grid_v, grid_u = torch.meshgrid(steps, steps, indexing="ij")
    grid = torch.stack([grid_u.reshape(-1), grid_v.reshape(-1)], dim=1)
    return torch.cat([torch.full((1, 2), 0.5, dtype=torch.float64), grid])


def render_views(
    world: World, cameras: Cameras, *, supersample: int = 2, chunk: int = DEFAULT_CHUNK
) -> dict[str, Tensor]:
    """Ray-cast every view of ``cameras``.

    Returns ``rgb`` [V, H, W, 3] float32 (mean of ``supersample**2`` sub-pixel rays), and from the
    pixel-centre ray: ``depth`` [V, H, W] float32 camera-space z (inf on a miss), ``normals``
    [V, H, W, 3] float32 world unit normals facing the camera (zero on a miss), ``labels`` [V, H, W]
    int64 class ids (``sky`` on a miss) and ``instances`` [V, H, W] int64 (-1 on a miss).
    """
    if supersample < 1:
        raise InputShapeError(f"render_views: supersample must be >= 1, got {supersample}")
    if chunk < 1:
        raise InputShapeError(f"render_views: chunk must be >= 1, got {chunk}")
    height, width = cameras.height, cameras.width
    # Lookup tables indexed by primitive, with a last entry for index -1 (a miss).
    class_of = torch.tensor([p.class_id for p in world.primitives] + [SKY], dtype=torch.int64)
    instance_of = torch.tensor([p.instance_id for p in world.primitives] + [-1], dtype=torch.int64)
    offsets = _sample_offsets(supersample)
    samples = offsets.shape[0]
    band = max(1, chunk // (width * samples))
    out: dict[str, list[Tensor]] = {
        k: [] for k in ("rgb", "depth", "normals", "labels", "instances")
    }
    with single_threaded():
        for view in range(len(cameras)):
            viewmat = cameras.viewmats[view].to(torch.float64)
            K = cameras.Ks[view].to(torch.float64)
            boxes = _screen_boxes(world, viewmat, K, width, height)
            for first_row in range(0, height, band):
                rows = range(first_row, min(first_row + band, height))
                origin, directions, z_per_t = camera_rays(cameras, view, offsets, rows)
                hits = _trace_band(world, origin, directions, boxes, first_row)
                flat = directions.reshape(-1, 3)
                colors = shade(world, hits, origin, flat).view(len(rows), width, samples, 3)
                centre = torch.arange(0, flat.shape[0], samples)  # sample 0 of every pixel
                shape = (len(rows), width)
                # Sample 0 is the pixel centre (ground truth); the others form the AA grid.
                out["rgb"].append(colors[:, :, 1:].mean(dim=2))
                out["depth"].append((hits.t[centre] * z_per_t[..., 0].reshape(-1)).view(shape))
                out["normals"].append(_facing(hits.normals[centre], flat[centre]).view(*shape, 3))
                out["labels"].append(class_of[hits.primitive[centre]].view(shape))
                out["instances"].append(instance_of[hits.primitive[centre]].view(shape))
    result = {
        key: torch.cat(values).view(len(cameras), height, width, *values[0].shape[2:])
        for key, values in out.items()
    }
    for key in ("rgb", "depth", "normals"):
        result[key] = result[key].to(torch.float32)
    return result
