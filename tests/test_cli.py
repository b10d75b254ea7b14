"""The feature-splat command line."""

from __future__ import annotations

import json

import pytest

from feature_splat.cli import main


def test_bench_raster_writes_results_and_pngs(tmp_path) -> None:
    out = tmp_path / "bench"
    main(
        [
            "bench",
            "raster",
            "--ns",
            "300",
            "--dims",
            "3",
            "--sizes",
            "48",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "results.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert {"reference", "cpu"} <= set(rows)
    assert rows["cpu"]["forward_backward_s"] > 0
    assert rows["cpu"]["ratios"]["forward_backward_speedup_vs_reference"] > 0
    for name in ("scene_features_pca.png", "scene_depth.png", "scene_alpha.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_command_exits_with_usage(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "bench raster" in capsys.readouterr().err
