"""Test setup: make the helper modules beside the tests importable and keep runs deterministic."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)
