"""feature-splat: 3D Gaussian splatting feature fields.

The public entry points are re-exported here:

- :func:`rasterize` renders Gaussians with any number of feature channels;
- :class:`Cameras` and :class:`GaussianField` hold cameras and Gaussians.
"""

from feature_splat.cameras import Cameras
from feature_splat.errors import FeatureSplatError
from feature_splat.gaussians import GaussianField
from feature_splat.rasterizer import RenderOutput, rasterize

__all__ = ["Cameras", "FeatureSplatError", "GaussianField", "RenderOutput", "rasterize"]
__version__ = "0.1.0"
