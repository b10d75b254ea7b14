"""PLY files of Gaussian fields in the layout of the original 3DGS, plus ``f_feat_*`` features.

Fields per vertex: ``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3``
(raw parameters: logit opacity, log scales, unnormalised w-x-y-z quaternion; ``f_rest`` ordered
channel-major as 3DGS writes it), then ``f_feat_0..F-1``. Standard 3DGS viewers load the RGB part and
ignore the extra properties.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from feature_splat.errors import CheckpointError, FeatureSplatError
from feature_splat.gaussians import GaussianField
from feature_splat.io.files import atomic_write_bytes


def _columns(n_rest: int, n_feat: int) -> list[str]:
    return [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
        *[f"f_rest_{i}" for i in range(n_rest)],
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
        *[f"f_feat_{i}" for i in range(n_feat)],
    ]  # fmt: skip


def write_ply(path: str | Path, field: GaussianField) -> Path:
    """Write ``field`` to ``path`` (atomically)."""
    field = field.detach().to("cpu")
    field.check_finite()
    n = len(field)
    rest = field.shN.transpose(1, 2).reshape(n, -1)  # channel-major, as 3DGS
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
    """Read a 3DGS PLY (with or without ``f_feat_*``) into a :class:`GaussianField`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: PLY file does not exist")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as err:  # plyfile raises many types on corrupt input
        raise CheckpointError(f"{path}: not a readable PLY file ({err})") from err
    names = [p.name for p in vertex.properties]
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    missing = [name for name in required if name not in names]
    if missing:
        raise CheckpointError(f"{path}: vertex element lacks properties {missing}")

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

    def stack(columns: list[str]) -> torch.Tensor:
        if not columns:
            return torch.zeros(len(vertex.data), 0)
        return torch.from_numpy(
            np.stack([np.asarray(vertex[c], np.float32) for c in columns], axis=1)
        )

    rest_names = indexed("f_rest_")
    if len(rest_names) % 3:
        raise CheckpointError(
            f"{path}: {len(rest_names)} f_rest_* properties is not a multiple of 3"
        )
    n = len(vertex.data)
    rest = stack(rest_names).reshape(n, 3, -1).transpose(1, 2).contiguous()
    try:
        field = GaussianField(
            means=stack(["x", "y", "z"]),
            quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
            log_scales=stack(["scale_0", "scale_1", "scale_2"]),
            logit_opacities=stack(["opacity"])[:, 0],
            sh0=stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
            shN=rest,
            features=stack(indexed("f_feat_")),
        )
        field.check_finite()
    except FeatureSplatError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return field
