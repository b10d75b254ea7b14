"""Reading and writing files: every write is atomic and never replaces an input."""

from feature_splat.io.files import atomic_write_bytes, write_json, write_npz, write_png
from feature_splat.io.ply import read_ply, write_ply

__all__ = ["atomic_write_bytes", "read_ply", "write_json", "write_npz", "write_ply", "write_png"]
