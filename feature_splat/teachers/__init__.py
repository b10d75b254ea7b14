"""2D teachers whose features are distilled into fields."""

from feature_splat.teachers.base import Teacher, grid_stride, pool_to_cells, to_teacher_cells

__all__ = ["Teacher", "grid_stride", "pool_to_cells", "to_teacher_cells"]
