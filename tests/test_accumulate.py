"""Rendering-weight accumulation (``accumulate``) against the brute-force oracle's adjoint.

Compositing is linear in the features, so for values G per pixel, the gradient of
``sum_p <render_p(f), G_p>`` with respect to f_g is ``sum_p w_gp G_p``: the accumulation. The
oracle (tests/oracle.py, float64, every Gaussian against every pixel) differentiated by autograd is
then an independent statement of what ``accumulate`` must return.
"""

from __future__ import annotations

import numba
import pytest
import torch
from oracle import oracle_render
from scenes import Scene, random_scene

from feature_splat.errors import InputShapeError
from feature_splat.rasterizer import Accumulated, accumulate
from feature_splat.rasterizer.accumulation import pixel_cells
from feature_splat.teachers import to_teacher_cells

NEAR = 0.2


def oracle_sums(scene: Scene, values: torch.Tensor, stride: int | None):
    """Sums and weights by differentiating the oracle with per-pixel values s_p G[cell(p)]."""
    _, _, _, _, _, viewmats, _, width, height = scene.args()
    h, w = values.shape[1:3]
    if stride is not None and (-(-height // stride), -(-width // stride)) != (h, w):
        stride = None
    cell_y, scale_y = pixel_cells(height, h, stride)
    cell_x, scale_x = pixel_cells(width, w, stride)
    scale = (scale_y[:, None] * scale_x[None, :])[None, ..., None]
    per_pixel = values.double()[:, cell_y][:, :, cell_x] * scale  # [C, H, W, M]
    target = torch.cat([per_pixel, scale.expand(len(viewmats), -1, -1, 1)], dim=-1)
    probe = torch.zeros(len(scene.means), target.shape[-1], dtype=torch.float64, requires_grad=True)
    args = list(scene.args())
    args[4] = probe
    rendered = oracle_render(*args, near_plane=NEAR)[0]
    (grad,) = torch.autograd.grad(rendered, probe, grad_outputs=target)
    return grad[:, :-1], grad[:, -1]


def run(scene: Scene, values: torch.Tensor, stride: int | None, **kwargs):
    means, quats, scales, opacities, _, viewmats, Ks, width, height = scene.args()
    return accumulate(
        means, quats, scales, opacities, viewmats, Ks, width, height, values,
        stride=stride, near_plane=NEAR, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize(
    ("dim", "width", "height", "grid", "stride", "n_cameras"),
    [
        (1, 37, 29, (4, 5), 8, 2),  # a stride grid with partial cells at the edges
        (16, 48, 32, (4, 6), 8, 1),  # a stride grid that tiles the image exactly
        (7, 37, 29, (3, 4), None, 2),  # equal cells, not a stride grid
        (130, 20, 17, (17, 20), 1, 1),  # one cell per pixel, many channels
    ],
)
def test_accumulate_matches_oracle_adjoint(backend, dim, width, height, grid, stride, n_cameras):
    scene = random_scene(n=250, dim=1, width=width, height=height, n_cameras=n_cameras, seed=dim)
    values = torch.randn(n_cameras, *grid, dim, generator=torch.Generator().manual_seed(1))
    expected_sums, expected_weights = oracle_sums(scene, values, stride)
    out = run(scene, values, stride, backend=backend)
    assert float(expected_weights.max()) > 0.1  # the scene is seen
    assert int((expected_weights == 0).sum()) > 0  # and some Gaussians are not (culled)
    torch.testing.assert_close(out.weights, expected_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sums.double(), expected_sums, atol=2e-5, rtol=1e-4)


def test_totals_equal_the_pooled_render():
    """Summed over Gaussians, the weights are the alpha map averaged over the cells, and the sums
    are the values weighted by that pooled alpha (training's pooling, to_teacher_cells)."""
    scene = random_scene(n=400, dim=1, width=48, height=40, n_cameras=2, seed=3)
    values = torch.rand(2, 5, 6, 3, generator=torch.Generator().manual_seed(2))
    out = run(scene, values, stride=8, backend="cpu")
    means, quats, scales, opacities, _, viewmats, Ks, width, height = scene.args()
    ones = torch.ones(len(means), 1)
    from feature_splat import rasterize

    alpha = rasterize(
        means, quats, scales, opacities, ones, viewmats, Ks, width, height, near_plane=NEAR
    ).alpha
    pooled = to_teacher_cells(alpha.permute(0, 3, 1, 2), (5, 6), 8).permute(0, 2, 3, 1)
    assert abs(float(out.weights.sum()) - float(pooled.sum())) < 1e-3
    torch.testing.assert_close(
        out.sums.sum(0).double(), (values * pooled).sum((0, 1, 2)).double(), atol=1e-3, rtol=1e-4
    )


def test_tile_batches_and_threads_do_not_change_the_result():
    scene = random_scene(n=600, dim=1, width=64, height=48, n_cameras=2, seed=5)
    values = torch.randn(2, 6, 8, 40, generator=torch.Generator().manual_seed(4))
    whole = run(scene, values, 8, backend="cpu")
    batched = run(scene, values, 8, backend="cpu", memory_budget=4 * 40 * 50)  # ~50 rows a batch
    assert torch.equal(whole.sums, batched.sums) and torch.equal(whole.weights, batched.weights)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run(scene, values, 8, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert torch.equal(whole.sums, single.sums)
        assert torch.equal(whole.weights, single.weights)


def test_views_summed_into_one_result_equal_one_call_on_all_views():
    scene = random_scene(n=300, dim=1, width=40, height=32, n_cameras=2, seed=8)
    values = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(8))
    both = run(scene, values, 8, backend="cpu")
    means, quats, scales, opacities, _, viewmats, Ks, width, height = scene.args()
    total = None
    for c in range(2):
        total = accumulate(
            means, quats, scales, opacities, viewmats[c : c + 1], Ks[c : c + 1], width, height,
            values[c : c + 1], stride=8, near_plane=NEAR, into=total,
        )  # fmt: skip
    assert torch.equal(total.weights, both.weights)
    torch.testing.assert_close(total.sums, both.sums)
    with pytest.raises(InputShapeError, match="into: expected contiguous float32 sums"):
        run(scene, values, 8, into=Accumulated(total.sums[:, :2], total.weights))


def test_averages_of_a_constant_map_are_that_constant():
    scene = random_scene(n=200, dim=1, width=32, height=24, n_cameras=1, seed=6)
    constant = torch.tensor([0.25, -1.5, 3.0])
    values = constant.expand(1, 3, 4, 3).clone()
    out = run(scene, values, 8, backend="cpu")
    seen = out.weights > 0
    torch.testing.assert_close(out.averages()[seen], constant.expand(int(seen.sum()), 3))
    assert bool((out.averages()[~seen] == 0).all())


def test_values_must_match_the_cameras():
    scene = random_scene(n=20, dim=1, n_cameras=2)
    with pytest.raises(InputShapeError, match=r"values: expected \[2, h, w, M\]"):
        run(scene, torch.zeros(1, 3, 4, 2), 8)
    with pytest.raises(InputShapeError, match="values: expected a float map"):
        run(scene, torch.zeros(2, 3, 4, 0), 8)
