"""The training loop shared by the per-scene and the feed-forward trainers: steps, progress bar,
periodic checkpoints, and a clean stop on Ctrl-C.

Ctrl-C (SIGINT) never interrupts a step half-way: the step in progress finishes, a checkpoint of
that state is written, and ``KeyboardInterrupt`` is raised, so ``--resume`` continues exactly as an
uninterrupted run would. A second Ctrl-C stops at once, without a checkpoint (the last periodic one
stays valid).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Steppable(Protocol):
    step: int

    def train_step(self) -> dict[str, float]: ...

    def save_checkpoint(self) -> Path: ...


@dataclass
class LiveControl:
    """How a watcher outside the loop (the live viewer) follows and steers training: ``lock`` is
    held during each step (so the watcher never reads a half-updated field), the loop waits while
    ``paused`` is set, and ``after_step(step)`` runs after every step, outside the lock."""

    lock: threading.Lock
    paused: threading.Event
    after_step: Callable[[int], None]


class _StopRequest:
    """Set by the first SIGINT; the second one raises KeyboardInterrupt where it lands."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _stop_on_sigint() -> Iterator[_StopRequest]:
    """Route SIGINT to a stop request for the duration (main thread only: elsewhere signals are
    not delivered to Python code, and Ctrl-C keeps its default behaviour)."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGINT, request)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def run_steps(
    trainer: Steppable,
    *,
    total: int,
    until: int | None = None,
    checkpoint_every: int,
    label: str,
    status: Callable[[dict[str, float]], str],
    show_progress: bool = True,
    live: LiveControl | None = None,
) -> None:
    """Call ``trainer.train_step()`` until ``trainer.step`` reaches ``until`` (default and at
    most ``total``, the run's length).

    A progress bar shows ``status(stats)`` every 10 steps; a checkpoint is written every
    ``checkpoint_every`` steps before ``total``, and after the step in progress when Ctrl-C
    stops the loop (then ``KeyboardInterrupt`` is raised). ``live`` lets a viewer follow and
    pause the loop (:class:`LiveControl`).
    """
    last = total if until is None else min(until, total)
    columns = [
        TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]  # fmt: skip
    with Progress(*columns, disable=not show_progress) as bar, _stop_on_sigint() as stop:
        task = bar.add_task(label, total=total, completed=trainer.step, status="")
        while trainer.step < last:
            while live is not None and live.paused.is_set() and not stop.requested:
                time.sleep(0.05)
            if live is None:
                stats = trainer.train_step()
            else:
                with live.lock:
                    stats = trainer.train_step()
                live.after_step(trainer.step)
            if trainer.step % 10 == 0 or trainer.step == last:
                bar.update(task, completed=trainer.step, status=status(stats))
            if stop.requested:
                trainer.save_checkpoint()
                bar.console.print(
                    f"interrupted after step {trainer.step}: checkpoint saved, resume with --resume"
                )
                raise KeyboardInterrupt
            if trainer.step % checkpoint_every == 0 and trainer.step < total:
                trainer.save_checkpoint()
