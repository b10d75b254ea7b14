"""Errors raised for bad input. Each names the argument, file or field at fault and what was expected."""

from __future__ import annotations


class FeatureSplatError(Exception):
    """Base class of every error feature-splat raises on purpose."""


class InputShapeError(FeatureSplatError, ValueError):
    """A tensor argument has the wrong shape, dtype or device."""


class NonFiniteError(FeatureSplatError, ValueError):
    """A tensor argument holds NaN or infinite values."""


class CameraError(FeatureSplatError, ValueError):
    """A camera matrix (view matrix or intrinsics) is malformed."""


class BackendUnavailableError(FeatureSplatError, RuntimeError):
    """The requested rasterizer backend cannot run here (missing package or device)."""


class DatasetError(FeatureSplatError, ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file and field."""


class CheckpointError(FeatureSplatError, ValueError):
    """A checkpoint, PLY or run folder is missing, corrupt or does not match the configuration."""


class ConfigError(FeatureSplatError):
    """A configuration value (a command-line flag or a config field) is out of range or malformed.

    Deliberately not a ValueError: the command-line parser reports ValueErrors raised while
    building a config in its own multi-line format; this one reaches the one-line error handler."""


class OutputError(FeatureSplatError, ValueError):
    """An output location is refused: it is an input, inside one, or a folder feature-splat did
    not make for this kind of output."""
