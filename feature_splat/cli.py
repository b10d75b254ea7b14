"""The ``feature-splat`` command line.

Commands are paths of words (``feature-splat bench raster``); each leaf is a config dataclass
parsed by tyro, so its flags and help come from the dataclass fields and docstrings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tyro

from feature_splat.bench.raster import RasterBenchConfig, run_raster_bench


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable[[Any], Any]
    summary: str


COMMANDS: dict[tuple[str, ...], Command] = {
    ("bench", "raster"): Command(
        RasterBenchConfig, run_raster_bench, "time every rasterizer backend (results.json + PNGs)"
    ),
}


def _usage() -> str:
    lines = ["usage: feature-splat COMMAND [OPTIONS]", "", "commands:"]
    for words, command in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {command.summary}")
    lines.append("\n'feature-splat COMMAND --help' lists a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``feature-splat`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, command in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            config = tyro.cli(
                command.config,
                args=argv[len(words) :],
                prog=f"feature-splat {' '.join(words)}",
                description=command.summary,
            )
            command.run(config)
            return
    print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
    if argv and argv[0] not in ("-h", "--help"):
        raise SystemExit(2)


if __name__ == "__main__":
    main()
