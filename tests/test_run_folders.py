"""Run folders and outputs: where commands may write, what a resume may change, which data a run
means, and what is left after a failure or Ctrl-C. Datasets here are written by the tests."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import cli_error
from PIL import Image

from feature_splat.cameras import look_at
from feature_splat.cli import main
from feature_splat.field import FeatureField
from feature_splat.run_folder import Run

WORLD = ["--width", "32", "--height", "24", "--init-points", "600", "--feature-dim", "4",
         "--teacher-dim", "16", "--iterations", "12"]  # fmt: skip


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path / "cache"))


def write_scene(folder: Path, n_views: int = 10, size: int = 24, file_paths=None) -> Path:
    """A nerfstudio folder: an orbit of cameras and, per view, an image of coloured stripes whose
    phase turns with the camera (drawn here with numpy, not by feature-splat)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_views):
        angle = 2 * math.pi * i / n_views
        eye = torch.tensor([3 * math.cos(angle), 3 * math.sin(angle), 1.0])
        c2w = torch.linalg.inv(look_at(eye, torch.zeros(3))[0].double())
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL axes
        x = np.arange(size)[None, :, None] + 4 * i
        pixels = (127 + 120 * np.sin(x / 3.0 + np.array([0, 2, 4]))).astype(np.uint8)
        path = file_paths[i] if file_paths else f"images/{i:03d}.png"
        target = Path(path) if Path(path).is_absolute() else folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).copy()).save(target)
        frames.append({"file_path": path, "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 30.0, "fl_y": 30.0, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "frames": frames}  # fmt: skip
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def sam_checkpoint(tmp_path) -> Path:
    pytest.importorskip("segment_anything")
    from feature_splat.teachers.sam import SamTeacher

    path = tmp_path / "weights" / "sam_tiny.pth"
    path.parent.mkdir()
    torch.save(SamTeacher.random("tiny").model.state_dict(), path)
    return path


def sam_args(checkpoint: Path) -> list[str]:
    return ["--teacher", "sam", "--teacher-model", "tiny", "--teacher-checkpoint", str(checkpoint),
            "--init-points", "400", "--feature-dim", "4", "--iterations", "6"]  # fmt: skip


def tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# -- outputs ------------------------------------------------------------------------------------
def test_outputs_never_land_in_a_dataset_or_a_run(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    data = tmp_path / "exported"
    main(["worlds", "export", "tabletop", str(data), "--width", "32", "--height", "24"])
    before = {p: p.read_bytes() for p in tree(data)}
    assert "is inside the dataset" in cli_error(
        ["render", str(run), "--out", str(data / "images")], capsys
    )
    assert "is inside the dataset" in cli_error(
        ["query", str(run), "--text", "mug", "--out", str(data / "new")], capsys
    )
    assert "holds feature-splat 'run' output" in cli_error(
        ["render", str(run), "--out", str(run)], capsys
    )
    assert {p: p.read_bytes() for p in tree(data)} == before  # the dataset is untouched
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    assert "not made by feature-splat" in cli_error(
        ["render", str(run), "--out", str(mine)], capsys
    )
    assert tree(mine) == {mine / "todo.txt"}
    main(["render", str(run), "--orbit", "2", "--out", str(tmp_path / "views")])
    main(["render", str(run), "--orbit", "3", "--out", str(tmp_path / "views")])  # ours: reused
    assert len(list((tmp_path / "views").glob("orbit_*.png"))) == 3


def test_links_planted_in_a_run_folder_are_not_followed(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("renders", "rendered"):
        target = run / name
        if target.exists():
            for png in target.iterdir():
                png.unlink()
            target.rmdir()
        target.symlink_to(victim)
    assert "renders: is a symbolic link" in cli_error(["eval", str(run)], capsys)
    assert "rendered: is a symbolic link" in cli_error(["render", str(run), "--orbit", "1"], capsys)
    error = cli_error(["bench", "prompts", "--run", str(run)], capsys)  # default classes
    assert "['sofa'] are not in the world 'tabletop'" in error
    assert list(victim.iterdir()) == []


def test_prompt_folders_are_safe_distinct_and_short(tmp_path) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    prompts = ["椅子", "椅", "a table", "A Table!", "x" * 300, "../../escape"]
    for prompt in prompts:
        main(["query", str(run), "--text", prompt, "--views", "0"])
    folders = sorted((run / "queries").iterdir())
    assert len(folders) == len(prompts)  # no two prompts share a folder
    for folder in folders:
        assert folder.parent == run / "queries" and len(folder.name) <= 64
        assert json.loads((folder / "query.json").read_text())["text"] in prompts


def test_view_names_from_the_dataset_never_leave_the_output(tmp_path, sam_checkpoint) -> None:
    """Image paths are the dataset's to choose; output names are not: views found outside the
    folder (allowed explicitly) or with clashing names render inside the run, uniquely."""
    elsewhere = tmp_path / "elsewhere"
    paths = [f"images/{i:03d}.png" for i in range(8)]
    paths[0] = str(elsewhere / "passwd.png")  # absolute
    paths[1] = "images/sub/000.png"  # clashes with view 0's last part
    data = write_scene(tmp_path / "scene", n_views=8, file_paths=paths)
    run = tmp_path / "run"
    outside = tree(tmp_path) - tree(data) - tree(tmp_path / "weights")
    main(["train", str(data), "--out", str(run), "--allow-outside-paths",
          *sam_args(sam_checkpoint)])  # fmt: skip
    written = tree(tmp_path) - tree(data) - tree(tmp_path / "weights") - outside
    assert written and all(run in p.parents or (tmp_path / "cache") in p.parents for p in written)
    assert sorted(p.name for p in (run / "renders").glob("*.png")) == ["passwd.png"]  # view 0


# -- resume ---------------------------------------------------------------------------------------
def test_resume_refuses_other_settings_and_allows_more_steps(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    error = cli_error(["train", "tabletop", "--out", str(run), *WORLD, "--sh-degree", "2",
                       "--world-seed", "3", "--resume"], capsys)  # fmt: skip
    assert "sh_degree: 1 -> 2" in error and "world_seed: 0 -> 3" in error
    error = cli_error(["train", "room", "--out", str(run), *WORLD, "--resume"], capsys)
    assert "data: 'tabletop' -> 'room'" in error
    main(["train", "tabletop", "--out", str(run), *WORLD[:-1], "16", "--resume"])
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 16
    assert "no run to resume" in cli_error(
        ["train", "tabletop", "--out", str(tmp_path / "new"), "--resume"], capsys
    )


def test_a_run_is_tied_to_its_data(tmp_path, sam_checkpoint, capsys, monkeypatch) -> None:
    """config.json stores absolute paths, so eval from elsewhere reads the same data; data that
    changed after training is refused by eval and by --resume."""
    data = write_scene(tmp_path / "scene")
    monkeypatch.chdir(tmp_path)
    main(["train", "scene", "--out", "run", *sam_args(sam_checkpoint)])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        config["data"] == str(data.resolve()) and Path(config["teacher_checkpoint"]).is_absolute()
    )
    elsewhere = tmp_path / "elsewhere"
    write_scene(elsewhere / "scene", n_views=6)  # a different 'scene' beside the new cwd
    monkeypatch.chdir(elsewhere)
    main(["eval", str(tmp_path / "run")])  # evaluates the run's own data, not ./scene
    pixels = np.asarray(Image.open(data / "images" / "003.png")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(data / "images" / "003.png")
    assert "is not what this run was trained on" in cli_error(
        ["eval", str(tmp_path / "run")], capsys
    )
    error = cli_error(["train", str(data), "--out", str(tmp_path / "run"), *sam_args(sam_checkpoint),
                       "--resume"], capsys)  # fmt: skip
    assert "is not what this run was trained on" in error


def test_a_built_in_world_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_scene(tmp_path / "tabletop")
    main(["train", "tabletop", "--out", "run", *WORLD])
    assert json.loads((tmp_path / "run" / "dataset.json").read_text())["source"] == "tabletop"
    assert "names the built-in world; the folder ./tabletop is not used" in caplog.text


def test_world_seed_and_training_seed_are_separate(tmp_path) -> None:
    for name, extra in (("a", []), ("b", ["--seed", "1"]), ("c", ["--world-seed", "1"])):
        main(["train", "tabletop", "--out", str(tmp_path / name), *WORLD, *extra])
    prints = {
        n: json.loads((tmp_path / n / "dataset.json").read_text())["fingerprint"] for n in "abc"
    }
    assert prints["a"] == prints["b"] != prints["c"]
    a, b = (FeatureField.load(tmp_path / n).gaussians.means for n in "ab")
    assert not torch.equal(a, b)  # the training seed still changes the training


def test_a_run_that_stopped_before_its_first_checkpoint_resumes_from_zero(
    tmp_path, monkeypatch, capsys
) -> None:
    from feature_splat.training import trainer

    run = tmp_path / "run"
    assert "teacher 'synthetic'" not in cli_error(  # nothing is created when settings fail
        ["train", "tabletop", "--out", str(run), "--teacher", "sam"], capsys
    )
    assert not run.exists()

    def crash(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(run / "checkpoint.pt"))

    with monkeypatch.context() as patch:
        patch.setattr(trainer.Trainer, "train", crash)
        assert "No space left on device" in cli_error(["train", "tabletop", "--out", str(run),
                                                        *WORLD], capsys)  # fmt: skip
    assert (run / "config.json").is_file() and not (run / "checkpoint.pt").exists()
    assert "already holds a run" in cli_error(
        ["train", "tabletop", "--out", str(run), *WORLD], capsys
    )
    main(["train", "tabletop", "--out", str(run), *WORLD, "--resume"])
    assert "no checkpoint yet: starting from step 0" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 12


def test_ctrl_c_then_resume_is_bit_identical(tmp_path) -> None:
    """A real SIGINT to a training process: the step in progress finishes, a checkpoint is taken,
    and --resume ends exactly where an uninterrupted run ends."""
    args = ["train", "tabletop", "--width", "32", "--height", "24", "--init-points", "800",
            "--feature-dim", "4", "--teacher-dim", "16", "--iterations", "150",
            "--densify.refine-start", "30", "--densify.refine-every", "30",
            "--densify.refine-stop", "120"]  # fmt: skip
    main([*args, "--out", str(tmp_path / "straight")])
    env = {**os.environ, "FEATURE_SPLAT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "feature_splat.cli", *args, "--out", str(tmp_path / "cut")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut" / "dataset.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # training starts right after dataset.json is written
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()
    assert b"interrupted after step" in out and err.decode().strip() == "interrupted"
    step = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 150  # stopped part-way
    main([*args, "--out", str(tmp_path / "cut"), "--resume"])
    straight, resumed = (FeatureField.load(tmp_path / n) for n in ("straight", "cut"))
    for name in ("means", "quats", "log_scales", "logit_opacities", "sh0", "shN", "features"):
        assert torch.equal(getattr(straight.gaussians, name), getattr(resumed.gaussians, name))


# -- empty selections and crafted files -----------------------------------------------------------
def test_an_empty_selection_is_a_valid_edit(tmp_path) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    main(["edit", str(run), "--text", "mug", "--threshold", "1.0", "--op", "extract",
          "-o", str(tmp_path / "nothing")])  # fmt: skip
    summary = json.loads((tmp_path / "nothing" / "edit.json").read_text())
    assert summary["selected"] == 0 and summary["gaussians_after"] == 0
    empty = Run(tmp_path / "nothing")
    assert len(empty.field.gaussians) == 0
    render = empty.field.render(empty.dataset.cameras[0])
    torch.testing.assert_close(render.rgb[0], empty.field.background[:3].expand(24, 32, 3))
    main(["render", str(tmp_path / "nothing"), "--views", "0"])
    main(["render", str(tmp_path / "nothing"), "--orbit", "2"])  # around the cameras' centroid
    assert len(list((tmp_path / "nothing" / "rendered").glob("orbit_*.png"))) == 2
    main(["edit", str(run), "--text", "mug", "--threshold", "1.0", "--op", "delete",
          "-o", str(tmp_path / "all")])  # fmt: skip
    assert len(FeatureField.load(tmp_path / "all").gaussians) == len(
        FeatureField.load(run).gaussians
    )


def test_decoder_files_that_lie_about_their_size_or_hold_nan_are_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    main(["train", "tabletop", "--out", str(run), *WORLD])
    saved = torch.load(run / "decoder.pt", weights_only=True)
    original = (run / "decoder.pt").read_bytes()
    huge = {**saved, "decoder_config": {**saved["decoder_config"], "out_dim": 10**10}}
    torch.save(huge, run / "decoder.pt")
    assert (run / "decoder.pt").stat().st_size < 50_000
    assert "widths must be 1..65536" in cli_error(["render", str(run), "--views", "0"], capsys)
    wide = {**saved, "decoder_config": {**saved["decoder_config"], "out_dim": 60_000}}
    torch.save(wide, run / "decoder.pt")
    assert "keys with the wrong shape" in cli_error(["render", str(run), "--views", "0"], capsys)
    broken = {**saved, "decoder_state": dict(saved["decoder_state"])}
    broken["decoder_state"]["layers.0.weight"] = torch.full_like(
        saved["decoder_state"]["layers.0.weight"], float("nan")
    )
    torch.save(broken, run / "decoder.pt")
    assert "holds NaN" in cli_error(["eval", str(run)], capsys)
    (run / "decoder.pt").write_bytes(original)
    main(["render", str(run), "--views", "0"])
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "feature_dim": 8}))
    assert "feature_dim is 8, but the field's PLY has 4" in cli_error(["eval", str(run)], capsys)


def test_a_predictor_file_declaring_a_huge_network_is_refused(tmp_path) -> None:
    from feature_splat.errors import CheckpointError
    from feature_splat.generalizable.config import PredictorConfig
    from feature_splat.generalizable.network import GaussianPredictor
    from feature_splat.generalizable.training import load_model, save_model

    tiny = PredictorConfig(feature_dim=2, teacher_dim=4, widths=(4, 8))
    save_model(tmp_path / "model.pt", GaussianPredictor(tiny))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    saved["config"]["widths"] = [4096, 4096, 4096, 4096]
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model(tmp_path / "model.pt")
    saved["config"]["widths"] = [10**9]
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(
        CheckpointError, match=r"--model.widths: expected a whole number in 1..4096"
    ):
        load_model(tmp_path / "model.pt")
