"""Per-scene training: configuration, the trainer, and whole runs (imported on first use)."""

from feature_splat.lazy import lazy_exports

__all__ = ["TrainConfig", "Trainer", "train"]
__getattr__ = lazy_exports(
    __name__,
    {
        "TrainConfig": "feature_splat.training.config",
        "Trainer": "feature_splat.training.trainer",
        "train": "feature_splat.training.run",
    },
)
