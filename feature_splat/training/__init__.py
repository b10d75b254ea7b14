"""Per-scene training: configuration, the trainer, and whole runs."""

from feature_splat.training.config import TrainConfig
from feature_splat.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
