"""The speed-up decoder of Feature 3DGS: a 1x1 map from F rendered channels to the teacher's M.

By default it is affine (no nonlinearity). A rendered pixel is ``sum_i w_i f_i + T bg`` with weights
summing to one (the background takes the remaining transmittance ``T``), so decoding commutes with
compositing: ``decode(pixel) = sum_i w_i decode(f_i) + T decode(bg)``. Decoding each Gaussian's
feature is then exact, which 3D selection and editing rely on. An MLP variant (``hidden`` widths)
is available when exactness is not needed.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from feature_splat.errors import CheckpointError, InputShapeError
from feature_splat.options import is_int

MAX_WIDTH = 1 << 16  # channels per layer: far above any teacher's width (LSeg, CLIP: 512-1024)


class SpeedUpDecoder(nn.Module):
    """Maps features [..., F] to [..., M]; linear unless ``hidden`` widths are given.

    ``identity=True`` (F = M) renders teacher-width features directly, with no decoder: the
    baseline the speed-up is measured against. An identity of width 0 is the "decoder" of an
    RGB-only field (``--teacher none``).
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden: tuple[int, ...] = (), identity: bool = False
    ) -> None:
        super().__init__()
        smallest = 0 if identity else 1
        if not all(smallest <= width <= MAX_WIDTH for width in (in_dim, *hidden, out_dim)):
            raise InputShapeError(
                f"SpeedUpDecoder: widths must be 1..{MAX_WIDTH}, got {in_dim} -> {out_dim} "
                f"(hidden {list(hidden)})"
            )
        if identity and (in_dim != out_dim or hidden):
            raise InputShapeError(
                f"SpeedUpDecoder: identity needs equal widths and no hidden layers, got {in_dim} -> {out_dim}"
            )
        self.in_dim, self.out_dim, self.hidden, self.identity = (
            in_dim,
            out_dim,
            tuple(hidden),
            identity,
        )
        widths = [] if identity else [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    @property
    def is_linear(self) -> bool:
        """Whether decoding commutes with compositing (no hidden layers)."""
        return not self.hidden

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.in_dim:
            raise InputShapeError(
                f"SpeedUpDecoder: expected features with {self.in_dim} channels, got {features.shape[-1]}"
            )
        return self.layers(features)

    def cosines(self, features: Tensor, targets: Tensor) -> Tensor:
        """Cosine similarity [..., T] of the decoded ``features`` [..., F] with unit ``targets``
        [T, M], without decoding for a linear decoder.

        With ``u = W f + b``: ``t . u = (t W) f + t . b`` and ``|u|^2 = |L' f|^2 + 2 (W' b) . f +
        b . b`` where ``L L' = W' W``, all F-dimensional. One matmul gives every term, so a frame
        costs F x (T + F + 1) operations and one small buffer per pixel, not F x M.
        """
        if self.identity or not self.is_linear:
            return torch.nn.functional.normalize(self(features).float(), dim=-1) @ targets.T
        linear = self.layers[0]
        weight, bias = linear.weight.float(), linear.bias.float()  # [M, F], [M]
        eigenvalues, eigenvectors = torch.linalg.eigh(weight.T @ weight)
        root = eigenvectors * eigenvalues.clamp_min(0).sqrt()  # L, with L L' = W' W
        projection = torch.cat([(targets @ weight).T, root, (weight.T @ bias)[:, None]], dim=1)
        terms = features.float() @ projection  # [..., T + F + 1]
        count = targets.shape[0]
        dots = terms[..., :count] + targets @ bias
        squared = terms[..., count:-1].square().sum(-1) + 2 * terms[..., -1] + bias @ bias
        return dots / squared.clamp_min(1e-24).sqrt()[..., None]

    def config(self) -> dict[str, object]:
        """Constructor arguments, for saving next to the weights."""
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "hidden": list(self.hidden),
            "identity": self.identity,
        }

    @classmethod
    def from_state(cls, config: object, state: object, source: str) -> SpeedUpDecoder:
        """Rebuild a decoder saved with :meth:`config` and ``state_dict()`` (``source`` names the
        file in errors). The config is checked against the stored tensors before anything is
        allocated, and the weights must be finite."""
        from feature_splat.io.checkpoints import build_checked

        if not isinstance(config, dict):
            raise CheckpointError(f"{source}: decoder_config: expected a dict")
        in_dim, out_dim = config.get("in_dim"), config.get("out_dim")
        hidden, identity = config.get("hidden", []), config.get("identity", False)
        well_formed = (
            all(is_int(v) for v in (in_dim, out_dim))
            and isinstance(hidden, list | tuple)
            and all(is_int(w) for w in hidden)
            and isinstance(identity, bool)
        )
        if not well_formed:
            raise CheckpointError(
                f"{source}: decoder_config: expected in_dim and out_dim (whole numbers), hidden "
                f"(a list of them) and identity (true / false), got {str(config)[:200]}"
            )
        args = (in_dim, out_dim, tuple(hidden), identity)
        layers = 0 if identity else len(hidden) + 1
        found = len(state) if isinstance(state, dict) else type(state).__name__
        if found != 2 * layers:  # a weight and a bias per layer
            raise CheckpointError(
                f"{source}: decoder_state: expected {2 * layers} tensors for {layers} layers "
                f"(decoder_config), got {found}"
            )
        return build_checked(lambda: cls(*args), state, source)
