"""The viewer during training (``feature-splat train ... --viewer``): the field as it is now,
published every few steps, and training paused and resumed from the panel.

Training steps and viewer renders take turns on one lock (:class:`~feature_splat.training.loop.
LiveControl`), so a frame never sees a half-updated field; the viewer renders a snapshot, so
prompts and edits never touch the tensors being trained.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from feature_splat.data import Dataset
from feature_splat.teachers import Teacher
from feature_splat.training.loop import LiveControl
from feature_splat.training.trainer import Trainer
from feature_splat.viewer.server import FieldViewer, TrainingControls
from feature_splat.viewer.session import ViewerSession

PUBLISH_SECONDS = 0.5
"""How often the viewer gets the field as it is now (at most; never more than once a step)."""


class LiveViewer:
    """A viewer on a training run: start it before training, pass :attr:`control` to
    :meth:`Trainer.train`, and :meth:`wait` after training to keep it up until Ctrl-C."""

    def __init__(
        self,
        trainer: Trainer,
        dataset: Dataset,
        teacher: Teacher | None,
        *,
        port: int,
        announce: Callable[[str], None],
    ) -> None:
        self.trainer = trainer
        self.session = ViewerSession(
            trainer.field().snapshot(), teacher=teacher, cameras=dataset.cameras,
            view_names=list(dataset.image_names), held_out=dataset.test_indices,
        )  # fmt: skip
        paused = threading.Event()
        self.control = LiveControl(self.session.render_lock, paused, self._after_step)
        training = TrainingControls(paused, lambda: trainer.step, trainer.config.iterations)
        self.viewer = FieldViewer(self.session, port=port, training=training)
        self._published = time.monotonic()
        self.announce = announce
        announce(f"live viewer at {self.viewer.url}")

    def _after_step(self, step: int) -> None:
        if time.monotonic() - self._published >= PUBLISH_SECONDS:
            self.publish()

    def publish(self) -> None:
        """Show the trainer's field as it is now."""
        with self.session.render_lock:
            field = self.trainer.field().snapshot()
        self.session.replace_field(field)
        self._published = time.monotonic()

    def wait(self) -> None:
        """Keep serving the final field until Ctrl-C, then stop."""
        self.publish()
        self.announce(f"training done; the viewer stays at {self.viewer.url} (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the server."""
        self.viewer.stop()
