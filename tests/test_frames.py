"""Moving a Gaussian field between coordinate frames (rotations included) against independent truth.

- :func:`rotate_sh`: the turned coefficients give, along R d, the colour the original gave along d.
- :meth:`GaussianField.transformed`: a field and a camera moved by the same similarity render the
  same image (depth scaled), and each covariance becomes s^2 R Sigma R^T.
- :func:`read_dataparser_transform` / :func:`gaussians_to_dataset_frame`: nerfstudio's record is
  validated, and a field moved by hand into nerfstudio's frame comes back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from oracle import _rotation

from feature_splat.cameras import intrinsics, look_at
from feature_splat.data.nerfstudio import gaussians_to_dataset_frame, read_dataparser_transform
from feature_splat.errors import DatasetError, InputShapeError
from feature_splat.gaussians import (
    GaussianField,
    num_sh_bases,
    quat_multiply,
    rotate_sh,
    sh_to_rgb,
)
from feature_splat.rasterizer import rasterize

WIDTH, HEIGHT, NEAR = 32, 24, 0.2


def _random_rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _rotation(torch.randn(1, 4, generator=g, dtype=torch.float64))[0]


def _unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(
        torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1
    )


def _covariances(field: GaussianField) -> torch.Tensor:
    rot = _rotation(field.quats.double())
    return rot @ torch.diag_embed(field.scales.double() ** 2) @ rot.transpose(1, 2)


def _field(n: int = 50, degree: int = 3, features: int = 4, seed: int = 0) -> GaussianField:
    """Random Gaussians around (0, 0, 3), in front of cameras near the origin looking along +z."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.45, 0.4]) + torch.tensor(
        [0.0, 0.0, 3.0]
    )
    return GaussianField(
        means=means,
        quats=torch.randn(n, 4, generator=g),
        log_scales=math.log(0.12) + 0.3 * torch.randn(n, 3, generator=g),
        logit_opacities=torch.randn(n, generator=g) + 0.5,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=0.4 * torch.randn(n, num_sh_bases(degree) - 1, 3, generator=g),
        features=torch.randn(n, features, generator=g),
    )


# -- rotate_sh ---------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotated_sh_give_the_colour_of_the_turned_direction(degree: int, seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    n = 40
    coeffs = torch.randn(n, num_sh_bases(degree), 3, generator=g, dtype=torch.float64)
    rotation = _random_rotation(seed)
    turned = torch.cat([coeffs[:, :1], rotate_sh(coeffs[:, 1:], rotation)], dim=1)
    dirs = _unit(n, seed + 7)
    torch.testing.assert_close(
        sh_to_rgb(turned, dirs @ rotation.T), sh_to_rgb(coeffs, dirs), atol=1e-10, rtol=0
    )
    # float32 coefficients keep their dtype and float precision.
    turned32 = rotate_sh(coeffs[:, 1:].float(), rotation.float())
    assert turned32.dtype == torch.float32
    torch.testing.assert_close(turned32.double(), turned[:, 1:], atol=1e-5, rtol=0)


def test_rotate_sh_identity_and_composition() -> None:
    g = torch.Generator().manual_seed(5)
    shN = torch.randn(30, 15, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        rotate_sh(shN, torch.eye(3, dtype=torch.float64)), shN, atol=1e-12, rtol=0
    )
    first, second = _random_rotation(11), _random_rotation(12)
    torch.testing.assert_close(
        rotate_sh(rotate_sh(shN, first), second), rotate_sh(shN, second @ first), atol=1e-10, rtol=0
    )
    assert rotate_sh(shN[:, :0], first).shape == (30, 0, 3)  # degree 0: nothing to turn


# -- GaussianField.transformed -----------------------------------------------------------------


def _render(field: GaussianField, viewmats: torch.Tensor, near: float):
    centers = -(viewmats[:, :3, :3].transpose(1, 2) @ viewmats[:, :3, 3:])[..., 0]
    colors = field.colors(centers.to(field.means), degree=field.sh_degree)
    features = torch.cat([colors, field.features[None].expand(len(viewmats), -1, -1)], dim=-1)
    Ks = intrinsics(28.0, 28.0, WIDTH / 2, HEIGHT / 2).expand(len(viewmats), 3, 3)
    return rasterize(
        field.means, field.quats, field.scales, field.opacities, features,
        viewmats.to(field.means), Ks.to(field.means), WIDTH, HEIGHT,
        near_plane=near, backend="reference",
    )  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 1.7])
def test_moved_field_and_cameras_render_the_same_image(scale: float) -> None:
    field = _field()
    eyes = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.3, 0.2]])
    viewmats = look_at(eyes, torch.tensor([0.0, 0.0, 3.0]), up=torch.tensor([0.0, -1.0, 0.0]))
    rotation, translation = (
        _random_rotation(21),
        torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64),
    )
    moved = field.transformed(rotation.float(), translation.float(), scale)
    # x' = S x with S = [s R | t]; a camera V sees x as p = V x and the moved camera sees x' as
    # s p (same pixels, depths times s): V' = diag(s, s, s, 1) V S^-1.
    similarity = torch.eye(4, dtype=torch.float64)
    similarity[:3, :3], similarity[:3, 3] = scale * rotation, translation
    stretch = torch.diag(torch.tensor([scale, scale, scale, 1.0], dtype=torch.float64))
    moved_viewmats = stretch @ viewmats.double() @ torch.linalg.inv(similarity)
    before = _render(field, viewmats, NEAR)
    after = _render(moved, moved_viewmats.float(), NEAR * scale)
    assert float(before.alpha.mean()) > 0.2  # the cameras see the field
    torch.testing.assert_close(after.features, before.features, atol=1e-4, rtol=0)
    torch.testing.assert_close(after.alpha, before.alpha, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        after.depth * after.alpha, scale * before.depth * before.alpha, atol=1e-4 * scale, rtol=1e-5
    )


def test_transformed_maps_each_gaussian() -> None:
    field = _field(n=20, degree=2, features=3, seed=4).to("cpu")
    rotation, translation, scale = _random_rotation(31), torch.tensor([1.0, 2.0, -0.5]), 0.37
    moved = field.transformed(rotation, translation, scale)
    expected = scale * field.means.double() @ rotation.T + translation.double()
    torch.testing.assert_close(moved.means.double(), expected, atol=1e-5, rtol=0)
    covariance = scale**2 * rotation @ _covariances(field) @ rotation.T
    torch.testing.assert_close(_covariances(moved), covariance, atol=1e-6, rtol=1e-5)
    assert moved.means.dtype == torch.float32 and moved.quats.dtype == torch.float32
    for name in ("sh0", "logit_opacities", "features"):
        assert torch.equal(getattr(moved, name), getattr(field, name))
    assert moved.sh_degree == 2


@pytest.mark.parametrize(
    ("rotation", "scale", "message"),
    [
        (2.0 * torch.eye(3), 1.0, "proper rotation"),
        (torch.diag(torch.tensor([1.0, 1.0, -1.0])), 1.0, "proper rotation"),  # reflection
        (torch.eye(3)[:2], 1.0, "rotation \\[3, 3\\]"),
        (torch.full((3, 3), float("nan")), 1.0, "finite"),
        (torch.eye(3), 0.0, "scale"),
        (torch.eye(3), -2.0, "scale"),
        (torch.eye(3), float("inf"), "scale"),
        (torch.eye(3), float("nan"), "scale"),
    ],
)
def test_transformed_refuses_bad_similarities(
    rotation: torch.Tensor, scale: float, message: str
) -> None:
    with pytest.raises(InputShapeError, match=message):
        _field(n=3).transformed(rotation, torch.zeros(3), scale)


# -- nerfstudio's dataparser_transforms.json ---------------------------------------------------


def _write(path: Path, record: object) -> Path:
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_read_dataparser_transform(tmp_path: Path) -> None:
    rotation = _random_rotation(41)
    record = {"transform": torch.cat([rotation, torch.ones(3, 1)], 1).tolist(), "scale": 0.25}
    got_r, got_t, got_s = read_dataparser_transform(_write(tmp_path / "t.json", record))
    assert got_r.dtype == got_t.dtype == torch.float64 and got_s == 0.25
    torch.testing.assert_close(got_r, rotation, atol=0, rtol=0)
    torch.testing.assert_close(got_t, torch.ones(3, dtype=torch.float64), atol=0, rtol=0)


IDENTITY = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (None, "does not exist"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ({"scale": 1.0}, "transform: missing"),
        ({"transform": IDENTITY[:2], "scale": 1.0}, "transform"),
        ({"transform": [row[:3] for row in IDENTITY], "scale": 1.0}, "transform"),
        ({"transform": [[1, 0, 0, "x"], *IDENTITY[1:]], "scale": 1.0}, "transform\\[0\\]"),
        ({"transform": [[1, 0, 0, float("nan")], *IDENTITY[1:]], "scale": 1.0}, "transform"),
        ({"transform": [[1, 0.5, 0, 0], *IDENTITY[1:]], "scale": 1.0}, "transform: .*sheared"),
        ({"transform": [[-1, 0, 0, 0], *IDENTITY[1:]], "scale": 1.0}, "transform: .*reflection"),
        ({"transform": IDENTITY, "scale": 0}, "scale: expected a positive"),
        ({"transform": IDENTITY, "scale": -1.0}, "scale: expected a positive"),
        ({"transform": IDENTITY}, "scale: missing"),
        ({"transform": IDENTITY, "scale": "1"}, "scale"),
    ],
)
def test_bad_dataparser_transforms_name_the_file_and_field(
    tmp_path: Path, record: object, field: str
) -> None:
    path = tmp_path / "dataparser_transforms.json"
    if record is not None:
        _write(path, record)
    with pytest.raises(DatasetError, match=field) as info:
        read_dataparser_transform(path)
    assert str(info.value).startswith(f"{path}: ")


def test_gaussians_come_back_to_the_dataset_frame(tmp_path: Path) -> None:
    truth = _field(n=40, degree=3, features=2, seed=9)
    q = torch.tensor([0.2, -0.7, 0.5, 0.4], dtype=torch.float64)
    q = q / q.norm()
    rotation, shift, scale = _rotation(q[None])[0], torch.tensor([0.3, -2.0, 1.1]), 0.42
    path = _write(
        tmp_path / "dataparser_transforms.json",
        {"transform": torch.cat([rotation, shift.double()[:, None]], 1).tolist(), "scale": scale},
    )
    # The field in nerfstudio's frame, moved by hand: x_ns = s (R x + t).
    in_ns = GaussianField(
        means=(scale * (truth.means.double() @ rotation.T + shift.double())).float(),
        quats=quat_multiply(q.float().expand(len(truth), 4), truth.quats),
        log_scales=truth.log_scales + math.log(scale),
        logit_opacities=truth.logit_opacities,
        sh0=truth.sh0,
        shN=rotate_sh(truth.shN, rotation),
        features=truth.features,
    )
    back = gaussians_to_dataset_frame(in_ns, path)
    torch.testing.assert_close(back.means, truth.means, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.log_scales, truth.log_scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(_covariances(back), _covariances(truth), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(back.shN, truth.shN, atol=1e-5, rtol=0)
    for name in ("sh0", "logit_opacities", "features"):
        assert torch.equal(getattr(back, name), getattr(truth, name))
    # Seen from a dataset camera centre c, the colours are those nerfstudio's field shows from
    # s (R c + t).
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 0.3]])
    centers_ns = (scale * (centers.double() @ rotation.T + shift.double())).float()
    torch.testing.assert_close(back.colors(centers), in_ns.colors(centers_ns), atol=1e-5, rtol=0)
