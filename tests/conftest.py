"""Test setup: make the helper modules beside the tests importable and keep runs deterministic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)

# The nerfstudio method's tests run in its own environment (`make test-nerfstudio`, .venv-ns);
# this one has no nerfstudio, and they are not collected here.
if importlib.util.find_spec("nerfstudio") is None:
    collect_ignore_glob = ["nerfstudio_method/*"]
