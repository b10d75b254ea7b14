"""PLY files, read and written with plyfile: Gaussian fields and plain point clouds.

Gaussian fields use the layout of the original 3DGS, plus ``f_feat_*`` features. Fields per
vertex: ``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3`` (raw
parameters: logit opacity, log scales, unnormalised w-x-y-z quaternion; ``f_rest`` ordered
channel-major as 3DGS writes it), then ``f_feat_0..F-1``. Standard 3DGS viewers load the RGB part
and ignore the extra properties.

Point clouds (a dataset's ``points3D.ply``) are vertices ``x y z`` with optional ``red green blue``.

Before plyfile reads a file, the sizes its header declares are checked against the file's size, so
a header that claims 10^12 vertices fails at once instead of allocating memory for them.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement, PlyListProperty
from torch import Tensor

from feature_splat.errors import CheckpointError, DatasetError, FeatureSplatError
from feature_splat.gaussians import GaussianField
from feature_splat.io.files import atomic_write_bytes

# Bytes per value of each PLY scalar type (the names plyfile accepts).
_TYPE_SIZES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1,
    "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4,
    "float": 4, "float32": 4, "double": 8, "float64": 8,
}  # fmt: skip
_HEADER_LIMIT = 1 << 20  # a header longer than this is refused
_GAUSSIAN_PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0",
                        "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_REST_COUNTS = tuple(3 * ((degree + 1) ** 2 - 1) for degree in range(4))  # f_rest_*: 0 9 24 45


def _columns(n_rest: int, n_feat: int) -> list[str]:
    return [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
        *[f"f_rest_{i}" for i in range(n_rest)],
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
        *[f"f_feat_{i}" for i in range(n_feat)],
    ]  # fmt: skip


def _check_declared_size(path: Path, where: str, error: type[FeatureSplatError]) -> None:
    """Refuse a PLY whose header declares more rows than the bytes after it can hold.

    A row needs at least the bytes of its scalar properties and list lengths (binary), or two
    characters (a value and a separator) per property (ASCII). Lines plyfile would refuse are
    left for plyfile to report.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_LIMIT)
    except OSError as err:
        raise error(f"{where}: could not be read ({err})") from None
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise error(
            f"{where}: not a PLY file (expected 'ply' ... 'end_header' within the first "
            f"{_HEADER_LIMIT} bytes)"
        )
    available = size - end - len(b"end_header")  # the body, plus its leading newline
    text, elements = False, []
    for line in head[:end].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "format":
            text = words[1] == "ascii"
        elif words[:1] == ["element"]:
            try:
                elements.append([words[1], int(words[2]), 0])
            except (IndexError, ValueError):
                return  # a malformed line: plyfile names it
        elif words[:1] == ["property"] and elements:
            if len(words) == 5 and words[1] == "list":
                scalar = words[2]  # a list costs at least its length
            elif len(words) == 3:
                scalar = words[1]
            else:
                return
            if scalar not in _TYPE_SIZES:
                return
            elements[-1][2] += 2 if text else _TYPE_SIZES[scalar]
    required = 0
    for name, count, row in elements:
        row = max(row, 1)  # rows without properties: at most one per byte, as a bound
        required += count * row
        if required - int(text) > available:  # ASCII: the last line may lack its newline
            noun = "vertices" if name == "vertex" else f"'{name}' elements"
            raise error(
                f"{where}: truncated: header declares {count} {noun} of at least {row} bytes "
                f"each, but the file holds only {max(available, 0)} bytes after its header"
            )


def _read_ply_data(path: Path, where: str, error: type[FeatureSplatError]) -> PlyData:
    """The parsed PLY at ``path``; anything unreadable raises ``error`` naming ``where``."""
    if not os.path.isfile(path):
        raise error(f"{where}: PLY file does not exist")
    _check_declared_size(path, where, error)
    try:
        return PlyData.read(str(path))
    except Exception as err:  # plyfile raises many types on corrupt input
        raise error(f"{where}: not a readable PLY file ({err})") from None


def _vertex_columns(
    ply: PlyData, names: list[str], where: str, error: type[FeatureSplatError]
) -> np.ndarray:
    """The vertex properties ``names`` as float32 [N, len(names)]: numbers, all finite."""
    if "vertex" not in ply:
        raise error(f"{where}: no 'vertex' element")
    vertex = ply["vertex"]
    present = {p.name: p for p in vertex.properties}
    missing = [name for name in names if name not in present]
    if missing:
        raise error(f"{where}: vertex element lacks properties {missing}")
    lists = [name for name in names if isinstance(present[name], PlyListProperty)]
    if lists:
        raise error(f"{where}: vertex properties {lists} are lists; expected one number each")
    table = np.empty((vertex.count, len(names)), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: refused
        for k, name in enumerate(names):
            table[:, k] = vertex[name]
    bad = np.argwhere(~np.isfinite(table))
    if len(bad):
        row, column = bad[0]
        raise error(
            f"{where}: vertex property {names[column]}: vertex {row} is {table[row, column]}; "
            f"expected finite numbers (within float32 range)"
        )
    return table


def write_ply(path: str | Path, field: GaussianField) -> Path:
    """Write ``field`` to ``path`` (atomically)."""
    field = field.detach().to("cpu")
    field.check_finite()
    n = len(field)
    rest = field.shN.transpose(1, 2).reshape(n, 3 * field.shN.shape[1])  # channel-major, as 3DGS
    values = torch.cat(
        [
            field.means,
            torch.zeros(n, 3),
            field.sh0[:, 0],
            rest,
            field.logit_opacities[:, None],
            field.log_scales,
            field.quats,
            field.features,
        ],
        dim=1,
    ).to(torch.float32)
    names = _columns(rest.shape[1], field.feature_dim)
    records = np.empty(n, dtype=[(name, "f4") for name in names])
    array = values.numpy()
    for i, name in enumerate(names):
        records[name] = array[:, i]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(records, "vertex")]).write(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_ply(path: str | Path) -> GaussianField:
    """Read a 3DGS PLY (with or without ``f_feat_*``) into a :class:`GaussianField`.

    A PLY with no vertices gives an empty field. Anything malformed (not a PLY, a truncated body,
    missing, misnumbered or list-typed properties, an f_rest_* count of no SH degree 0..3, NaN or
    infinite values) raises a CheckpointError naming the file and the property.
    """
    path = Path(path)
    where = str(path)
    ply = _read_ply_data(path, where, CheckpointError)
    names = [p.name for p in ply["vertex"].properties] if "vertex" in ply else []

    def indexed(prefix: str) -> list[str]:
        found = sorted(
            (int(m.group(1)), name)
            for name in names
            if (m := re.fullmatch(prefix + r"(\d+)", name))
        )
        if [i for i, _ in found] != list(range(len(found))):
            raise CheckpointError(
                f"{path}: properties {prefix}* are not numbered 0..{len(found) - 1}"
            )
        return [name for _, name in found]

    rest_names, feature_names = indexed("f_rest_"), indexed("f_feat_")
    if len(rest_names) % 3:
        raise CheckpointError(
            f"{path}: {len(rest_names)} f_rest_* properties is not a multiple of 3"
        )
    if len(rest_names) not in _REST_COUNTS:
        raise CheckpointError(
            f"{path}: {len(rest_names)} f_rest_* properties; expected 0, 9, 24 or 45 "
            "(3 colour channels x ((degree + 1)^2 - 1) for an SH degree 0..3)"
        )
    columns = [*_GAUSSIAN_PROPERTIES, *rest_names, *feature_names]
    table = torch.from_numpy(_vertex_columns(ply, columns, where, CheckpointError))
    n, k = table.shape[0], len(_GAUSSIAN_PROPERTIES)
    rest = table[:, k : k + len(rest_names)].reshape(n, 3, len(rest_names) // 3)
    try:
        return GaussianField(
            means=table[:, 0:3].clone(),
            quats=table[:, 10:14].clone(),
            log_scales=table[:, 7:10].clone(),
            logit_opacities=table[:, 6].clone(),
            sh0=table[:, None, 3:6].clone(),
            shN=rest.transpose(1, 2).contiguous(),
            features=table[:, k + len(rest_names) :].clone(),
        )
    except FeatureSplatError as err:  # a shape the checks above let through
        raise CheckpointError(f"{path}: {err}") from None


def read_ply_points(path: str | Path, where: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Vertex positions [P, 3] float32 of a point-cloud PLY (ASCII or binary, either byte order),
    with colours [P, 3] in [0, 1] when it has ``red green blue`` (integers 0-255, or floats in
    [0, 1]).

    ``where`` (default: the path) starts the DatasetError raised for a missing, truncated or
    malformed file, or for positions that are NaN or infinite.
    """
    path = Path(path)
    where = str(path) if where is None else where
    ply = _read_ply_data(path, where, DatasetError)
    points = torch.from_numpy(_vertex_columns(ply, ["x", "y", "z"], where, DatasetError))
    vertex = ply["vertex"]
    if not all(channel in vertex for channel in ("red", "green", "blue")):
        return points, None
    colors = _vertex_columns(ply, ["red", "green", "blue"], where, DatasetError)
    integer = all(
        np.issubdtype(vertex.ply_property(c).val_dtype, np.integer)
        for c in ("red", "green", "blue")
    )
    scale = 255.0 if integer else 1.0
    if colors.size and not (colors.min() >= 0 and colors.max() <= scale):
        raise DatasetError(
            f"{where}: vertex properties red green blue: expected colours in 0..{scale:g}, "
            f"got values from {colors.min():g} to {colors.max():g}"
        )
    return points, torch.from_numpy(colors / scale)


def write_ply_points(path: str | Path, points: Tensor, colors: Tensor | None = None) -> Path:
    """Write points [P, 3] as a binary little-endian PLY (``x y z`` float, and ``red green blue``
    uchar from ``colors`` [P, 3] in [0, 1] when given), atomically."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    records = np.empty(points.shape[0], dtype=fields)
    xyz = points.detach().cpu().float().numpy()
    records["x"], records["y"], records["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        rgb = (colors.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        records["red"], records["green"], records["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(records, "vertex")], byte_order="<").write(buffer)
    return atomic_write_bytes(path, buffer.getvalue())
