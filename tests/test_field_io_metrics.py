"""PLY round trip, the speed-up decoder's exactness, metrics on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement
from scenes import random_scene

from feature_splat import rasterize
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.eval import feature_cosine, psnr, segment_by_text, segmentation_scores
from feature_splat.gaussians import GaussianField
from feature_splat.io import read_ply, write_ply
from feature_splat.teachers import pool_to_cells


def _field(n: int = 50, feature_dim: int = 7, sh_degree: int = 3) -> GaussianField:
    g = torch.Generator().manual_seed(0)
    return GaussianField(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g),
        logit_opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g),
        features=torch.randn(n, feature_dim, generator=g),
    )


def test_ply_round_trip_is_exact(tmp_path) -> None:
    field = _field()
    write_ply(tmp_path / "f.ply", field)
    back = read_ply(tmp_path / "f.ply")
    for name in ("means", "quats", "log_scales", "logit_opacities", "sh0", "shN", "features"):
        assert torch.equal(getattr(back, name), getattr(field, name)), name


def test_ply_without_features_and_corrupt_files(tmp_path) -> None:
    write_ply(tmp_path / "rgb.ply", _field(feature_dim=0, sh_degree=0))
    assert read_ply(tmp_path / "rgb.ply").feature_dim == 0
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n")
    with pytest.raises(CheckpointError, match=r"bad\.ply"):
        read_ply(tmp_path / "bad.ply")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_ply(tmp_path / "missing.ply")


def test_ply_with_nan_names_the_file(tmp_path) -> None:
    write_ply(tmp_path / "ok.ply", _field())
    data = PlyData.read(str(tmp_path / "ok.ply"))
    vertex = np.array(data["vertex"].data)
    vertex["f_feat_2"][3] = np.nan
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp_path / "nan.ply"))
    with pytest.raises(
        CheckpointError, match=r"nan\.ply: vertex property f_feat_2: vertex 3 is nan"
    ):
        read_ply(tmp_path / "nan.ply")


def test_linear_decoder_commutes_with_compositing() -> None:
    """decode(render(f)) == render(decode(f)): per-Gaussian decoding is exact (DESIGN.md)."""
    scene = random_scene(n=200, dim=6, n_cameras=1, seed=4, near_plane=0.2)
    decoder = SpeedUpDecoder(6, 20)
    background = torch.randn(6)
    args = dict(near_plane=0.2, backend="cpu")
    with torch.no_grad():
        low = rasterize(*scene.args(), backgrounds=background, **args).features
        high = rasterize(
            *scene.params()[:4],
            decoder(scene.features),
            *scene.args()[5:],
            backgrounds=decoder(background),
            **args,
        ).features
        torch.testing.assert_close(decoder(low), high, atol=1e-5, rtol=1e-5)


def test_decoder_cosines_equal_cosines_of_decoded_features() -> None:
    """The F-dimensional cosine of a linear decoder (and the plain path of the others) against
    decoding to M and normalising, the brute-force way."""
    torch.manual_seed(0)
    features = torch.randn(5, 7, 6)
    targets = torch.nn.functional.normalize(torch.randn(4, 20), dim=-1)
    for decoder in (SpeedUpDecoder(6, 20), SpeedUpDecoder(6, 20, hidden=(8,))):
        decoded = torch.nn.functional.normalize(decoder(features), dim=-1)
        torch.testing.assert_close(decoder.cosines(features, targets), decoded @ targets.T,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    identity = SpeedUpDecoder(20, 20, identity=True)
    wide = torch.randn(3, 20)
    expected = torch.nn.functional.normalize(wide, dim=-1) @ targets.T
    torch.testing.assert_close(identity.cosines(wide, targets), expected)


def test_decoder_checks_width() -> None:
    with pytest.raises(InputShapeError, match="4 channels"):
        SpeedUpDecoder(4, 8)(torch.zeros(2, 5))


def test_metrics_on_known_answers() -> None:
    target = torch.zeros(4, 4, 3)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-4)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert feature_cosine(a, a) == pytest.approx(1.0)
    assert feature_cosine(a, a.flip(0)) == pytest.approx(0.0)
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert segment_by_text(torch.tensor([[3.0, 1.0], [0.2, 0.5]]), texts).tolist() == [0, 1]
    truth = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    scores = segmentation_scores(pred, truth, 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 1/2.
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_pool_to_cells_averages_partial_cells() -> None:
    maps = torch.arange(5 * 3, dtype=torch.float32).reshape(1, 1, 3, 5)
    cells = pool_to_cells(maps, 2)
    assert cells.shape == (1, 1, 2, 3)
    assert float(cells[0, 0, 0, 0]) == pytest.approx((0 + 1 + 5 + 6) / 4)
    assert float(cells[0, 0, 0, 2]) == pytest.approx((4 + 9) / 2)
    assert float(cells[0, 0, 1, 2]) == pytest.approx(14.0)


def test_mismatched_feature_widths_are_reported(tmp_path) -> None:
    from feature_splat.field import FeatureField

    field = FeatureField(
        _field(feature_dim=4, sh_degree=1), SpeedUpDecoder(4, 9), torch.zeros(7), 1
    )
    field.save(tmp_path / "run")
    assert FeatureField.load(tmp_path / "run").decoder.out_dim == 9
    write_ply(tmp_path / "run" / "point_cloud.ply", _field(feature_dim=6, sh_degree=1))
    with pytest.raises(CheckpointError, match=r"decoder expects 4 feature channels.*has 6"):
        FeatureField.load(tmp_path / "run")


def test_to_teacher_cells_matches_a_teacher_grid_that_is_not_the_stride_grid() -> None:
    from feature_splat.teachers import to_teacher_cells

    maps = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    blocks = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])  # 2x2 block averages
    torch.testing.assert_close(to_teacher_cells(maps, (2, 2), 2), blocks)
    torch.testing.assert_close(to_teacher_cells(maps, (2, 2), 16), blocks)  # resampled path
