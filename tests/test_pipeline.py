"""End to end on a tiny built-in world: export/load round trips, training, the CLI's run folder."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch
from cli_errors import cli_error

from feature_splat.cli import main
from feature_splat.data import export_blender, export_nerfstudio, load_blender, load_nerfstudio
from feature_splat.data.synthetic import load_world
from feature_splat.field import FeatureField

SIZE = dict(width=48, height=36)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return load_world("tabletop", n_views=16, cache_dir=tmp_path_factory.mktemp("cache"), **SIZE)


def test_world_export_round_trips_through_nerfstudio_and_blender(tiny_world, tmp_path) -> None:
    for export, load in ((export_nerfstudio, load_nerfstudio), (export_blender, load_blender)):
        back = load(export(tiny_world, tmp_path / export.__name__))
        assert len(back) == len(tiny_world)
        # Each loaded view is the world's view of the same name (Blender reorders: train, test).
        source = [tiny_world.image_names.index(PurePosixPath(n).name) for n in back.image_names]
        assert sorted(source) == list(range(len(tiny_world)))
        assert sorted(source[i] for i in back.test_indices) == tiny_world.test_indices
        torch.testing.assert_close(
            back.cameras.viewmats, tiny_world.cameras.viewmats[source], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            back.cameras.Ks, tiny_world.cameras.Ks[source], atol=1e-4, rtol=0
        )
        # 8-bit PNGs: each pixel within half a step of the float original.
        assert float((back.images - tiny_world.images[source]).abs().max()) <= 0.5 / 255 + 1e-6


def test_cli_train_eval_render_on_a_tiny_world(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path))  # keep the world cache local
    run = tmp_path / "run"
    main(
        [
            "train",
            "tabletop",
            "--out",
            str(run),
            "--iterations",
            "60",
            "--width",
            "48",
            "--height",
            "36",
            "--init-points",
            "2000",
            "--feature-dim",
            "8",
            "--teacher-dim",
            "64",
            "--densify.refine-start",
            "20",
            "--densify.refine-every",
            "20",
        ]
    )
    for name in ("point_cloud.ply", "decoder.pt", "config.json", "metrics.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert "sky" in metrics["labels"] and "table" in metrics["labels"]
    assert len(list((run / "renders").glob("*.png"))) == 6  # every 8th of 48 views is held out
    field = FeatureField.load(run)
    assert field.gaussians.feature_dim == 8 and field.decoder.out_dim == 64
    world = load_world("tabletop", **SIZE)
    for row, view in zip(metrics["views"], world.test_indices, strict=True):  # PSNR recomputed
        with torch.no_grad():
            rgb = field.render(world.cameras[view]).rgb[0].clamp(0, 1)
        mse = float(((rgb - world.images[view]) ** 2).mean())
        assert row["psnr"] == pytest.approx(-10 * math.log10(mse), abs=1e-3)
    assert "already holds a run" in cli_error(["train", "tabletop", "--out", str(run)], capsys)
    main(["eval", str(run)])
    assert (
        json.loads((run / "metrics.json").read_text())["train_seconds"] == metrics["train_seconds"]
    )
    main(["render", str(run), "--orbit", "2"])
    assert len(list((run / "rendered").glob("orbit_*.png"))) == 2
    main(["render", str(run), "--look-at", "2", "2", "1.5", "0", "0", "0.5"])
    assert (run / "rendered" / "look_at.png").is_file()

    main(["query", str(run), "--text", "a table", "--labels", "table", "sky", "mug"])
    (folder,) = (run / "queries").iterdir()
    assert folder.name.startswith("a_table-")
    query = json.loads((folder / "query.json").read_text())
    assert query["gaussians"] == len(field.gaussians) and len(query["views"]) == 6
    edited = tmp_path / "edited"
    main(["edit", str(run), "--text", "table", "--op", "delete", "-o", str(edited)])
    summary = json.loads((edited / "edit.json").read_text())
    assert summary["gaussians_after"] == summary["gaussians_before"] - summary["selected"]
    assert len(FeatureField.load(edited).gaussians) == summary["gaussians_after"]
    assert FeatureField.load(run).gaussians.means.shape == field.gaussians.means.shape  # input kept
    main(["bench", "prompts", "--run", str(run), "--classes", "table"])
    (row,) = json.loads((run / "bench_prompts" / "results.json").read_text())["results"]
    table = world.class_names.index("table")
    assert row["removed_pixels"] == int((world.labels[world.test_indices] == table).sum())
    assert {"extract_psnr_inside_class", "extract_psnr_outside_class"} <= set(row)
    error = cli_error(
        ["edit", str(run), "--text", "table", "--op", "extract", "-o", str(run)], capsys
    )
    assert f"{run}: is inside the input {run}" in error  # never over the run it reads
    error = cli_error(["edit", str(edited), "--text", "table", "--op", "delete", "-o", str(edited)],
                      capsys)  # fmt: skip
    assert "is inside the input" in error  # nor over an edited run it reads


def test_demo_writes_summary_and_prompt_pngs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path))
    main(["demo", "tabletop", "--out", str(tmp_path / "demo"), "--text", "table", "--point", "24", "20",
          "--train.iterations", "40", "--train.width", "48", "--train.height", "36",
          "--train.init-points", "1500", "--train.teacher-dim", "32"])  # fmt: skip
    (run,) = [p for p in (tmp_path / "demo").iterdir() if p.is_dir()]
    summary = json.loads((run / "demo.json").read_text())
    assert summary["world"] == "tabletop" and summary["text_query"]["text"] == "table"
    assert summary["point_query"]["xy"] == [24, 20]
    for key in ("text_query", "point_query"):
        assert (run / summary[key]["png"].split("/")[-1]).is_file()
    assert (run / "metrics.json").is_file() and (run / "point_cloud.ply").is_file()


def test_encode_command_fills_the_cache_once(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path))
    args = ["encode", "tabletop", "--cache-dir", str(tmp_path / "features"), "--width", "48",
            "--height", "36", "--teacher-dim", "32"]  # fmt: skip
    main(args)
    (folder,) = [p for p in (tmp_path / "features").iterdir() if p.is_dir()]
    files = sorted(f for f in folder.glob("*.npz") if f.name != "teacher.npz")
    assert len(files) == 48
    # The teacher's record beside the maps: what a run reading only this folder needs
    # (ns-train feature-splat), its vocabulary's text embeddings included.
    record = np.load(folder / "teacher.npz", allow_pickle=False)
    assert {"mug", "object"} <= set(record["names"].tolist())  # a class, a canonical negative
    assert record["embeddings"].shape[1] == 32
    stamps = [f.stat().st_mtime_ns for f in files]
    main(args)  # everything cached: nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "KB per image" in capsys.readouterr().out
