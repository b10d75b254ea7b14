"""Decoders that lift low-dimensional rendered features to the teacher's width."""

from feature_splat.decoders.speedup import SpeedUpDecoder

__all__ = ["SpeedUpDecoder"]
