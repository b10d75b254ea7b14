"""read_ply on 3DGS PLY files as other tools write them, and its errors on malformed ones.

No file here is written with feature_splat's own ``write_ply``: each follows a published layout
and is written with plyfile (``PlyElement.describe``) or as raw bytes.

* Inria 3DGS (graphdeco-inria/gaussian-splatting, ``GaussianModel.save_ply``): float32
  ``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3``, binary little
  endian, with ``f_rest`` channel-major: index = channel * (K-1) + (basis - 1), K = (degree+1)^2.
  Raw parameters: logit opacity, log scales, unnormalised w x y z rotation.
* nerfstudio 1.1.5 ``ns-export gaussian-splat`` (``ExportGaussianSplat.write_ply``): the same
  properties in the same order, the header written by hand and each value written as float32.
* What other exporters vary: no normals, another order, doubles, ASCII, big endian, extra
  properties; and ``f_feat_*`` (feature-splat's features) in any order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from feature_splat.errors import CheckpointError
from feature_splat.io import read_ply

F32 = np.float32
N = 6  # Gaussians per test file


# -- writing files independently of write_ply -------------------------------------------------
def write_columns(
    path: Path,
    columns: dict[str, np.ndarray],
    *,
    text: bool = False,
    byte_order: str = "<",
    val_types: dict[str, str] | None = None,
) -> Path:
    """Write ``columns`` (name -> 1-D array, in order; the array's dtype is the property's type,
    an object array of arrays a list property) as the ``vertex`` element of a PLY at ``path``."""
    n = len(next(iter(columns.values())))
    records = np.empty(n, dtype=[(name, array.dtype) for name, array in columns.items()])
    for name, array in columns.items():
        records[name] = array
    vertex = PlyElement.describe(records, "vertex", val_types=val_types or {})
    PlyData([vertex], text=text, byte_order=byte_order).write(str(path))
    return path


def gaussians(n: int = N, degree: int = 3, seed: int = 0, dtype=F32) -> dict[str, np.ndarray]:
    """Known raw parameters of ``n`` Gaussians, shaped as 3DGS's GaussianModel holds them.

    ``features_rest`` [N, K-1, 3] holds 1000 * vertex + 10 * basis + channel, so every
    (vertex, basis, channel) has its own value and a transposed mapping cannot pass unseen.
    """
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    vertex, basis, channel = np.meshgrid(np.arange(n), np.arange(1, k), np.arange(3), indexing="ij")
    return {
        "xyz": rng.normal(size=(n, 3)).astype(dtype),
        "features_dc": rng.normal(size=(n, 1, 3)).astype(dtype),
        "features_rest": (1000 * vertex + 10 * basis + channel).astype(dtype),
        "opacity": rng.normal(size=(n, 1)).astype(dtype),  # logit
        "scaling": rng.normal(-3.0, 1.0, size=(n, 3)).astype(dtype),  # log
        "rotation": rng.normal(size=(n, 4)).astype(dtype),  # w x y z, not normalised
    }


def inria_names(n_rest: int, normals: bool = True) -> list[str]:
    """3DGS's ``construct_list_of_attributes``: the property names of its PLY, in order."""
    return [
        "x", "y", "z", *(["nx", "ny", "nz"] if normals else []),
        "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(n_rest)],
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    ]  # fmt: skip


def inria_columns(g: dict[str, np.ndarray], normals: bool = True) -> dict[str, np.ndarray]:
    """The vertex columns 3DGS's ``save_ply`` writes for ``g``, in its order (zero normals)."""
    n = len(g["xyz"])
    f_dc = g["features_dc"].transpose(0, 2, 1).reshape(n, 3)
    n_rest = 3 * g["features_rest"].shape[1]
    f_rest = g["features_rest"].transpose(0, 2, 1).reshape(n, n_rest)  # channel-major
    parts = [g["xyz"], *([np.zeros_like(g["xyz"])] if normals else [])]
    table = np.concatenate([*parts, f_dc, f_rest, g["opacity"], g["scaling"], g["rotation"]], 1)
    names = inria_names(f_rest.shape[1], normals)
    return {name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(names)}


def assert_field_is(field, g: dict[str, np.ndarray]) -> None:
    """``field`` holds exactly the parameters ``g`` (as float32) and their activations."""
    expected = {key: torch.from_numpy(value.astype(F32)) for key, value in g.items()}
    n = len(g["xyz"])
    assert len(field) == n
    checks = {
        "means": expected["xyz"],
        "sh0": expected["features_dc"],
        "shN": expected["features_rest"],
        "logit_opacities": expected["opacity"][:, 0],
        "log_scales": expected["scaling"],
        "quats": expected["rotation"],
        "opacities": torch.sigmoid(expected["opacity"][:, 0]),
        "scales": torch.exp(expected["scaling"]),
    }
    for name, want in checks.items():
        got = getattr(field, name)
        assert got.dtype == torch.float32, name
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert torch.equal(got, want), name
    assert field.features.shape == (n, 0)


def lists(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of ``arrays``: the values of a list property, one list per vertex."""
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def raises(path: Path, *fragments: str):
    """pytest.raises for a CheckpointError whose message names ``path`` and each fragment."""
    pattern = "".join(f"(?=.*{re.escape(part)})" for part in (str(path), *fragments))
    return pytest.raises(CheckpointError, match=f"(?s){pattern}")


# -- the Inria 3DGS layout --------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_inria_save_ply_layout(tmp_path, degree) -> None:
    """Inria 3DGS: written the way ``GaussianModel.save_ply`` does it (f4 records filled from
    the concatenated attributes, ``PlyData([el]).write``); the SH degree follows from the
    f_rest count 0, 9, 24, 45."""
    g = gaussians(degree=degree)
    columns = inria_columns(g)
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    assert sum(name.startswith("f_rest_") for name in columns) == n_rest
    elements = np.empty(N, dtype=[(name, "f4") for name in columns])
    elements[:] = list(map(tuple, np.stack(list(columns.values()), axis=1)))
    PlyData([PlyElement.describe(elements, "vertex")]).write(str(tmp_path / "point_cloud.ply"))

    field = read_ply(tmp_path / "point_cloud.ply")
    assert field.sh_degree == degree
    assert field.shN.shape == (N, (degree + 1) ** 2 - 1, 3)
    assert_field_is(field, g)
    k = (degree + 1) ** 2
    for channel in range(3):  # the channel-major mapping, property by property
        for basis in range(1, k):
            column = columns[f"f_rest_{channel * (k - 1) + basis - 1}"]
            assert torch.equal(field.shN[:, basis - 1, channel], torch.from_numpy(column))


def test_f_rest_is_read_channel_major(tmp_path) -> None:
    """Inria 3DGS, degree 1, one Gaussian with f_rest_i = i: f_rest_0..2 are red's bases 1..3,
    f_rest_3..5 green's, f_rest_6..8 blue's; shN is [basis, channel]."""
    columns = inria_columns(gaussians(n=1, degree=1))
    for i in range(9):
        columns[f"f_rest_{i}"] = np.array([i], dtype=F32)
    field = read_ply(write_columns(tmp_path / "deg1.ply", columns))
    assert field.shN[0].tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def test_nerfstudio_export_layout(tmp_path) -> None:
    """nerfstudio 1.1.5 ``ns-export gaussian-splat``: ``ExportGaussianSplat.write_ply`` writes
    the header by hand (``property float`` per key of its OrderedDict: x y z, zero nx ny nz,
    f_dc, channel-major f_rest, opacity, scale, rot) and then, vertex by vertex, each value as
    float32, little endian."""
    g = gaussians(degree=3, seed=1)
    columns = inria_columns(g)  # nerfstudio's keys, order and values are Inria's
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {N}\n"
    header += "".join(f"property float {name}\n" for name in columns) + "end_header\n"
    body = b"".join(
        np.asarray(column[i], dtype="<f4").tobytes()
        for i in range(N)
        for column in columns.values()
    )
    (tmp_path / "splat.ply").write_bytes(header.encode("ascii") + body)
    assert_field_is(read_ply(tmp_path / "splat.ply"), g)


# -- what other exporters vary ----------------------------------------------------------------
def test_without_normals(tmp_path) -> None:
    """Inria layout less ``nx ny nz``, as many exporters (and compressors) write it."""
    g = gaussians(degree=2)
    path = write_columns(tmp_path / "no_normals.ply", inria_columns(g, normals=False))
    assert "nx" not in PlyData.read(str(path))["vertex"]
    assert_field_is(read_ply(path), g)


def test_properties_in_another_order(tmp_path) -> None:
    """Inria's properties, f_rest included, shuffled: properties are found by name."""
    g = gaussians(degree=3)
    columns = inria_columns(g)
    order = np.random.default_rng(2).permutation(list(columns))
    assert list(order) != list(columns)
    path = write_columns(tmp_path / "shuffled.ply", {name: columns[name] for name in order})
    assert_field_is(read_ply(path), g)


def test_double_properties(tmp_path) -> None:
    """Inria's properties as ``double``: read as float32 (each value rounded once)."""
    g = gaussians(degree=1, dtype=np.float64)
    path = write_columns(tmp_path / "double.ply", inria_columns(g))
    assert PlyData.read(str(path))["vertex"].ply_property("x").val_dtype.endswith("f8")
    assert_field_is(read_ply(path), g)


def test_double_outside_float32_range_is_refused(tmp_path) -> None:
    """A double too large for float32 would become inf: refused, naming property and vertex."""
    columns = inria_columns(gaussians(degree=0, dtype=np.float64))
    columns["z"][2] = 1e300
    path = write_columns(tmp_path / "huge.ply", columns)
    with raises(path, "vertex property z: vertex 2", "float32 range"):
        read_ply(path)


def test_ascii(tmp_path) -> None:
    """Inria layout in ``format ascii 1.0`` (plyfile writes floats with full precision)."""
    g = gaussians(degree=2)
    path = write_columns(tmp_path / "ascii.ply", inria_columns(g), text=True)
    assert path.read_bytes().startswith(b"ply\nformat ascii 1.0\n")
    assert_field_is(read_ply(path), g)


def test_big_endian(tmp_path) -> None:
    """Inria layout in ``format binary_big_endian 1.0``."""
    g = gaussians(degree=3)
    path = write_columns(tmp_path / "big.ply", inria_columns(g), byte_order=">")
    assert path.read_bytes().startswith(b"ply\nformat binary_big_endian 1.0\n")
    assert_field_is(read_ply(path), g)


def test_extra_properties_and_elements_are_ignored(tmp_path) -> None:
    """Inria layout plus what other tools add: Mip-Splatting's ``filter_3D``, semantic
    channels, uchar ``red green blue``, an extra list property, and a second element."""
    g = gaussians(degree=1)
    rng = np.random.default_rng(3)
    columns = {
        "red": rng.integers(0, 256, N).astype(np.uint8),
        **inria_columns(g),
        "filter_3D": rng.normal(size=N).astype(F32),
        "semantic_0": rng.normal(size=N).astype(F32),
        "green": rng.integers(0, 256, N).astype(np.uint8),
        "blue": rng.integers(0, 256, N).astype(np.uint8),
        "neighbours": lists([np.arange(i, dtype=np.int32) for i in range(N)]),
    }
    records = np.empty(N, dtype=[(name, array.dtype) for name, array in columns.items()])
    for name, array in columns.items():
        records[name] = array
    vertex = PlyElement.describe(records, "vertex", val_types={"neighbours": "i4"})
    camera = PlyElement.describe(np.zeros(2, dtype=[("fx", "f4"), ("fy", "f4")]), "camera")
    PlyData([vertex, camera]).write(str(tmp_path / "extra.ply"))
    assert_field_is(read_ply(tmp_path / "extra.ply"), g)


def test_features_read_in_index_order(tmp_path) -> None:
    """feature-splat's ``f_feat_0..F-1`` after Inria's properties, written out of order: read
    as ``features`` [N, F] by index."""
    g = gaussians(degree=1)
    features = np.random.default_rng(4).normal(size=(N, 4)).astype(F32)
    columns = inria_columns(g)
    for i in (2, 0, 3, 1):
        columns[f"f_feat_{i}"] = features[:, i]
    field = read_ply(write_columns(tmp_path / "features.ply", columns))
    assert field.feature_dim == 4
    assert torch.equal(field.features, torch.from_numpy(features))
    assert torch.equal(field.means, torch.from_numpy(g["xyz"]))


def test_zero_vertices_give_an_empty_field(tmp_path) -> None:
    """An Inria-layout PLY with ``element vertex 0`` reads as an empty field (lifting refuses
    it elsewhere); the SH degree still follows from the f_rest count."""
    path = write_columns(tmp_path / "empty.ply", inria_columns(gaussians(n=0, degree=3)))
    field = read_ply(path)
    assert len(field) == 0
    assert field.shN.shape == (0, 15, 3)
    assert field.features.shape == (0, 0)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_value_names_property_and_vertex(tmp_path, value) -> None:
    """Inria layout with ``scale_1`` of vertex 3 NaN or infinite."""
    columns = inria_columns(gaussians(degree=1))
    columns["scale_1"][3] = value
    path = write_columns(tmp_path / "nonfinite.ply", columns)
    with raises(path, f"vertex property scale_1: vertex 3 is {value}", "expected finite"):
        read_ply(path)


def test_missing_property(tmp_path) -> None:
    """Inria layout without ``rot_3``."""
    columns = inria_columns(gaussians(degree=1))
    del columns["rot_3"]
    path = write_columns(tmp_path / "no_rot3.ply", columns)
    with raises(path, "lacks properties ['rot_3']"):
        read_ply(path)


def test_f_rest_count_not_a_multiple_of_3(tmp_path) -> None:
    """Inria layout, degree 1, with f_rest_8 dropped: 8 f_rest properties."""
    columns = inria_columns(gaussians(degree=1))
    del columns["f_rest_8"]
    path = write_columns(tmp_path / "rest8.ply", columns)
    with raises(path, "8 f_rest_* properties", "multiple of 3"):
        read_ply(path)


def test_f_rest_count_of_no_sh_degree(tmp_path) -> None:
    """15 f_rest properties (5 per channel): no SH degree 0..3 has 6 bases per channel."""
    columns = inria_columns(gaussians(degree=1))
    columns.update({f"f_rest_{i}": np.zeros(N, F32) for i in range(9, 15)})
    path = write_columns(tmp_path / "rest15.ply", columns)
    with raises(path, "15 f_rest_* properties", "0, 9, 24 or 45"):
        read_ply(path)


@pytest.mark.parametrize("prefix", ["f_rest_", "f_feat_"])
def test_numbering_with_a_gap(tmp_path, prefix) -> None:
    """Inria layout (plus f_feat_*) where property 4 of ``prefix`` is numbered 5."""
    columns = inria_columns(gaussians(degree=1))
    columns.update({f"f_feat_{i}": np.zeros(N, F32) for i in range(6)})
    columns[f"{prefix}9"] = columns.pop(f"{prefix}4")  # 0 1 2 3 5 ... 9: no 4
    path = write_columns(tmp_path / "gap.ply", columns)
    with raises(path, f"{prefix}*", "not numbered"):
        read_ply(path)


def test_list_property(tmp_path) -> None:
    """Inria layout with ``rot_0`` a list property (``property list uchar float rot_0``)."""
    columns = inria_columns(gaussians(degree=0))
    columns["rot_0"] = lists([np.full(2, v, F32) for v in columns["rot_0"]])
    path = write_columns(tmp_path / "list.ply", columns, val_types={"rot_0": "f4"})
    assert b"property list uchar float rot_0" in path.read_bytes()
    with raises(path, "['rot_0'] are lists", "one number each"):
        read_ply(path)


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_truncated_file(tmp_path, text) -> None:
    """An Inria-layout file cut short in its last vertex."""
    path = write_columns(tmp_path / "cut.ply", inria_columns(gaussians(degree=2)), text=text)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - (20 if text else 9)])
    expected = "truncated" if not text else "not a readable PLY file"
    with raises(path, expected):
        read_ply(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b'{"means": []}\n', b"ply\nformat binary_little_endian 1.0\n"],
    ids=["empty", "zeros", "json", "no_end_header"],
)
def test_not_a_ply(tmp_path, content) -> None:
    """Bytes that are no PLY (a ``.splat`` buffer, JSON, a header never ended)."""
    path = tmp_path / "not.ply"
    path.write_bytes(content)
    with raises(path, "not a PLY file", "end_header"):
        read_ply(path)


def test_no_vertex_element(tmp_path) -> None:
    """A valid PLY whose only element is ``point``, with the Gaussian properties."""
    columns = inria_columns(gaussians(degree=0))
    records = np.empty(N, dtype=[(name, "f4") for name in columns])
    for name, array in columns.items():
        records[name] = array
    path = tmp_path / "points.ply"
    PlyData([PlyElement.describe(records, "point")]).write(str(path))
    with raises(path, "no 'vertex' element"):
        read_ply(path)
