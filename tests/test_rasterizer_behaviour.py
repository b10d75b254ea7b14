"""Determinism, input errors, meta contents and gsplat's densification fed by our meta."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scenes import random_scene

from feature_splat import FeatureSplatError, rasterize
from feature_splat.errors import CameraError, InputShapeError, NonFiniteError
from feature_splat.rasterizer._cpu_kernels import TILE_COST, balance_tiles

NEAR = 0.2


def _render_and_grads(threads: int):
    torch.set_num_threads(threads)
    try:
        scene = random_scene(n=400, dim=7, n_cameras=2, seed=5, near_plane=NEAR)
        params = [p.clone().requires_grad_() for p in scene.params()]
        out = rasterize(
            *params,
            scene.viewmats,
            scene.Ks,
            scene.width,
            scene.height,
            near_plane=NEAR,
            backgrounds=scene.backgrounds,
            backend="cpu",
        )
        out.meta["means2d"].retain_grad()
        loss = (out.features.sin()).sum() + out.depth.mean() + out.alpha.square().sum()
        loss.backward()
        return [
            out.features,
            out.depth,
            out.alpha,
            out.meta["means2d"].grad,
            *(p.grad for p in params),
        ]
    finally:
        torch.set_num_threads(2)


def test_cpu_backend_is_bit_identical_across_runs_and_thread_counts() -> None:
    first = _render_and_grads(threads=2)
    again = _render_and_grads(threads=2)
    single = _render_and_grads(threads=1)
    for a, b, c in zip(first, again, single, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_cpu_backend_keeps_the_callers_torch_thread_count() -> None:
    # numba's OpenMP layer, when it starts, resets the count torch reads: in a fresh process a
    # caller's one thread became two after the first render (and every later kernel ran on two).
    code = """
import torch, numba
torch.set_num_threads(1)
from feature_splat import rasterize
import sys; sys.path.insert(0, "tests")
from scenes import random_scene
scene = random_scene(n=50, dim=3, n_cameras=1, seed=0, near_plane=0.2)
for _ in range(2):
    rasterize(*scene.args(), near_plane=0.2, backend="cpu")
print(torch.get_num_threads(), numba.get_num_threads())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]


@pytest.mark.parametrize("n_workers", [1, 2, 3, 8])
def test_tile_schedule_covers_each_tile_once_and_balances_the_work(n_workers: int) -> None:
    rng = np.random.default_rng(n_workers)
    cost = np.concatenate([rng.integers(0, 50, 40), rng.integers(500, 900, 5)])  # a few hot tiles
    rng.shuffle(cost)
    first = 7
    order, starts = balance_tiles(cost, first, n_workers)
    assert sorted(order) == list(range(first, first + len(cost)))
    assert starts[0] == 0 and starts[-1] == len(cost) and np.all(np.diff(starts) >= 0)
    loads = []
    for w in range(n_workers):
        tiles = order[starts[w] : starts[w + 1]]
        assert np.all(np.diff(tiles) > 0)  # tile order within a worker
        loads.append(int((cost[tiles - first] + TILE_COST).sum()))
    # greedy list scheduling: no worker ends later than the average load plus one tile
    assert max(loads) <= (cost + TILE_COST).sum() / n_workers + (cost + TILE_COST).max()
    # and the hot tiles are spread: no worker holds two of them while another holds none
    hot = [int(np.sum(cost[order[starts[w] : starts[w + 1]] - first] >= 500))
           for w in range(n_workers)]  # fmt: skip
    assert max(hot) - min(hot) <= 1


def test_meta_has_what_gsplat_strategies_read() -> None:
    scene = random_scene(n=100, dim=3, n_cameras=2, seed=2, near_plane=NEAR)
    out = rasterize(*scene.args(), near_plane=NEAR, backend="cpu")
    meta = out.meta
    assert (meta["width"], meta["height"], meta["n_cameras"]) == (scene.width, scene.height, 2)
    assert (
        meta["radii"].shape == (2, scene.means.shape[0], 2) and meta["radii"].dtype == torch.int32
    )
    assert meta["means2d"].shape == (2, scene.means.shape[0], 2)
    assert meta["gaussian_ids"] is None
    # Gaussians behind the camera (indices n, n+1 in the scene) are culled in every view.
    assert int(meta["radii"][:, 100:102].abs().max()) == 0


def _good_args():
    scene = random_scene(n=20, dim=3, n_cameras=1, seed=0, near_plane=NEAR)
    return dict(
        means=scene.means,
        quats=scene.quats,
        scales=scene.scales,
        opacities=scene.opacities,
        features=scene.features,
        viewmats=scene.viewmats,
        Ks=scene.Ks,
        width=scene.width,
        height=scene.height,
    )


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


def _bad_viewmat(args):
    v = args["viewmats"].clone()
    v[0, :3, :3] *= 2.0
    return v


def _bad_bottom_row(args):
    v = args["viewmats"].clone()
    v[0, 3, 0] = 1.0
    return v


def _bad_focal(args):
    k = args["Ks"].clone()
    k[0, 0, 0] = -5.0
    return k


@pytest.mark.parametrize(
    ("field", "make_bad", "error", "needle"),
    [
        ("means", lambda a: a["means"][:, :2], InputShapeError, "means"),
        ("quats", lambda a: a["quats"][:-1], InputShapeError, "quats"),
        ("scales", lambda a: -a["scales"], InputShapeError, "scales"),
        ("opacities", lambda a: a["opacities"] + 1.5, InputShapeError, "opacities"),
        ("features", lambda a: a["features"][:, :0], InputShapeError, "D = 0"),
        ("features", lambda a: a["features"][:-2], InputShapeError, "features"),
        ("means", lambda a: _nan_at(a["means"]), NonFiniteError, "means"),
        ("features", lambda a: _nan_at(a["features"]), NonFiniteError, "features"),
        ("scales", lambda a: _nan_at(a["scales"]), NonFiniteError, "scales"),
        ("viewmats", _bad_viewmat, CameraError, "orthonormal"),
        ("viewmats", _bad_bottom_row, CameraError, "last row"),
        ("Ks", _bad_focal, CameraError, r"Ks\[0\].*fx, fy > 0"),
        ("Ks", lambda a: a["Ks"][:, :2], InputShapeError, "Ks"),
        ("width", lambda a: 0, InputShapeError, "width"),
    ],
)
def test_bad_input_raises_a_clear_error(field, make_bad, error, needle) -> None:
    args = _good_args()
    args[field] = make_bad(args)
    with pytest.raises(error, match=needle) as info:
        rasterize(**args, near_plane=NEAR, backend="cpu")
    assert isinstance(info.value, FeatureSplatError)


def test_unknown_backend_and_wrong_device() -> None:
    with pytest.raises(FeatureSplatError, match="backend"):
        rasterize(**_good_args(), backend="vulkan")  # type: ignore[arg-type]
    mixed = _good_args()
    mixed["features"] = mixed["features"].to("meta")  # a second device, without a GPU
    with pytest.raises(InputShapeError, match=r"one device, got \['cpu', 'meta'\]"):
        rasterize(**mixed, backend="cpu")


def test_backgrounds_shape_checked() -> None:
    with pytest.raises(InputShapeError, match="backgrounds"):
        rasterize(**_good_args(), backgrounds=torch.zeros(5), backend="cpu")


def test_default_strategy_densifies_from_our_meta() -> None:
    """gsplat's DefaultStrategy reads our meta: high screen-space gradients duplicate small
    Gaussians and split large ones."""
    strategy_module = pytest.importorskip("gsplat.strategy")
    from feature_splat.gaussians import GaussianField

    width = height = 48
    scene = random_scene(n=0, dim=3, width=width, height=height, n_cameras=1, near_plane=NEAR)
    means = torch.tensor([[-0.3, 0.0, 3.0], [0.3, 0.0, 3.0], [0.0, 0.4, 3.5]])
    scales = torch.tensor([[0.02, 0.02, 0.02], [0.4, 0.3, 0.3], [0.02, 0.02, 0.02]])
    field = GaussianField.from_activated(
        means,
        scales,
        torch.tensor([0.9, 0.9, 0.9]),
        torch.rand(3, 3, generator=torch.Generator().manual_seed(0)),
        features=torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),
    )
    params = field.to_parameters()
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = strategy_module.DefaultStrategy(
        refine_start_iter=0,
        refine_every=2,
        grow_grad2d=1e-9,
        grow_scale3d=0.05,
        prune_opa=0.0,
        reset_every=10_000,
        refine_scale2d_stop_iter=100,
        grow_scale2d=0.5,
        verbose=False,
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(2))
    for step in range(3):
        out = rasterize(
            params["means"],
            params["quats"],
            torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]),
            params["sh0"][:, 0] * 0.28209479177387814 + 0.5,
            scene.viewmats,
            scene.Ks,
            width,
            height,
            near_plane=NEAR,
            backend="cpu",
        )
        info = out.meta
        strategy.step_pre_backward(params, optimizers, state, step, info)
        ((out.features - target) ** 2).mean().backward()
        if step < 2:
            assert float(info["means2d"].grad.norm()) > 0
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
    # Two small Gaussians duplicated (+2) and the large one split in two (+1): 3 -> 6.
    assert params["means"].shape[0] == 6
    assert params["features"].shape == (6, 4)
