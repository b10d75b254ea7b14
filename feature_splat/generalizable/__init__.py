"""Generalizable feature fields: a network predicts feature Gaussians from posed images, with no
per-scene optimisation (FeatureNeRF's object mode: keypoint and part transfer across instances).

- :class:`GaussianPredictor` (``network``): images -> a :class:`~feature_splat.field.FeatureField`;
- :class:`GenTrainer`, :func:`run_training` (``training``): training across instances;
- :func:`load_model`, :func:`save_model`: the ``model.pt`` of a ``gen train`` run;
- ``config``: the configs of the ``feature-splat gen`` commands; ``commands``: eval, predict,
  fit-fields; ``evaluation``: keypoint and part transfer scored against ground truth.
"""

from feature_splat.lazy import lazy_exports

__all__ = [
    "GaussianPredictor",
    "GenTrainer",
    "PredictorConfig",
    "load_model",
    "run_training",
    "save_model",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "GaussianPredictor": "feature_splat.generalizable.network",
        "PredictorConfig": "feature_splat.generalizable.config",
        "GenTrainer": "feature_splat.generalizable.training",
        "load_model": "feature_splat.generalizable.training",
        "run_training": "feature_splat.generalizable.training",
        "save_model": "feature_splat.generalizable.training",
    },
)
