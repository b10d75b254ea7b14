"""The viser front of the viewer: a panel per browser, its events mapped onto a
:class:`~feature_splat.viewer.session.ViewerClient`, and its frames sent as background images.

Each browser gets its own panel, camera, prompts and selection, and its own
:class:`~feature_splat.viewer.worker.FrameWorker`; edits are shared. A failing render or prompt is
shown to that browser as a notification and logged; the server keeps serving.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import viser

from feature_splat.errors import FeatureSplatError
from feature_splat.near_field import scene_scale
from feature_splat.prompts.text import (
    CANONICAL_NEGATIVES,
    UNCALIBRATED_THRESHOLD,
    selection_threshold,
)
from feature_splat.viewer.camera import ViewPose, dataset_pose, overview_pose, world_up
from feature_splat.viewer.frames import TEXT_MODES
from feature_splat.viewer.session import COMBINE, ViewerClient, ViewerSession
from feature_splat.viewer.worker import FrameWorker

_log = logging.getLogger(__name__)
NO_VIEW = "(free camera)"


@dataclass
class TrainingControls:
    """What a live training run lets the viewer do: pause and resume it, and read its step."""

    paused: threading.Event
    step: Callable[[], int]
    total: int


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _rgb_floats(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    r, g, b = (min(max(int(c), 0), 255) / 255.0 for c in rgb)
    return r, g, b


class _BrowserPanel:
    """One browser's panel, camera and render worker."""

    def __init__(self, viewer: FieldViewer, client: viser.ClientHandle) -> None:
        self.viewer, self.client = viewer, client
        session = viewer.session
        self.state = ViewerClient(
            session, long_side=viewer.long_side, moving_scale=viewer.moving_scale
        )
        gui = client.gui
        with gui.add_folder("View"):
            self.mode = gui.add_dropdown("Mode", session.modes, initial_value="rgb")
            self.frame_time = gui.add_text("Frame ms", "", disabled=True)
            views = (NO_VIEW, *session.view_names) if session.cameras is not None else (NO_VIEW,)
            self.view = gui.add_dropdown("Camera", views, initial_value=NO_VIEW)
            self.reset = gui.add_button("Reset view")
            self.show_cameras = None
            self._frustums: list[Any] = []  # made on first "Show cameras"
            if session.cameras is not None:
                self.show_cameras = gui.add_checkbox("Show cameras", False)
        self.text = None
        if any(mode in session.modes for mode in TEXT_MODES):
            with gui.add_folder("Text prompt"):
                self.text = gui.add_text("Text", "")
                self.negatives = gui.add_text("Negatives", ", ".join(CANONICAL_NEGATIVES))
                self.score = gui.add_dropdown(
                    "Score", ("relevancy", "cosine"), initial_value="relevancy"
                )
                self.threshold = gui.add_slider(
                    "Threshold", min=0.0, max=1.0, step=0.01,
                    initial_value=self._default_threshold("relevancy"),
                )  # fmt: skip
                self.labels = gui.add_text("Labels", "")
        with gui.add_folder("Selection"):
            self.combine = gui.add_dropdown("Combine", COMBINE, initial_value="new")
            self.negative = gui.add_checkbox("Negative clicks", False)
            self.count = gui.add_text("Selected", "0", disabled=True)
            self.clear = gui.add_button("Clear selection")
            gui.add_markdown("Click: point prompt (shift-click: negative). Ctrl-drag: box prompt.")
        with gui.add_folder("Edit"):
            self.delete = gui.add_button("Delete")
            self.extract = gui.add_button("Extract")
            self.colour = gui.add_rgb("Colour", (25, 204, 25))
            self.recolour = gui.add_button("Recolour")
            self.undo = gui.add_button("Undo", disabled=True)
            self.redo = gui.add_button("Redo", disabled=True)
            self.save_path = gui.add_text("Save as", viewer.default_save_path())
            self.save = gui.add_button("Save")
        self.pause = None
        if viewer.training is not None:
            with gui.add_folder("Training"):
                self.pause = gui.add_checkbox("Pause training", viewer.training.paused.is_set())
                self.step = gui.add_text("Step", "", disabled=True)
        self._wire()
        self._closed = False
        self.worker = FrameWorker(self._render, self.report, name=f"frames {client.client_id}")
        client.camera.on_update(lambda _: self._camera_moved())

    def _wire(self) -> None:
        state = self.state
        self.mode.on_update(lambda _: self._set_mode(self.mode.value))
        self.view.on_update(lambda _: self._act(lambda: self._jump_to_name(self.view.value)))
        self.reset.on_click(lambda _: self._act(lambda: self._jump(0)))
        if self.show_cameras is not None:
            self.show_cameras.on_update(lambda _: self._act(self._cameras_toggled))
        if self.text is not None:
            self.text.on_update(lambda _: self._act(self._text_changed))
            self.negatives.on_update(lambda _: self._act(self._text_changed))
            self.score.on_update(lambda _: self._act(self._score_changed))
            self.threshold.on_update(lambda _: self._act(self._text_changed))
            self.labels.on_update(lambda _: self._act(self._labels_changed))
        self.combine.on_update(lambda _: setattr(state, "combine", self.combine.value))
        self.clear.on_click(lambda _: self._act(state.clear_selection))
        self.delete.on_click(lambda _: self._act(lambda: state.edit("delete")))
        self.extract.on_click(lambda _: self._act(lambda: state.edit("extract")))
        self.recolour.on_click(
            lambda _: self._act(lambda: state.edit("recolour", _rgb_floats(self.colour.value)))
        )
        self.undo.on_click(lambda _: self._act(self.viewer.session.undo))
        self.redo.on_click(lambda _: self._act(self.viewer.session.redo))
        self.save.on_click(lambda _: self._act(self._save))
        if self.pause is not None:
            self.pause.on_update(lambda _: self._pause_changed())

    # --- actions ------------------------------------------------------------------------------

    def _act(self, action: Callable[[], Any]) -> None:
        """Run a panel action; errors become a notification. Then show the new state."""
        try:
            action()
        except Exception as error:  # the server keeps serving whatever a prompt does
            self.report(error)
        self.refresh()

    def _set_mode(self, mode: str) -> None:
        """The mode dropdown changed."""
        self.state.mode = mode  # type: ignore[assignment]
        self.worker.request()

    def _show_mode(self, mode: str) -> None:
        """Switch to ``mode`` after a prompt (the dropdown follows)."""
        if self.state.mode != mode:
            self.state.mode = mode  # type: ignore[assignment]
            self.mode.value = mode

    def _text_changed(self) -> None:
        assert self.text is not None
        prompt = self.state.prompt
        prompt.text = self.text.value.strip()
        prompt.negatives = _split(self.negatives.value) or CANONICAL_NEGATIVES
        prompt.score = self.score.value  # type: ignore[assignment]
        prompt.threshold = float(self.threshold.value)
        if not prompt.text:
            return
        self.state.select_text()
        self._show_mode("relevancy")

    def _default_threshold(self, score: str) -> float:
        """The teacher's own threshold for ``score`` (:func:`selection_threshold`)."""
        teacher = self.viewer.session.teacher
        return UNCALIBRATED_THRESHOLD if teacher is None else selection_threshold(teacher, score)

    def _score_changed(self) -> None:
        """A new score has its own scale: the slider moves to the teacher's threshold for it."""
        self.threshold.value = self._default_threshold(self.score.value)
        self._text_changed()

    def _labels_changed(self) -> None:
        self.state.prompt.labels = _split(self.labels.value)
        if self.state.prompt.labels:
            self._show_mode("labels")

    def _save(self) -> None:
        out = self.viewer.session.save_as(Path(self.save_path.value).expanduser())
        self.client.add_notification("Saved", f"the edited field is in {out}", auto_close_seconds=8)
        self.save_path.value = self.viewer.default_save_path()

    def _pause_changed(self) -> None:
        training = self.viewer.training
        assert training is not None and self.pause is not None
        if self.pause.value:
            training.paused.set()
        else:
            training.paused.clear()

    def click(self, screen_pos: tuple[float, float], negative: bool) -> None:
        """A click on the scene at ``screen_pos`` (0..1)."""
        positive = not (negative or self.negative.value)
        self._act(lambda: self._prompted(lambda: self.state.click(*screen_pos, positive)))

    def rect(self, screen_min: tuple[float, float], screen_max: tuple[float, float]) -> None:
        """A box dragged on the scene."""
        self._act(lambda: self._prompted(lambda: self.state.box(screen_min, screen_max)))

    def _prompted(self, prompt: Callable[[], int]) -> None:
        prompt()
        self._show_mode("selection")

    # --- camera and frames ------------------------------------------------------------------

    def _camera_moved(self) -> None:
        camera = self.client.camera
        self.state.set_pose(camera.position, camera.wxyz, camera.fov, camera.aspect)
        self.worker.request(moving=True)

    def _cameras_toggled(self) -> None:
        """Show or hide the dataset's cameras as frustums (training grey, held-out orange);
        clicking one moves the view there."""
        assert self.show_cameras is not None
        if self.show_cameras.value and not self._frustums:
            self._frustums = [
                self._add_frustum(index) for index in range(len(self.viewer.session.cameras))
            ]
        for frustum in self._frustums:
            frustum.visible = bool(self.show_cameras.value)

    def _add_frustum(self, index: int) -> Any:
        session = self.viewer.session
        cameras = session.cameras
        pose = self.viewer.pose_of(index)
        colour = (235, 130, 30) if index in session.held_out else (90, 90, 90)
        frustum = self.client.scene.add_camera_frustum(
            f"/cameras/{index}", fov=pose.fov, aspect=cameras.width / cameras.height,
            scale=self.viewer.frustum_scale, color=colour, wxyz=pose.wxyz,
            position=pose.position,
        )  # fmt: skip
        frustum.on_click(lambda _: self._act(lambda: self._jump(index)))
        return frustum

    def _jump_to_name(self, name: str) -> None:
        names = self.viewer.session.view_names
        if name in names:
            self._jump(names.index(name))

    def _jump(self, index: int) -> None:
        """Move this browser's camera to dataset view ``index`` (viser keeps its up direction,
        so a rolled dataset camera is shown upright), or to the start pose without cameras."""
        pose = self.viewer.pose_of(index) or self.viewer.start_pose
        with self.client.atomic():
            self.client.camera.position = pose.position
            self.client.camera.look_at = pose.look_at
            self.client.camera.fov = pose.fov

    def _render(self, moving: bool) -> None:
        if self.state.pose is None:
            return
        start = time.perf_counter()
        frame = self.state.render(moving)
        if self._closed:  # the browser left while this frame was rendered
            return
        self.client.scene.set_background_image(
            frame.image, format="jpeg", jpeg_quality=75 if moving else 90, depth=frame.depth
        )
        milliseconds = 1000.0 * (time.perf_counter() - start)
        height, width = frame.image.shape[:2]
        self.frame_time.value = (
            f"{milliseconds:.0f} ({width}x{height}{', moving' if moving else ''})"
        )
        if self.pause is not None and self.viewer.training is not None:
            self.step.value = f"{self.viewer.training.step()} / {self.viewer.training.total}"

    def refresh(self) -> None:
        """Show the state after a change: count, undo / redo, and a new frame."""
        session = self.viewer.session
        self.count.value = str(self.state.selected_count)
        self.undo.disabled = not session.can_undo
        self.redo.disabled = not session.can_redo
        self.worker.request()

    def report(self, error: Exception) -> None:
        """Tell this browser what went wrong (and log it); never raises."""
        expected = isinstance(error, FeatureSplatError)
        _log.log(
            logging.INFO if expected else logging.ERROR, "viewer: %s", error, exc_info=not expected
        )
        try:
            self.client.add_notification(
                "feature-splat", str(error), color="red", auto_close_seconds=10
            )
        except Exception:  # the browser may be gone
            _log.debug("could not notify client %s", self.client.client_id, exc_info=True)

    def close(self) -> None:
        """Stop rendering for this browser (it has gone, or the server stops)."""
        self._closed = True
        self.worker.close()


class FieldViewer:
    """A viser server showing a :class:`ViewerSession` to every browser that connects.

    ``host`` defaults to loopback: the viewer is reachable from this machine only unless asked.
    ``long_side`` is the still frames' longer side in pixels; moving frames are ``moving_scale``
    of it.
    """

    def __init__(
        self,
        session: ViewerSession,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        long_side: int = 512,
        moving_scale: float = 0.5,
        training: TrainingControls | None = None,
    ) -> None:
        self.session = session
        self.long_side, self.moving_scale = long_side, moving_scale
        self.training = training
        self.panels: dict[int, _BrowserPanel] = {}
        self._saves = 0
        field = session.field
        self.focus = field.gaussians.means.detach().median(dim=0).values.cpu()
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        if session.cameras is not None:
            self.server.scene.set_up_direction(tuple(world_up(session.cameras).tolist()))
        cameras = session.cameras
        self.frustum_scale = 0.05 * scene_scale(cameras) if cameras is not None else 0.1
        # New browsers (and viser's own reset) start at the first dataset view, or an overview.
        self.start_pose = self.pose_of(0) or overview_pose(field.gaussians.means)
        initial = self.server.initial_camera
        initial.position = self.start_pose.position
        initial.look_at = self.start_pose.look_at
        initial.fov = self.start_pose.fov
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        self.server.scene.on_click()(lambda event: self._click(event, negative=False))
        self.server.scene.on_click(modifier="shift")(lambda event: self._click(event, True))
        self.server.scene.on_rect_select(modifier="cmd/ctrl")(self._rect)
        session.on_change(self._field_changed)

    @property
    def url(self) -> str:
        """Where a browser opens the viewer."""
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def pose_of(self, index: int) -> ViewPose | None:
        """The browser pose of dataset view ``index``; None without dataset cameras."""
        cameras = self.session.cameras
        if cameras is None or not 0 <= index < len(cameras):
            return None
        return dataset_pose(cameras, index, self.focus)

    def default_save_path(self) -> str:
        """A fresh folder name beside the run for "save as"."""
        run = self.session.run
        base = run.path.resolve() if run is not None else Path.cwd() / "viewer"
        while True:
            self._saves += 1
            candidate = base.with_name(f"{base.name}-edit-{self._saves}")
            if not candidate.exists():
                return str(candidate)

    def _connect(self, client: viser.ClientHandle) -> None:
        try:
            self.panels[client.client_id] = _BrowserPanel(self, client)
        except Exception:
            _log.exception("viewer: could not set up client %s", client.client_id)

    def _disconnect(self, client: viser.ClientHandle) -> None:
        panel = self.panels.pop(client.client_id, None)
        if panel is not None:
            panel.close()

    def _click(self, event: Any, negative: bool) -> None:
        panel = self.panels.get(event.client_id)
        if panel is not None:
            panel.click(event.screen_pos, negative)

    def _rect(self, event: Any) -> None:
        panel = self.panels.get(event.client_id)
        if panel is not None:
            panel.rect(event.screen_min, event.screen_max)

    def _field_changed(self) -> None:
        for panel in list(self.panels.values()):
            panel.refresh()

    def stop(self) -> None:
        """Close every browser's worker and the server."""
        for panel in list(self.panels.values()):
            panel.close()
        self.panels.clear()
        self.server.stop()


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no ``mmap`` per large block, no trimming).

    A viewer allocates the same frame-sized buffers every frame. By default glibc returns large
    blocks to the system on free, so each frame touches fresh pages again, which costs about
    1.5 s per GiB on small machines: a third of a still frame's time. Kept, the process's memory
    stays at its peak and is reused. Process-wide, so only the viewer's own commands call it.
    Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    long_side: int = 512,
    moving_scale: float = 0.5,
    allow_torchscript: bool = False,
    announce: Callable[[str], None] = print,
) -> None:
    """``feature-splat view``: open ``run_dir``, serve it until Ctrl-C, then shut down cleanly."""
    keep_freed_memory()
    session = ViewerSession.open(run_dir, allow_torchscript=allow_torchscript)
    viewer = FieldViewer(
        session, host=host, port=port, long_side=long_side, moving_scale=moving_scale
    )
    announce(f"viewer of {run_dir} at {viewer.url} (Ctrl-C stops it)")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        announce("viewer stopped")
    finally:
        viewer.stop()
