"""Metrics, defined once and reused by training, evaluation and benchmarks."""

from feature_splat.eval.metrics import (
    feature_cosine,
    psnr,
    segment_by_text,
    segmentation_scores,
    ssim,
)

__all__ = ["feature_cosine", "psnr", "segment_by_text", "segmentation_scores", "ssim"]
