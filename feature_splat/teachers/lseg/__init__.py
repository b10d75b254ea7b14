"""LSeg (language-driven semantic segmentation) as a language-aligned teacher.

:mod:`.net` holds the network (state dict compatible with the official ``demo_e200.ckpt``),
:mod:`.teacher` the :class:`LSegTeacher` that runs it; see their docstrings.
"""

from feature_splat.teachers.lseg.net import LSEG_CONFIGS, LSegConfig, LSegNet
from feature_splat.teachers.lseg.teacher import (
    CHECKPOINT_SOURCE,
    FEATURE_3DGS_SCALES,
    OFFICIAL_FILE,
    LSegGeometry,
    LSegTeacher,
    lseg_geometry,
    read_lightning_state_dict,
    strip_checkpoint_prefix,
)

__all__ = [
    "CHECKPOINT_SOURCE",
    "FEATURE_3DGS_SCALES",
    "LSEG_CONFIGS",
    "OFFICIAL_FILE",
    "LSegConfig",
    "LSegGeometry",
    "LSegNet",
    "LSegTeacher",
    "lseg_geometry",
    "read_lightning_state_dict",
    "strip_checkpoint_prefix",
]
