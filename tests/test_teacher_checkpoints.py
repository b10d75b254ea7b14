"""Loading checkpoints: clear errors for missing, corrupt and mismatched files, no code run from
them, and no memory spent on sizes they only claim."""

from __future__ import annotations

import hashlib
import os
import pickle
import resource

import pytest
import torch

from feature_splat.errors import CheckpointError
from feature_splat.io.checkpoints import (
    build_checked,
    load_strict,
    read_checkpoint,
    read_state_dict,
)
from feature_splat.teachers.checkpoints import file_digest, require_checkpoint


def test_missing_checkpoint_names_the_file_and_its_source(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"SAM vit_b: no checkpoint given.*segment-anything"):
        require_checkpoint(None, "SAM vit_b", "the segment-anything release")
    with pytest.raises(CheckpointError, match=r"sam_vit_b\.pth does not exist"):
        require_checkpoint(tmp_path / "sam_vit_b.pth", "SAM vit_b", "the segment-anything release")


def test_file_digest_is_the_sha256_of_the_bytes_and_follows_changes(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"first version")
    assert file_digest(path) == hashlib.sha256(b"first version").hexdigest()
    path.write_bytes(b"second, longer version")  # other size: the memo must not answer
    assert file_digest(path) == hashlib.sha256(b"second, longer version").hexdigest()


def test_state_dicts_nested_corrupt_and_mismatched(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.ckpt")
    state = read_state_dict(tmp_path / "wrapped.ckpt")
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    load_strict(fresh, state, "wrapped.ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

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


class _Payload:
    """Pickles to a call of os.system: what a crafted checkpoint carries."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "checkpoint.pt"
    with path.open("wb") as handle:  # the classic pickle route: torch.save's zip is not needed
        pickle.dump({"step": 3, "params": _Payload(marker)}, handle, protocol=2)
    torch.save({"step": 3, "payload": _Payload(marker)}, tmp_path / "zipped.pt")
    for candidate in (path, tmp_path / "zipped.pt"):
        with pytest.raises(CheckpointError, match="not a readable"):
            read_checkpoint(candidate)
    assert not marker.exists()
    torch.load(tmp_path / "zipped.pt", weights_only=False)  # the payload is real: it runs
    assert marker.exists()


def test_a_tiny_file_declaring_a_huge_model_is_refused_before_allocating(tmp_path) -> None:
    state = torch.nn.Linear(4, 3).state_dict()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_checked(lambda: torch.nn.Linear(4, 3 * 10**9), state, "decoder.pt")  # 48 GB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    model = build_checked(lambda: torch.nn.Linear(4, 3), state, "decoder.pt")
    assert torch.equal(model.weight, state["weight"])
    state["bias"] = torch.tensor([0.0, float("nan"), 0.0])
    with pytest.raises(CheckpointError, match="bias holds NaN"):
        build_checked(lambda: torch.nn.Linear(4, 3), state, "decoder.pt")
