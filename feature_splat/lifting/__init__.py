"""Training-free features for Gaussians that already exist: lift a teacher's features onto a
fixed 3DGS by their rendering-weight average, compress to F channels and a linear decoder, and
optionally refine (``feature-splat lift``)."""

from feature_splat.lazy import lazy_exports

__all__ = [
    "LiftedFeatures",
    "PcaBasis",
    "lift_features",
    "lifted_basis",
    "lifted_field",
    "refine_features",
    "teacher_basis",
]
__getattr__ = lazy_exports(
    __name__,
    {
        "LiftedFeatures": "feature_splat.lifting.solve",
        "lift_features": "feature_splat.lifting.solve",
        "lifted_field": "feature_splat.lifting.solve",
        "PcaBasis": "feature_splat.lifting.solve",
        "lifted_basis": "feature_splat.lifting.solve",
        "teacher_basis": "feature_splat.lifting.solve",
        "refine_features": "feature_splat.lifting.refine",
    },
)
