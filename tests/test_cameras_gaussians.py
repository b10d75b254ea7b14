"""Cameras and GaussianField against analytic truth."""

from __future__ import annotations

import math

import pytest
import torch
from oracle import _rotation

from feature_splat.cameras import Cameras, intrinsics, look_at, orbit
from feature_splat.errors import CameraError, InputShapeError, NonFiniteError
from feature_splat.gaussians import GaussianField, quat_to_rotmat, sh_basis, sh_to_rgb


def project_points(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    cam = (cams.viewmats[:, None, :3, :3] @ points[None, :, :, None])[..., 0] + cams.viewmats[
        :, None, :3, 3
    ]
    uv = (cams.Ks[:, None] @ cam[..., None])[..., 0]
    return uv[..., :2] / uv[..., 2:]


def test_look_at_is_a_rigid_transform_that_centres_the_target() -> None:
    eyes = torch.tensor([[3.0, 1.0, 2.0], [-2.0, 4.0, 1.0]])
    target = torch.tensor([0.5, -0.5, 0.2])
    viewmats = look_at(eyes, target)
    rot = viewmats[:, :3, :3]
    torch.testing.assert_close(
        rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0
    )
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2))
    cams = Cameras(viewmats, intrinsics(50, 50, 32, 24).expand(2, 3, 3), 64, 48)
    torch.testing.assert_close(cams.centers, eyes, atol=1e-5, rtol=0)
    uv = project_points(cams, target[None])
    torch.testing.assert_close(uv[:, 0], torch.tensor([[32.0, 24.0]] * 2), atol=1e-4, rtol=0)
    # World up (+z) points up in the image (negative v).
    above = project_points(cams, (target + torch.tensor([0, 0, 0.3]))[None])
    assert bool((above[:, 0, 1] < 24.0).all())


def test_opengl_camtoworld_round_trip() -> None:
    cams = orbit(5, radius=3.0, width=40, height=30)
    c2w_gl = cams.camtoworlds_opengl()
    # In OpenGL axes the camera looks down its -z: the target is in front along -z.
    forward = -c2w_gl[:, :3, 2]
    to_target = -c2w_gl[:, :3, 3]
    cosines = torch.nn.functional.cosine_similarity(forward, to_target, dim=-1)
    torch.testing.assert_close(cosines, torch.ones(5), atol=1e-5, rtol=0)
    again = Cameras.from_camtoworlds(c2w_gl[:, :3], cams.Ks, 40, 30, convention="opengl")
    torch.testing.assert_close(again.viewmats, cams.viewmats, atol=1e-5, rtol=0)


def test_camera_shape_errors() -> None:
    with pytest.raises(CameraError, match="viewmats"):
        Cameras(torch.eye(3)[None], torch.eye(3)[None], 10, 10)
    with pytest.raises(CameraError, match="parallel"):
        look_at(torch.tensor([0.0, 0.0, 5.0]), torch.zeros(3))


def test_quaternion_rotation_matches_an_independent_construction() -> None:
    q = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(quat_to_rotmat(q), _rotation(q), atol=1e-6, rtol=0)
    # 90 degrees about z maps x to y.
    half = math.sqrt(0.5)
    r = quat_to_rotmat(torch.tensor([[half, 0.0, 0.0, half]]))[0]
    torch.testing.assert_close(
        r @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )


def test_sh_basis_is_orthonormal_on_the_sphere() -> None:
    """Monte Carlo estimate of the Gram matrix of all 16 basis functions is the identity."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(
        torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1
    )
    basis = sh_basis(3, dirs)
    gram = 4 * math.pi * basis.T @ basis / dirs.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.02, rtol=0)


def test_sh_colour_of_degree_zero_and_one() -> None:
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 0] = torch.tensor([0.5, -0.5, 1.0])
    coeffs[0, 3, 0] = 1.0  # band-1 x term: -C1 * x
    rgb = sh_to_rgb(coeffs, torch.tensor([[1.0, 0.0, 0.0]]))
    expected = torch.tensor(
        [[0.5 * 0.28209479 + 0.5 - 0.48860251, 0.5 - 0.5 * 0.28209479, 1 * 0.28209479 + 0.5]]
    )
    torch.testing.assert_close(rgb, expected, atol=1e-6, rtol=0)


def _field(n: int = 6, feature_dim: int = 5) -> GaussianField:
    g = torch.Generator().manual_seed(3)
    return GaussianField.from_activated(
        torch.randn(n, 3, generator=g),
        torch.rand(n, 3, generator=g) + 0.1,
        torch.rand(n, generator=g),
        torch.rand(n, 3, generator=g),
        features=torch.randn(n, feature_dim, generator=g),
        sh_degree=2,
    )


def test_field_activations_indexing_and_concatenation() -> None:
    field = _field()
    assert field.sh_degree == 2 and field.feature_dim == 5 and len(field) == 6
    mask = torch.tensor([True, False, True, False, False, True])
    part = field[mask]
    assert len(part) == 3
    torch.testing.assert_close(part.features, field.features[mask])
    joined = GaussianField.cat([field[:2], field[2:]])
    torch.testing.assert_close(joined.means, field.means)
    # Degree-0 colour is the RGB the field was built from, from any direction.
    rgb = field.colors(torch.tensor([[0.0, 0.0, 10.0], [5.0, 0.0, 0.0]]), degree=0)
    torch.testing.assert_close(rgb[0], rgb[1])
    params = field.to_parameters()
    assert set(params) == {"means", "quats", "scales", "opacities", "sh0", "shN", "features"}
    back = GaussianField.from_parameters(dict(params))
    torch.testing.assert_close(back.opacities, field.opacities)


def test_field_errors() -> None:
    field = _field()
    with pytest.raises(InputShapeError, match="feature width"):
        GaussianField.cat([field, field.with_features(torch.zeros(6, 2))])
    with pytest.raises(InputShapeError, match="shN"):
        GaussianField(
            field.means,
            field.quats,
            field.log_scales,
            field.logit_opacities,
            field.sh0,
            torch.zeros(6, 2, 3),
            field.features,
        )
    bad = field.means.clone()
    bad[4, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"means.*Gaussian 4"):
        GaussianField(
            bad,
            field.quats,
            field.log_scales,
            field.logit_opacities,
            field.sh0,
            field.shN,
            field.features,
        ).check_finite()
