"""A field of 3D Gaussians with colour (spherical harmonics) and a feature vector of any width.

:class:`GaussianField` stores the *raw* (optimised) parameters, as 3DGS and gsplat do:

==================  ==========  ==========================================
field               shape       activation
==================  ==========  ==========================================
``means``           [N, 3]      none (world coordinates)
``quats``           [N, 4]      normalised (w, x, y, z)
``log_scales``      [N, 3]      ``exp``
``logit_opacities`` [N]         ``sigmoid``
``sh0``             [N, 1, 3]   SH degree-0 (DC) colour coefficients
``shN``             [N, K-1, 3] higher SH bands, K = (degree + 1) ** 2
``features``        [N, F]      none; F >= 0 chosen at run time
==================  ==========  ==========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from feature_splat.errors import InputShapeError, NonFiniteError

# Real spherical-harmonic normalisation constants, bands 0..3 (the ordering 3DGS uses).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3

# Names of the raw parameters in gsplat's convention (its strategies read these keys).
_PARAMETER_NAMES = {
    "means": "means",
    "quats": "quats",
    "log_scales": "scales",
    "logit_opacities": "opacities",
    "sh0": "sh0",
    "shN": "shN",
    "features": "features",
}


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (0..3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise InputShapeError(f"sh degree: expected 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(n_bases: int) -> int:
    """Inverse of :func:`num_sh_bases`."""
    degree = math.isqrt(n_bases) - 1
    if (degree + 1) ** 2 != n_bases or degree > MAX_SH_DEGREE:
        raise InputShapeError(
            f"SH coefficients: {n_bases} per channel is not (degree + 1)^2, degree <= 3"
        )
    return degree


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis values [..., (degree+1)^2] at unit directions ``dirs`` [..., 3]."""
    num_sh_bases(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(coeffs: Tensor, dirs: Tensor, degree: int | None = None) -> Tensor:
    """RGB [..., 3] from SH coefficients [..., K, 3] seen along unit ``dirs`` [..., 3].

    Uses bands up to ``degree`` (default: all that ``coeffs`` holds); the 3DGS offset of 0.5 is
    added and negative values are clamped to 0.
    """
    full_degree = sh_degree_from_bases(coeffs.shape[-2])
    degree = full_degree if degree is None else min(degree, full_degree)
    basis = sh_basis(degree, dirs)
    rgb = (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficients that give colour ``rgb`` [..., 3] (inverse of degree-0 :func:`sh_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (w, x, y, z) quaternions [..., 4] (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


def rotmat_to_quat(rotations: Tensor) -> Tensor:
    """Unit (w, x, y, z) quaternions [..., 4] with w >= 0 from rotation matrices [..., 3, 3]."""
    m = rotations
    # Shepperd's method: the largest of the four squared components gives a well-conditioned divisor.
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    squares = torch.stack(
        [
            1 + trace,
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        dim=-1,
    )
    largest = squares.argmax(dim=-1, keepdim=True)
    quarter = 0.5 * torch.sqrt(squares.gather(-1, largest).clamp_min(1e-12))  # |component|
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s21, s02, s10 = (
        m[..., 2, 1] + m[..., 1, 2],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 0] + m[..., 0, 1],
    )
    q = quarter[..., 0]
    candidates = torch.stack(
        [
            torch.stack([q, d21 / (4 * q), d02 / (4 * q), d10 / (4 * q)], dim=-1),
            torch.stack([d21 / (4 * q), q, s10 / (4 * q), s02 / (4 * q)], dim=-1),
            torch.stack([d02 / (4 * q), s10 / (4 * q), q, s21 / (4 * q)], dim=-1),
            torch.stack([d10 / (4 * q), s02 / (4 * q), s21 / (4 * q), q], dim=-1),
        ],
        dim=-2,
    )
    quats = candidates.gather(-2, largest[..., None].expand(*largest.shape[:-1], 1, 4))[..., 0, :]
    quats = torch.nn.functional.normalize(quats, dim=-1)
    return torch.where(quats[..., :1] < 0, -quats, quats)


def quat_multiply(first: Tensor, second: Tensor) -> Tensor:
    """The Hamilton product ``first * second`` of (w, x, y, z) quaternions (``second`` applied first)."""
    w1, x1, y1, z1 = first.unbind(-1)
    w2, x2, y2, z2 = second.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def _sphere_directions(count: int = 64) -> Tensor:
    """``count`` well-spread unit directions [count, 3] float64 (a Fibonacci spiral)."""
    k = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / count
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    ring = torch.sqrt(1.0 - z * z)
    return torch.stack([ring * torch.cos(phi), ring * torch.sin(phi), z], dim=-1)


def rotate_sh(shN: Tensor, rotation: Tensor) -> Tensor:
    """SH bands 1..3 (``shN`` [..., K-1, 3], the layout of :attr:`GaussianField.shN`) of the
    colour function turned by ``rotation`` R [3, 3]: ``colour_new(R d) = colour_old(d)``.

    Each band l is closed under rotation, so its (2l+1)x(2l+1) matrix D_l with
    ``Y_l(R d) D_l = Y_l(d)`` (basis values as row vectors) is found exactly, in float64, by least
    squares over a fixed set of well-spread directions d; the new coefficients are ``D_l c``.
    Band 0 (``sh0``) is invariant and not part of ``shN``.
    """
    degree = sh_degree_from_bases(shN.shape[-2] + 1)
    if tuple(rotation.shape) != (3, 3):
        raise InputShapeError(f"rotate_sh: rotation must be [3, 3], got {list(rotation.shape)}")
    if degree == 0:
        return shN.clone()
    dirs = _sphere_directions()
    turned = dirs @ rotation.detach().to("cpu", torch.float64).T  # R d, row by row
    before, after = sh_basis(degree, dirs), sh_basis(degree, turned)
    blocks = []
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) * (band + 1)
        blocks.append(torch.linalg.lstsq(after[:, lo:hi], before[:, lo:hi]).solution)
    matrix = torch.block_diag(*blocks).to(shN)  # [K-1, K-1]
    return matrix @ shN


@dataclass
class GaussianField:
    """N Gaussians: raw parameters (see the module docstring) and their activations."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    logit_opacities: Tensor
    sh0: Tensor
    shN: Tensor
    features: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "logit_opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise InputShapeError(
                    f"GaussianField.{name}: expected {list(shape)}, got {list(value.shape)}"
                )
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise InputShapeError(
                f"GaussianField.shN: expected [{n}, K-1, 3], got {list(self.shN.shape)}"
            )
        n_bases = self.shN.shape[1] + 1
        if n_bases not in (1, 4, 9, 16):
            raise InputShapeError(
                f"GaussianField.shN: {n_bases} SH coefficients per channel (with sh0) is not "
                "(degree + 1)^2 for a degree in 0..3"
            )
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise InputShapeError(
                f"GaussianField.features: expected [{n}, F], got {list(self.features.shape)}"
            )

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        scales: Tensor,
        opacities: Tensor,
        rgb: Tensor,
        features: Tensor | None = None,
        quats: Tensor | None = None,
        sh_degree: int = 0,
    ) -> GaussianField:
        """A field from activated values (positive scales, opacities in (0, 1), RGB in [0, 1])."""
        n = means.shape[0]
        if quats is None:
            quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
            quats[:, 0] = 1.0
        if features is None:
            features = torch.zeros(n, 0, dtype=means.dtype, device=means.device)
        eps = 1e-6
        return cls(
            means=means,
            quats=quats,
            log_scales=torch.log(scales),
            logit_opacities=torch.logit(opacities.clamp(eps, 1 - eps)),
            sh0=rgb_to_sh0(rgb)[:, None, :],
            shN=torch.zeros(
                n, num_sh_bases(sh_degree) - 1, 3, dtype=means.dtype, device=means.device
            ),
            features=features,
        )

    @classmethod
    def from_parameters(cls, params: dict[str, Tensor]) -> GaussianField:
        """A field from a gsplat-style parameter dict (see :meth:`to_parameters`)."""
        missing = [key for key in _PARAMETER_NAMES.values() if key not in params]
        if missing:
            raise InputShapeError(f"parameter dict: missing keys {missing}")
        return cls(**{field: params[key] for field, key in _PARAMETER_NAMES.items()})

    def to_parameters(self) -> torch.nn.ParameterDict:
        """Trainable parameters keyed as gsplat's strategies expect (``scales`` are log-scales, ...)."""
        return torch.nn.ParameterDict(
            {
                key: torch.nn.Parameter(getattr(self, field))
                for field, key in _PARAMETER_NAMES.items()
            }
        )

    # -- activations ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        """Positive scales [N, 3]."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Opacities in (0, 1) [N]."""
        return torch.sigmoid(self.logit_opacities)

    @property
    def unit_quats(self) -> Tensor:
        """Normalised rotations [N, 4]."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.shN.shape[1] + 1)

    @property
    def feature_dim(self) -> int:
        return self.features.shape[1]

    @property
    def sh_coeffs(self) -> Tensor:
        """All SH coefficients [N, K, 3]."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def colors(self, camera_centers: Tensor, degree: int | None = None) -> Tensor:
        """View-dependent RGB [C, N, 3] seen from camera centres [C, 3]."""
        dirs = self.means[None] - camera_centers[:, None, :]
        dirs = torch.nn.functional.normalize(dirs, dim=-1)
        return sh_to_rgb(self.sh_coeffs[None].expand(dirs.shape[0], -1, -1, -1), dirs, degree)

    # -- frames ---------------------------------------------------------------------------------
    def transformed(self, rotation: Tensor, translation: Tensor, scale: float) -> GaussianField:
        """The field moved by the similarity ``x' = scale * (R x) + translation``.

        ``rotation`` R [3, 3] must be a proper rotation (R^T R = I and det R = +1, to 1e-4),
        ``translation`` [3] finite, ``scale`` positive and finite. Means are mapped, scales
        multiplied by ``scale``, orientations composed with R, the higher SH bands turned with R
        (:func:`rotate_sh`), so the field renders from a camera moved the same way as this one
        does from the original camera. Opacities, DC colours and features are unchanged.
        """
        if tuple(rotation.shape) != (3, 3) or tuple(translation.shape) != (3,):
            raise InputShapeError(
                f"GaussianField.transformed: expected rotation [3, 3] and translation [3], got "
                f"{list(rotation.shape)} and {list(translation.shape)}"
            )
        rot = rotation.detach().to("cpu", torch.float64)
        shift = translation.detach().to("cpu", torch.float64)
        if not (torch.isfinite(rot).all() and torch.isfinite(shift).all()):
            raise InputShapeError(
                "GaussianField.transformed: rotation and translation must be finite"
            )
        error = (rot.T @ rot - torch.eye(3, dtype=torch.float64)).abs().max().item()
        determinant = torch.linalg.det(rot).item()
        if not (error <= 1e-4 and abs(determinant - 1.0) <= 1e-4):
            raise InputShapeError(
                f"GaussianField.transformed: rotation is not a proper rotation (max |R^T R - I| "
                f"= {error:.2g}, det = {determinant:.6g}; expected 0 and +1)"
            )
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise InputShapeError(
                f"GaussianField.transformed: scale must be positive and finite, got {scale}"
            )
        scale = float(scale)
        means = self.means.to(torch.float64)  # float64 for the map, back to the field's dtype
        moved = scale * means @ rot.to(means.device).T + shift.to(means.device)
        turn = rotmat_to_quat(rot).to(self.quats)
        return replace(
            self,
            means=moved.to(self.means),
            quats=quat_multiply(turn.expand_as(self.quats), self.quats),
            log_scales=self.log_scales + math.log(scale),
            shN=rotate_sh(self.shN, rot),
        )

    # -- structure ------------------------------------------------------------------------------
    def __getitem__(self, index: int | slice | Tensor) -> GaussianField:
        """A sub-field: ``index`` is a slice, an index tensor or a boolean mask [N]."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return GaussianField(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: list[GaussianField]) -> GaussianField:
        """Concatenate fields with the same SH degree and feature width."""
        if not parts:
            raise InputShapeError("GaussianField.cat: needs at least one field")
        for part in parts[1:]:
            if part.feature_dim != parts[0].feature_dim or part.sh_degree != parts[0].sh_degree:
                raise InputShapeError(
                    "GaussianField.cat: fields differ in feature width or SH degree "
                    f"({parts[0].feature_dim}/{parts[0].sh_degree} vs {part.feature_dim}/{part.sh_degree})"
                )
        return GaussianField(
            **{
                f.name: torch.cat([getattr(p, f.name) for p in parts])
                for f in fields(GaussianField)
            }
        )

    def to(self, device: torch.device | str) -> GaussianField:
        return GaussianField(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def detach(self) -> GaussianField:
        return GaussianField(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def with_features(self, features: Tensor) -> GaussianField:
        """The same Gaussians carrying ``features`` [N, F'] instead."""
        return replace(self, features=features)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` naming the first parameter that holds NaN or inf."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value.numel() and not bool(torch.isfinite(value).all()):
                bad = int(
                    (~torch.isfinite(value)).reshape(value.shape[0], -1).any(-1).nonzero()[0, 0]
                )
                raise NonFiniteError(f"GaussianField.{f.name}: non-finite value at Gaussian {bad}")
