"""Loading teachers' checkpoints: clear errors for missing, corrupt and mismatched files."""

from __future__ import annotations

import pytest
import torch

from feature_splat.errors import CheckpointError
from feature_splat.teachers.checkpoints import (
    file_digest,
    load_strict,
    read_state_dict,
    require_checkpoint,
)


def test_missing_checkpoint_names_the_file_and_its_source(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"SAM vit_b: no checkpoint given.*segment-anything"):
        require_checkpoint(None, "SAM vit_b", "the segment-anything release")
    with pytest.raises(CheckpointError, match=r"sam_vit_b\.pth does not exist"):
        require_checkpoint(tmp_path / "sam_vit_b.pth", "SAM vit_b", "the segment-anything release")


def test_state_dicts_nested_corrupt_and_mismatched(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.ckpt")
    state = read_state_dict(tmp_path / "wrapped.ckpt")
    load_strict(model, state, "wrapped.ckpt")
    assert file_digest(tmp_path / "wrapped.ckpt") == file_digest(tmp_path / "wrapped.ckpt")

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable"):
        read_state_dict(tmp_path / "bad.pt")
    broken = dict(state)
    broken["0.weight"] = torch.zeros(5, 3)
    del broken["1.bias"]
    broken["extra"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError, match=r"1 missing keys.*1\.bias.*unexpected.*extra.*0\.weight"
    ):
        load_strict(model, broken, "broken.pt")
