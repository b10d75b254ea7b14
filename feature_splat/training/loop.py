"""The training loop shared by the per-scene and the feed-forward trainers: steps, progress bar,
periodic checkpoints and a checkpoint on Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Steppable(Protocol):
    step: int

    def train_step(self) -> dict[str, float]: ...

    def save_checkpoint(self) -> Path: ...


def run_steps(
    trainer: Steppable,
    *,
    total: int,
    until: int | None = None,
    checkpoint_every: int,
    label: str,
    status: Callable[[dict[str, float]], str],
    show_progress: bool = True,
) -> None:
    """Call ``trainer.train_step()`` until ``trainer.step`` reaches ``until`` (default and at
    most ``total``, the run's length).

    A progress bar shows ``status(stats)`` every 10 steps; a checkpoint is written every
    ``checkpoint_every`` steps before ``total`` and when Ctrl-C stops the loop (then re-raised).
    """
    last = total if until is None else min(until, total)
    columns = [
        TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]  # fmt: skip
    with Progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task(label, total=total, completed=trainer.step, status="")
        try:
            while trainer.step < last:
                stats = trainer.train_step()
                if trainer.step % 10 == 0 or trainer.step == last:
                    bar.update(task, completed=trainer.step, status=status(stats))
                if trainer.step % checkpoint_every == 0 and trainer.step < total:
                    trainer.save_checkpoint()
        except KeyboardInterrupt:
            trainer.save_checkpoint()
            bar.console.print(
                f"interrupted at step {trainer.step}: checkpoint saved, resume with --resume"
            )
            raise
