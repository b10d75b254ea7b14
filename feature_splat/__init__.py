"""feature-splat: 3D Gaussian splatting feature fields.

The public entry points are re-exported here (imported on first use):

- :func:`rasterize` renders Gaussians with any number of feature channels;
- :class:`Cameras` and :class:`GaussianField` hold cameras and Gaussians;
- :class:`FeatureField` is a distilled field: Gaussians, speed-up decoder and background.
"""

from feature_splat.errors import FeatureSplatError
from feature_splat.lazy import lazy_exports

__all__ = [
    "Cameras",
    "FeatureField",
    "FeatureSplatError",
    "GaussianField",
    "RenderOutput",
    "rasterize",
]
__version__ = "0.1.0"
__getattr__ = lazy_exports(
    __name__,
    {
        "Cameras": "feature_splat.cameras",
        "FeatureField": "feature_splat.field",
        "GaussianField": "feature_splat.gaussians",
        "RenderOutput": "feature_splat.rasterizer.api",
        "rasterize": "feature_splat.rasterizer.api",
    },
)
