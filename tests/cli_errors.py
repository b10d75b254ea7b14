"""Running the command line where it must fail: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import pytest

from feature_splat.cli import main


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line ``feature-splat ARGS`` prints (asserting exit status 2, one line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
