"""The feature-splat command line: subcommands, one-line errors and exit codes, bad values refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_errors import cli_error

from feature_splat import cli
from feature_splat.cli import main


def test_bench_raster_writes_results_and_pngs(tmp_path) -> None:
    out = tmp_path / "bench"
    main(["bench", "raster", "--ns", "300", "--dims", "3", "--sizes", "48", "--repeats", "1",
          "--out", str(out)])  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert {"reference", "cpu"} <= set(rows)
    cpu, reference = rows["cpu"], rows["reference"]
    assert cpu["ratios"]["forward_backward_speedup_vs_reference"] == pytest.approx(
        reference["forward_backward_s"] / cpu["forward_backward_s"]
    )
    for name in ("scene_features_pca.png", "scene_depth.png", "scene_alpha.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_command_exits_with_usage(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    shown = " ".join(capsys.readouterr().err.split())  # rich wraps the box to the terminal
    assert "Unrecognized options: frobnicate" in shown and "demo, train, eval" in shown


@pytest.mark.parametrize(
    ("args", "listed"),
    [
        ([], ["demo", "train", "eval", "render", "query", "edit", "encode", "gen", "bench"]),
        (["gen"], ["train", "eval", "predict", "fit-fields"]),
        (["bench"], ["raster", "prompts", "sam", "speedup"]),
        (["worlds"], ["list", "export"]),
    ],
)
def test_help_lists_the_subcommands_and_exits_0(args, listed, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"• {name} " in shown for name in listed), shown


def test_help_does_not_import_torch() -> None:
    """The parser is built from light config modules; torch loads only when a command runs."""
    code = (
        "import sys\nfrom feature_splat.cli import main\ntry:\n    main(['train', '--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'gsplat' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["train", "--iterations", "-5"],
            "--iterations: expected a whole number in 1..100000000, got -5",
        ),
        (["train", "--lr.means", "nan"], "--lr.means: expected a finite number > 0"),
        (["train", "--init-opacity", "1.5"], "--init-opacity"),
        (["train", "--sh-degree", "4"], "--sh-degree: expected a whole number in 0..3"),
        (["train", "--densify.refine-every", "0"], "--densify.refine-every"),
        (["query", "run", "--text", ""], "--text: expected a non-empty text"),
        (["query", "run", "--text", "   "], "--text: expected a non-empty text"),
        (["query", "run", "--text", "mug", "--threshold", "nan"], "--threshold"),
        (["query", "run", "--point", "3"], "--point: expected x y pairs"),
        (["query", "run", "--point", "3", "4", "--point-labels", "2"], "--point-labels"),
        (["query", "run"], "give either --text, or --point / --box"),
        (["edit", "run", "--op", "delete", "-o", "x"], "give either --text or a SAM"),
        (
            ["edit", "run", "--op", "recolour", "-o", "x", "--text", "a", "--color", "2", "0", "0"],
            "--color",
        ),
        (["render", "run", "--look-at", "0", "0", "nan", "1", "1", "1"], "--look-at"),
        (["eval", "/nonexistent/run"], "/nonexistent/run: run folder does not exist"),
        (["gen", "train", "o", "--input-views", "10"], "exceeds the 12 views per instance"),
        (["gen", "train", "o", "--data.image-size", "60"], "not a multiple of 8"),
        (["gen", "predict", "m", "--out", "o", "--views"], "--views: expected at least one"),
        (["bench", "raster", "--backends", "vulkan"], "--backends: expected one of"),
        (["bench", "raster", "--ns"], "--ns: expected at least one value"),
        (["query", "run", "--text", "mug", "--point", "1", "2"], "give either --text, or"),
        (["train", "--width", "1"], "--width: expected a whole number in 16..16384"),
        (
            ["train", "--feature-dim", "1000000"],
            "--feature-dim: expected a whole number in 1..4096",
        ),
    ],
)
def test_bad_values_give_one_line_naming_the_flag(args, needle, capsys) -> None:
    assert needle in cli_error(args, capsys)


def test_a_backend_that_cannot_run_here_is_named(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: gsplat may run")
    error = cli_error(["bench", "raster", "--backends", "gsplat", "--ns", "10"], capsys)
    assert "--backends: gsplat cannot run here" in error


def test_os_errors_give_one_line_naming_the_file(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    error = cli_error(["bench", "raster", "--out", str(blocker / "bench")], capsys)
    assert str(blocker) in error


def test_internal_errors_exit_1_with_the_traceback_only_on_request(monkeypatch, capsys) -> None:
    def broken(config) -> None:
        return 1 // 0

    monkeypatch.setitem(cli.RUNNERS, cli.WorldsListConfig, broken)
    with pytest.raises(SystemExit) as info:
        main(["worlds", "list"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert err.strip() == (
        "internal error: ZeroDivisionError: integer division or modulo by zero "
        "(--debug shows the traceback)"
    )
    with pytest.raises(SystemExit):
        main(["worlds", "list", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("integer division or modulo by zero")


def test_ctrl_c_exits_130(monkeypatch, capsys) -> None:
    def interrupted(config) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.RUNNERS, cli.WorldsListConfig, interrupted)
    with pytest.raises(SystemExit) as info:
        main(["worlds", "list"])
    assert info.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_worlds_list_names_every_world_and_its_classes(capsys) -> None:
    from feature_splat.data.synthetic import WORLD_NAMES, build_world

    main(["worlds", "list"])
    shown = " ".join(capsys.readouterr().out.split())
    for name in WORLD_NAMES:
        assert name in shown and build_world(name).classes()[0] in shown
