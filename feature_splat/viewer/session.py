"""The viewer's state and actions, with no browser in them.

- :class:`ViewerSession`: the one field every browser sees, its edit history (undo / redo), what
  answers prompts (the run's stored teacher, SAM's prompt decoder) and "save as".
- :class:`ViewerClient`: one browser's camera, view mode, prompts and 3D selection, and the
  actions its panel and clicks trigger. :mod:`feature_splat.viewer.server` only maps viser's
  events onto these methods, so tests drive them directly and compare with the library.

Prompts go through the prompts package: text through per-Gaussian scores
(:func:`~feature_splat.prompts.text.gaussian_scores`: exact for the linear decoder), clicks and
boxes through a 2D mask (SAM's on the rendered SAM features for a SAM run, feature similarity to
the clicked pixel otherwise) lifted to 3D by :func:`~feature_splat.prompts.select_by_masks`.
Selections combine with the previous one (new, add, subtract). Edits are shared by every client;
each edit clears the selections, whose Gaussians it changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from feature_splat.cameras import Cameras
from feature_splat.edit.ops import apply_edit
from feature_splat.errors import ConfigError
from feature_splat.field import FeatureField, is_field_folder
from feature_splat.io.outputs import output_kind, prepare_output
from feature_splat.prompts import gaussian_scores, select_by_masks
from feature_splat.prompts.point import similarity_to_pixel
from feature_splat.run_folder import EDIT_KIND, RUN_KIND, Run
from feature_splat.teachers import Teacher
from feature_splat.viewer.camera import browser_camera, frame_size
from feature_splat.viewer.frames import Frame, Mode, TextPrompt, available_modes, render_frame
from feature_splat.visualize import PcaColours

FIELD_KIND = "field"
"""The output kind of a bare field saved from the viewer."""
Combine = Literal["new", "add", "subtract"]
EditOp = Literal["delete", "extract", "recolour"]
COMBINE: tuple[Combine, ...] = ("new", "add", "subtract")


def combine(previous: Tensor | None, chosen: Tensor, how: Combine) -> Tensor:
    """``chosen`` (bool [N]) combined with the ``previous`` selection: replace, union or
    difference."""
    if previous is None or how == "new":
        return chosen.clone()
    return previous | chosen if how == "add" else previous & ~chosen


class ViewerSession:
    """The field every client sees, its edits and the prompt answerers, shared across threads.

    ``run`` (optional) supplies the teacher, SAM's prompt decoder and "save as"; a bare field
    (the generalizable model's, or one being trained) can be viewed without one.
    """

    def __init__(
        self,
        field: FeatureField,
        *,
        run: Run | None = None,
        teacher: Teacher | None = None,
        cameras: Cameras | None = None,
        view_names: list[str] | None = None,
        held_out: list[int] | None = None,
        source: Path | None = None,
    ) -> None:
        self.run = run
        self.source = run.path if run is not None else source
        """The folder the field was read from (None: made in memory, as in live training)."""
        self.teacher = teacher
        self.cameras = cameras
        self.view_names = view_names or []
        self.held_out = set(held_out or [])
        """Indices of the dataset views held out from training."""
        self.lock = threading.RLock()
        self.render_lock = threading.Lock()
        """Held around every rasterizer call: the CPU kernels are not re-entrant across
        threads, and on two cores concurrent renders only slow each other down."""
        self._listeners: list[Callable[[], None]] = []
        self._undo: list[FeatureField] = []
        self._redo: list[FeatureField] = []
        self.version = 0
        self.pca: PcaColours | None = None
        self._set_field(field, refit_colours=True)

    @classmethod
    def open(cls, folder: str | Path, *, allow_torchscript: bool = False) -> ViewerSession:
        """A session on a run folder (a training run or an edit of one), or on a folder holding
        just a field (``point_cloud.ply`` + ``decoder.pt``, as ``gen predict`` writes): no
        dataset cameras and no teacher then."""
        folder = Path(folder)
        if output_kind(folder) not in (RUN_KIND, EDIT_KIND) and is_field_folder(folder):
            return cls(FeatureField.load(folder), source=folder)
        run = Run(folder, allow_torchscript=allow_torchscript)
        dataset = run.dataset
        return cls(
            run.field,
            run=run,
            teacher=run.teacher,
            cameras=dataset.cameras,
            view_names=list(dataset.image_names),
            held_out=dataset.test_indices,
        )

    @property
    def field(self) -> FeatureField:
        """The field as it is now (after the edits not undone)."""
        return self._field

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The view modes this field supports."""
        return available_modes(self._field, self.teacher)

    @property
    def is_sam(self) -> bool:
        """Whether clicks and boxes go through SAM (a field distilled from SAM)."""
        return self.run is not None and self.run.config.teacher == "sam"

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change of the field (edits, undo, redo, replace)."""
        self._listeners.append(listener)

    def _set_field(
        self, field: FeatureField, *, refit_colours: bool = False, keep_selections: bool = False
    ) -> None:
        """Show ``field``; selections are cleared (their version moves on) unless kept. Its
        values are checked here, once: frames render it unchecked."""
        field.check_values()
        self._field = field
        if not keep_selections:
            self.version += 1
        if refit_colours:  # fixed per field: edits keep the colours
            features = field.gaussians.features.detach()
            usable = features.shape[1] > 0 and len(features) > 1
            self.pca = PcaColours.fit(features) if usable else None

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def replace_field(self, field: FeatureField) -> None:
        """Show another field (live training): no undo across it. Selections stay while the
        Gaussians stay the same (no densification in between)."""
        with self.lock:
            same = len(field.gaussians) == len(self._field.gaussians)
            self._set_field(field, refit_colours=True, keep_selections=same)
            self._undo.clear()
            self._redo.clear()
        self._changed()

    def edit(
        self, op: EditOp, selection: Tensor, rgb: tuple[float, float, float] = (0.1, 0.8, 0.1)
    ) -> int:
        """Apply ``op`` to the selected Gaussians; returns the number of Gaussians after it."""
        with self.lock:
            edited = apply_edit(self._field, op, selection, rgb)
            self._undo.append(self._field)
            self._redo.clear()
            self._set_field(edited)
            count = len(edited.gaussians)
        self._changed()
        return count

    def undo(self) -> bool:
        """Undo the last edit; False when there is none."""
        return self._step(self._undo, self._redo)

    def redo(self) -> bool:
        """Redo the last undone edit; False when there is none."""
        return self._step(self._redo, self._undo)

    def _step(self, source: list[FeatureField], target: list[FeatureField]) -> bool:
        with self.lock:
            if not source:
                return False
            target.append(self._field)
            self._set_field(source.pop())
        self._changed()
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def save_as(self, out: str | Path) -> Path:
        """Write the field as it is now to a new folder (never over the opened one, nor inside
        it): a run folder for a run, a field folder for a bare field."""
        with self.lock:
            field = self._field
        if self.run is not None:
            return self.run.save_field_as(field, Path(out))
        if self.source is None:
            raise ConfigError("save as: this field is being trained; its run folder has it")
        out = prepare_output(out, FIELD_KIND, inputs=[self.source])
        field.save(out)
        return out

    def prompt_teacher(self) -> Teacher:
        """The teacher text prompts go through."""
        if self.teacher is None:
            raise ConfigError(
                "text prompts: this field has no teacher (trained with --teacher none)"
            )
        return self.teacher

    def sam_teacher(self) -> Teacher:
        """SAM's prompt encoder and mask decoder (SAM runs only)."""
        if self.run is None:
            raise ConfigError("point prompts with SAM: this field was not opened from a run folder")
        return self.run.sam_teacher()


@dataclass
class PointPrompt:
    """Clicks (and an optional box) in one view: pixel positions and labels (1 positive,
    0 negative), the camera they were made in, and the selection they started from."""

    camera: Cameras
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    base: Tensor | None = None


class ViewerClient:
    """One browser: its camera, view mode, text prompt, selection, and the actions on them.

    ``long_side`` is the full resolution's longer side in pixels; frames while the camera moves
    are ``moving_scale`` of it. ``click_similarity`` is the cosine to the clicked pixel above
    which a pixel joins the mask (feature-similarity clicks, for teachers other than SAM).
    """

    def __init__(
        self,
        session: ViewerSession,
        *,
        long_side: int = 512,
        moving_scale: float = 0.5,
        click_similarity: float = 0.9,
    ) -> None:
        self.session = session
        self.long_side = long_side
        self.moving_scale = moving_scale
        self.click_similarity = click_similarity
        self.mode: Mode = "rgb"
        self.prompt = TextPrompt()
        self.combine: Combine = "new"
        self.selection: Tensor | None = None
        self._selection_version = session.version
        self._point_prompt: PointPrompt | None = None
        self.pose: tuple[np.ndarray, np.ndarray, float, float] | None = None

    # --- camera and frames ----------------------------------------------------------------

    def set_pose(self, position: np.ndarray, wxyz: np.ndarray, fov: float, aspect: float) -> None:
        """The browser camera moved (viser: position, wxyz, vertical fov, aspect)."""
        self.pose = (np.asarray(position, float), np.asarray(wxyz, float), float(fov), aspect)
        self._point_prompt = None  # clicks belong to the view they were made in

    def camera(self, moving: bool = False) -> Cameras:
        """The camera of the current pose, at full or (``moving``) reduced resolution."""
        if self.pose is None:
            raise ConfigError("viewer: no camera yet (the browser has not reported one)")
        position, wxyz, fov, aspect = self.pose
        side = max(16, round(self.long_side * (self.moving_scale if moving else 1.0)))
        width, height = frame_size(aspect, side)
        return browser_camera(position, wxyz, fov, width, height)

    def render(self, moving: bool = False) -> Frame:
        """The frame for the current pose and mode."""
        session = self.session
        with session.lock:
            field, pca = session.field, session.pca
        selection = self.current_selection()
        camera = self.camera(moving)
        with session.render_lock:
            return render_frame(
                field, camera, self.mode, teacher=session.teacher, prompt=self.prompt,
                selection=selection, pca=pca,
            )  # fmt: skip

    # --- selection --------------------------------------------------------------------------

    def current_selection(self) -> Tensor | None:
        """The 3D selection (bool [N]), or None; an edit by any client clears it."""
        if self._selection_version != self.session.version:
            self.selection, self._point_prompt = None, None
            self._selection_version = self.session.version
        return self.selection

    @property
    def selected_count(self) -> int:
        """How many Gaussians are selected."""
        selection = self.current_selection()
        return 0 if selection is None else int(selection.sum())

    def _select(self, chosen: Tensor, base: Tensor | None) -> int:
        self.selection = combine(base, chosen, self.combine)
        self._selection_version = self.session.version
        return self.selected_count

    def clear_selection(self) -> None:
        """Select nothing."""
        self.selection, self._point_prompt = None, None

    def select_text(self) -> int:
        """Select the Gaussians whose score for the text prompt exceeds its threshold."""
        prompt, session = self.prompt, self.session
        if not prompt.text:
            raise ConfigError("text prompt: type a text first")
        with session.lock:
            field = session.field
        negatives = prompt.negatives if prompt.score == "relevancy" else None
        scores = gaussian_scores(
            field, session.prompt_teacher(), prompt.text, prompt.score, negatives
        )
        self._point_prompt = None
        return self._select(scores > prompt.threshold, self.current_selection())

    def click(self, screen_x: float, screen_y: float, positive: bool = True) -> int:
        """A point prompt at a screen position (0..1, OpenCV image axes) of the current view;
        further clicks in the same view refine the same mask. Returns the selection count."""
        camera = self.camera()
        x = min(max(screen_x, 0.0), 1.0) * camera.width
        y = min(max(screen_y, 0.0), 1.0) * camera.height
        prompt = self._point_prompt
        if prompt is None:
            prompt = PointPrompt(camera, base=self.current_selection())
            self._point_prompt = prompt
        prompt.points.append((x, y))
        prompt.labels.append(1 if positive else 0)
        return self._select(self._lift(prompt), prompt.base)

    def box(self, screen_min: tuple[float, float], screen_max: tuple[float, float]) -> int:
        """A box prompt (screen corners 0..1) of the current view. Returns the selection count."""
        camera = self.camera()
        (x0, y0), (x1, y1) = screen_min, screen_max
        corners = (
            min(x0, x1) * camera.width, min(y0, y1) * camera.height,
            max(x0, x1) * camera.width, max(y0, y1) * camera.height,
        )  # fmt: skip
        prompt = PointPrompt(camera, box=corners, base=self.current_selection())
        self._point_prompt = prompt
        return self._select(self._lift(prompt), prompt.base)

    def _mask(self, prompt: PointPrompt) -> Tensor:
        """The 2D mask [H, W] of a point / box prompt in its view."""
        session, camera = self.session, prompt.camera
        with session.lock:
            field = session.field
        if session.is_sam:
            from feature_splat.prompts.sam import rendered_sam_masks

            points = torch.tensor(prompt.points) if prompt.points else None
            labels = torch.tensor(prompt.labels) if prompt.points else None
            box = torch.tensor(prompt.box) if prompt.box is not None else None
            single_click = prompt.box is None and len(prompt.points) == 1
            with session.render_lock:
                masks, scores = rendered_sam_masks(
                    session.sam_teacher(), field, camera, points, labels, box, single_click
                )
            return masks[int(scores.argmax())].cpu()  # SAM's own choice among its candidates
        if prompt.box is not None:
            x0, y0, x1, y1 = (round(v) for v in prompt.box)
            mask = torch.zeros(camera.height, camera.width, dtype=torch.bool)
            mask[y0:y1, x0:x1] = True
            return mask
        if field.gaussians.feature_dim == 0:
            raise ConfigError("click: this field has no features (RGB only); drag a box instead")
        with session.render_lock:
            features = field.render(camera).features
        mask = torch.zeros(camera.height, camera.width, dtype=torch.bool)
        for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
            px, py = min(int(x), camera.width - 1), min(int(y), camera.height - 1)
            similarity = similarity_to_pixel(features, px, py, field.decoder)
            similar = similarity[0].cpu() > self.click_similarity
            mask = mask | similar if label else mask & ~similar
        return mask

    def _lift(self, prompt: PointPrompt) -> Tensor:
        """The Gaussians that render mostly inside the prompt's mask, in its view."""
        session = self.session
        mask = self._mask(prompt)
        with session.lock:
            field = session.field
        with session.render_lock:
            return select_by_masks(field, prompt.camera, mask[None])

    # --- edits ------------------------------------------------------------------------------

    def edit(self, op: EditOp, rgb: tuple[float, float, float] = (0.1, 0.8, 0.1)) -> int:
        """Apply ``op`` to this client's selection (shared with every client); returns the
        number of Gaussians after it."""
        selection = self.current_selection()
        if selection is None or not bool(selection.any()):
            raise ConfigError(f"{op}: nothing is selected")
        return self.session.edit(op, selection, rgb)
