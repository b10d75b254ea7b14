"""Reading and writing files: every write is atomic and never replaces an input."""

from feature_splat.io.files import atomic_write_bytes, write_json, write_png

__all__ = ["atomic_write_bytes", "write_json", "write_png"]
