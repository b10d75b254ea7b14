"""The N-channel tile rasterizer: one front function, three backends that agree.

- ``reference``: plain PyTorch, differentiated by autograd; the readable statement of the algorithm.
- ``cpu``: numba-compiled forward and hand-written backward; the default for CPU tensors.
- ``gsplat``: :func:`gsplat.rasterization` for CUDA tensors.

The rendering functions are imported on first use, so importing the backend names (configs do)
does not import torch.
"""

from feature_splat.lazy import lazy_exports
from feature_splat.rasterizer.backends import BACKENDS, Backend

__all__ = [
    "BACKENDS",
    "Accumulated",
    "Backend",
    "Projected",
    "RenderOutput",
    "accumulate",
    "check_values",
    "project",
    "rasterize",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "Accumulated": "feature_splat.rasterizer.accumulation",
        "accumulate": "feature_splat.rasterizer.accumulation",
        "RenderOutput": "feature_splat.rasterizer.api",
        "check_values": "feature_splat.rasterizer.api",
        "rasterize": "feature_splat.rasterizer.api",
        "Projected": "feature_splat.rasterizer.projection",
        "project": "feature_splat.rasterizer.projection",
    },
)
