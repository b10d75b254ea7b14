"""The N-channel tile rasterizer: one front function, three backends that agree.

- ``reference``: plain PyTorch, differentiated by autograd; the readable statement of the algorithm.
- ``cpu``: numba-compiled forward and hand-written backward; the default for CPU tensors.
- ``gsplat``: :func:`gsplat.rasterization` for CUDA tensors.
"""

from feature_splat.rasterizer.api import BACKENDS, RenderOutput, rasterize
from feature_splat.rasterizer.projection import Projected, project

__all__ = ["BACKENDS", "Projected", "RenderOutput", "project", "rasterize"]
