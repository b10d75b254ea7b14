"""Datasets: one Dataset type, loaders for real formats, and synthetic worlds with ground truth."""

from feature_splat.data.blender import export_blender, load_blender
from feature_splat.data.colmap import load_colmap
from feature_splat.data.dataset import Dataset
from feature_splat.data.loading import load_dataset
from feature_splat.data.nerfstudio import export_nerfstudio, load_nerfstudio

__all__ = [
    "Dataset",
    "export_blender",
    "export_nerfstudio",
    "load_blender",
    "load_colmap",
    "load_dataset",
    "load_nerfstudio",
]
