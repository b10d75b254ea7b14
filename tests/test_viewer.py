"""The viewer without a browser: a browser's actions driven on its state, checked against the
library's own functions (rasterizer, prompts, lifting, edits) and files written by the tests."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from cli_errors import cli_error

pytest.importorskip("viser", reason="the viewer needs the viewer extra (viser)")

from feature_splat.cli import main
from feature_splat.errors import ConfigError, OutputError
from feature_splat.prompts import gaussian_scores, select_by_masks
from feature_splat.prompts.point import similarity_to_pixel
from feature_splat.run_folder import Run
from feature_splat.training.config import TrainConfig
from feature_splat.training.run import train
from feature_splat.viewer import FieldViewer, ViewerClient, ViewerSession
from feature_splat.viewer.camera import browser_camera, dataset_pose
from feature_splat.viewer.worker import FrameWorker
from feature_splat.visualize import depth_rgb

W, H = 64, 48


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tabletop field trained briefly (synthetic teacher: text prompts work)."""
    root = tmp_path_factory.mktemp("viewer")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATURE_SPLAT_CACHE", str(root / "cache"))
        out = root / "run"
        train(TrainConfig(data="tabletop", out=out, width=W, height=H, iterations=150,
                          feature_dim=8, init_points=2000, teacher_dim=64))  # fmt: skip
    return out


def _at_view(client: ViewerClient, view: int) -> None:
    """Put the client's camera at dataset view ``view`` (as the camera dropdown does)."""
    session = client.session
    focus = session.field.gaussians.means.median(0).values
    pose = dataset_pose(session.cameras, view, focus)
    client.set_pose(np.array(pose.position), np.array(pose.wxyz), pose.fov, W / H)


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def test_browser_cameras_are_the_dataset_cameras(run):
    cameras = Run(run).dataset.cameras
    focus = torch.zeros(3)
    for view in (0, 7, 20):
        pose = dataset_pose(cameras, view, focus)
        camera = browser_camera(np.array(pose.position), np.array(pose.wxyz), pose.fov, W, H)
        torch.testing.assert_close(
            camera.viewmats[0], cameras.viewmats[view].float(), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(camera.Ks[0], cameras.Ks[view].float(), atol=1e-4, rtol=0)
        # The orbit point lies on the view's optical axis.
        axis = cameras.camtoworlds[view][:3, 2].double().numpy()
        offset = np.array(pose.look_at) - np.array(pose.position)
        assert np.allclose(np.cross(offset, axis), 0.0, atol=1e-6)


def test_a_frame_is_what_the_field_renders_for_that_camera(run):
    session = ViewerSession.open(run)
    client = ViewerClient(session, long_side=W)
    _at_view(client, 3)
    expected = session.field.render(session.cameras[3])
    client.mode = "rgb"
    frame = client.render()
    assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
    assert np.abs(frame.image.astype(int) - _uint8(expected.rgb[0]).astype(int)).max() <= 1
    client.mode = "depth"
    depth = _uint8(depth_rgb(expected.depth[0], expected.alpha[0]))
    assert np.abs(client.render().image.astype(int) - depth.astype(int)).max() <= 1
    covered = expected.alpha[0, ..., 0].numpy() > 0.5
    np.testing.assert_allclose(frame.depth[covered], expected.depth[0, ..., 0].numpy()[covered],
                               rtol=1e-4)  # fmt: skip
    moving = client.render(moving=True)
    assert moving.image.shape == (H // 2, W // 2, 3)  # reduced while the camera moves


def test_every_mode_renders_and_feature_colours_stay_fixed(run):
    session = ViewerSession.open(run)
    client = ViewerClient(session, long_side=W)
    _at_view(client, 1)
    client.prompt.text, client.prompt.labels = "table", ("table", "chair", "floor")
    assert session.modes == ("rgb", "depth", "alpha", "pca", "relevancy", "labels", "selection")
    frames = {}
    for mode in session.modes:
        client.mode = mode
        frames[mode] = client.render().image
        assert frames[mode].shape == (H, W, 3)
    assert not np.array_equal(frames["relevancy"], frames["rgb"])
    colours = session.pca
    client.select_text()
    client.edit("recolour")
    assert session.pca is colours  # the PCA basis is fixed per field, edits keep it


def test_text_prompt_selects_what_the_prompts_package_selects(run):
    session = ViewerSession.open(run)
    client = ViewerClient(session)
    field, teacher = session.field, session.teacher
    client.prompt.text, client.prompt.threshold = "table", 0.6
    expected_table = gaussian_scores(field, teacher, "table", "relevancy") > 0.6
    assert client.select_text() == int(expected_table.sum()) > 0
    assert torch.equal(client.selection, expected_table)
    client.prompt.score = "cosine"
    client.prompt.text, client.prompt.threshold = "chair", 0.3
    expected_chair = gaussian_scores(field, teacher, "chair", "cosine") > 0.3
    client.combine = "add"
    client.select_text()
    assert torch.equal(client.selection, expected_table | expected_chair)
    client.combine = "subtract"
    client.select_text()
    assert torch.equal(client.selection, (expected_table | expected_chair) & ~expected_chair)
    client.clear_selection()
    assert client.selected_count == 0
    client.prompt.text = ""
    with pytest.raises(ConfigError, match="type a text"):
        client.select_text()


def test_a_click_lifts_the_mask_of_similar_features(run):
    session = ViewerSession.open(run)
    client = ViewerClient(session, long_side=W, click_similarity=0.9)
    _at_view(client, 2)
    count = client.click(0.5, 0.7)
    camera, field = client.camera(), session.field
    features = field.render(camera).features
    mask = similarity_to_pixel(features, int(0.5 * W), int(0.7 * H), field.decoder)[0] > 0.9
    expected = select_by_masks(field, camera, mask[None])
    assert count == int(expected.sum()) > 0 and torch.equal(client.selection, expected)
    # A negative click in the same view removes what is similar to it.
    client.click(0.1, 0.1, positive=False)
    negative = similarity_to_pixel(features, int(0.1 * W), int(0.1 * H), field.decoder)[0] > 0.9
    assert torch.equal(client.selection, select_by_masks(field, camera, (mask & ~negative)[None]))
    # The selection shows from another view: highlighted pixels where the selected Gaussians are.
    _at_view(client, 10)
    client.mode = "selection"
    shown = client.render().image.astype(int)
    client.mode = "rgb"
    plain = client.render().image.astype(int)
    assert (np.abs(shown - plain).sum(-1) > 0).any()


def test_a_box_lifts_the_gaussians_inside_it(run):
    session = ViewerSession.open(run)
    client = ViewerClient(session, long_side=W)
    _at_view(client, 4)
    client.box((0.25, 0.25), (0.75, 0.5))
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[12:24, 16:48] = True
    assert torch.equal(
        client.selection, select_by_masks(session.field, client.camera(), mask[None])
    )


def test_delete_undo_redo_and_save_as(run, tmp_path):
    session = ViewerSession.open(run)
    client, other = ViewerClient(session), ViewerClient(session)
    before = len(session.field.gaussians)
    client.prompt.text = "table"
    other.prompt.text = "chair"
    selected = client.select_text()
    other.select_text()
    assert client.edit("delete") == before - selected == len(session.field.gaussians)
    assert other.selected_count == 0  # an edit by any browser clears every selection
    with pytest.raises(ConfigError, match="nothing is selected"):
        client.edit("delete")
    assert session.undo() and len(session.field.gaussians) == before
    saved = session.save_as(tmp_path / "undone")
    assert (saved / "point_cloud.ply").read_bytes() == (run / "point_cloud.ply").read_bytes()
    assert session.redo() and not session.redo()
    edited = session.save_as(tmp_path / "edited")
    reopened = ViewerSession.open(edited)  # query, edit and view open it again
    assert len(reopened.field.gaussians) == before - selected
    main(["query", str(edited), "--text", "chair", "--out", str(tmp_path / "query")])
    assert json.loads((tmp_path / "query" / "query.json").read_text())["gaussians"] == len(
        reopened.field.gaussians
    )
    for inside in (run, run / "edits"):
        with pytest.raises(OutputError, match="inside the input"):
            session.save_as(inside)


def test_a_bare_field_folder_opens_with_an_overview_and_saves_as_a_field(run, tmp_path):
    """A folder with only a field (as `gen predict` writes): no cameras, no teacher."""
    from feature_splat.field import FeatureField, is_field_folder
    from feature_splat.viewer.camera import overview_pose

    folder = tmp_path / "field"
    folder.mkdir()
    Run(run).field.save(folder)
    session = ViewerSession.open(folder)
    assert session.run is None and session.cameras is None
    assert session.modes == ("rgb", "depth", "alpha", "pca", "selection")
    means = session.field.gaussians.means
    pose = overview_pose(means)
    camera = browser_camera(np.array(pose.position), np.array(pose.wxyz), pose.fov, W, H)
    pixels, depth = camera.project(means.median(0).values[None])
    torch.testing.assert_close(pixels[0, 0], torch.tensor([W / 2, H / 2]), atol=1e-3, rtol=0)
    inside = camera.project(means)[0][0]
    in_view = ((inside >= 0) & (inside < torch.tensor([W, H]))).all(-1).float().mean()
    assert float(depth[0, 0]) > 0 and float(in_view) > 0.85  # most of the field is in view
    client = ViewerClient(session, long_side=W)
    client.set_pose(np.array(pose.position), np.array(pose.wxyz), pose.fov, W / H)
    client.box((0.3, 0.3), (0.7, 0.7))
    kept = client.edit("extract")
    saved = session.save_as(tmp_path / "extracted")
    assert is_field_folder(saved) and len(FeatureField.load(saved).gaussians) == kept
    assert len(ViewerSession.open(saved).field.gaussians) == kept
    with pytest.raises(OutputError, match="inside the input"):
        session.save_as(folder / "again")


def test_a_failing_render_leaves_the_worker_serving():
    calls, errors, done = [], [], threading.Event()

    def render(moving: bool) -> None:
        calls.append(moving)
        if len(calls) == 1:
            raise RuntimeError("injected render failure")
        done.set()

    worker = FrameWorker(render, errors.append, still_after=0.05)
    worker.request()
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.request()
    assert done.wait(5) and worker.alive
    assert [str(e) for e in errors] == ["injected render failure"]
    worker.close()
    assert not worker.alive


def test_the_newest_request_wins_and_a_still_frame_follows():
    calls, release = [], threading.Event()

    def render(moving: bool) -> None:
        calls.append(moving)
        if len(calls) == 1:
            release.wait(5)  # hold the first frame while the camera keeps moving

    worker = FrameWorker(render, lambda error: None, still_after=0.1)
    worker.request(moving=True)
    time.sleep(0.05)
    for _ in range(20):
        worker.request(moving=True)
    release.set()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    worker.close()
    assert calls == [True, True, False]  # 21 requests: two moving frames, then one still


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_server_serves_on_loopback_and_stops(run):
    session = ViewerSession.open(run)
    port = _free_port()
    viewer = FieldViewer(session, port=port)
    try:
        assert viewer.url == f"http://127.0.0.1:{port}"
        page = urllib.request.urlopen(viewer.url, timeout=10).read()
        assert b"<html" in page.lower()
    finally:
        viewer.stop()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_view_command_errors_are_one_line(run, tmp_path, capsys):
    assert "port" in cli_error(["view", str(run), "--port", "0"], capsys)
    assert "not a run folder" in cli_error(["view", str(tmp_path)], capsys)


def test_clicks_on_a_sam_run_go_through_sams_decoder(tmp_path, monkeypatch):
    """On a SAM-distilled run a click is a SAM point prompt on the rendered SAM features; the
    best of SAM's candidate masks is lifted."""
    pytest.importorskip("segment_anything")
    from foreign_scene import write_foreign_scene

    from feature_splat.prompts.sam import rendered_sam_masks
    from feature_splat.teachers.sam import SamTeacher

    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path / "cache"))
    scene = write_foreign_scene(tmp_path / "scene", views=8, size=32)
    weights = tmp_path / "sam_tiny.pth"
    torch.save(SamTeacher.random("tiny").model.state_dict(), weights)
    run = tmp_path / "run"
    main(["train", str(scene.folder), "--teacher", "sam", "--teacher-model", "tiny",
          "--teacher-checkpoint", str(weights), "--out", str(run), "--feature-dim", "4",
          "--iterations", "12", "--init-points", "400"])  # fmt: skip
    weights.unlink()  # the run's saved prompt decoder answers
    session = ViewerSession.open(run)
    assert session.is_sam and "relevancy" not in session.modes  # SAM has no text side
    client = ViewerClient(session, long_side=32)
    focus = session.field.gaussians.means.median(0).values
    pose = dataset_pose(session.cameras, 1, focus)
    client.set_pose(np.array(pose.position), np.array(pose.wxyz), pose.fov, 1.0)
    client.click(0.5, 0.5)
    camera = client.camera()
    masks, scores = rendered_sam_masks(session.sam_teacher(), session.field, camera,
                                       torch.tensor([[16.0, 16.0]]), torch.tensor([1]))  # fmt: skip
    expected = select_by_masks(session.field, camera, masks[int(scores.argmax())][None])
    assert torch.equal(client.selection, expected)


# -- a real browser ------------------------------------------------------------------------------
@pytest.fixture
def served(run):
    """The viewer of ``run`` on a free loopback port (small frames: the CPU renders them)."""
    viewer = FieldViewer(ViewerSession.open(run), port=_free_port(), long_side=160)
    yield viewer
    viewer.stop()


def _wait_for_still_frame(page) -> None:
    """Wait until the panel reports a full-resolution frame (not one made while moving)."""
    from browser import gui_text_value, wait_until

    def still() -> bool:
        shown = gui_text_value(page, "Frame ms")
        return bool(shown) and "moving" not in shown

    wait_until(still, 30, "a full-resolution frame")


def _panel_of_one_browser(viewer: FieldViewer, page):
    from browser import wait_until

    wait_until(lambda: len(viewer.panels) == 1, 20, "the browser's panel")
    _wait_for_still_frame(page)
    (panel,) = viewer.panels.values()
    return panel


def test_the_browser_shows_the_scene_answers_a_text_prompt_and_a_click(served):
    from browser import (
        browser_page,
        canvas_screenshot,
        click_canvas,
        dismiss_notifications,
        fill_text,
        gui_input,
        gui_text_value,
        select_dropdown,
        wait_until,
    )
    from PIL import Image

    with browser_page(served.url, width=900, height=700) as page:
        panel = _panel_of_one_browser(served, page)
        dismiss_notifications(page)
        time.sleep(0.5)
        shot = canvas_screenshot(page).astype(float)
        assert shot.std() > 10  # not blank
        expected = panel.state.render()  # what the server sent for this camera, as rendered
        resized = Image.fromarray(expected.image).resize(shot.shape[1::-1], Image.BILINEAR)
        assert np.abs(shot - np.asarray(resized, float)).mean() < 12  # JPEG, browser scaling

        fill_text(page, "Text", "table")
        wait_until(lambda: panel.state.mode == "relevancy", 20, "the relevancy view")
        wait_until(lambda: gui_text_value(page, "Selected") != "0", 20, "the text's selection")
        assert int(gui_text_value(page, "Selected")) == panel.state.selected_count > 0
        _wait_for_still_frame(page)
        time.sleep(0.5)
        assert np.abs(canvas_screenshot(page).astype(float) - shot).mean() > 5  # the heat map

        # A render that fails is shown to this browser, and the next frame is served.
        served_frames, real_render = [], panel.state.render

        def failing_once(moving: bool = False):
            if not served_frames:
                served_frames.append("failed")
                raise RuntimeError("injected render failure")
            served_frames.append("served")
            return real_render(moving)

        panel.state.render = failing_once
        select_dropdown(page, "Mode", "depth")
        page.get_by_text("injected render failure").first.wait_for(timeout=20_000)
        select_dropdown(page, "Mode", "rgb")
        wait_until(lambda: "served" in served_frames, 20, "a frame after the failure")
        panel.state.render = real_render
        dismiss_notifications(page)

        gui_input(page, "Show cameras").check()  # the dataset's cameras as frustums
        wait_until(lambda: len(panel._frustums) == len(panel.state.session.cameras), 20,
                   "a frustum per dataset camera")  # fmt: skip
        gui_input(page, "Show cameras").uncheck()
        wait_until(lambda: not any(f.visible for f in panel._frustums), 20, "hidden frustums")

        before = gui_text_value(page, "Selected")
        click_canvas(page, 0.45, 0.6)
        wait_until(lambda: gui_text_value(page, "Selected") != before, 30, "the click's selection")
        assert panel.state.mode == "selection"
        assert int(gui_text_value(page, "Selected")) == panel.state.selected_count


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_three_browsers_at_once_keep_memory_flat(served):
    from browser import CANVAS, browser_pages, wait_until

    with browser_pages(served.url, 3, width=700, height=600) as pages:
        wait_until(lambda: len(served.panels) == 3, 30, "three panels")
        cameras = {id(panel.state) for panel in served.panels.values()}
        assert len(cameras) == 3  # each browser has its own state

        def orbit(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for page in pages:
                    box = page.locator(CANVAS).bounding_box()
                    x, y = box["x"] + 0.3 * box["width"], box["y"] + 0.6 * box["height"]
                    page.mouse.move(x, y)
                    page.mouse.down()
                    page.mouse.move(x + 40, y + 10, steps=4)
                    page.mouse.up()

        orbit(8)  # warm up: every buffer and cache in place
        start = _rss_mb()
        frames = sum(panel.worker.frames for panel in served.panels.values())
        orbit(20)
        grown = _rss_mb() - start
        assert sum(panel.worker.frames for panel in served.panels.values()) > frames + 10
        assert grown < 100, f"server memory grew by {grown:.0f} MB in 20 s of three browsers"
    wait_until(lambda: not served.panels, 20, "the panels of closed browsers dropped")


def test_training_shows_live_and_pauses_from_the_viewer(tmp_path):
    """`train --viewer`: the viewer gets the field as it trains, and pausing stops the steps."""
    from feature_splat.data.synthetic import load_world
    from feature_splat.training.trainer import Trainer
    from feature_splat.viewer.live import LiveViewer

    dataset = load_world("tabletop", width=32, height=24, n_views=8, cache_dir=tmp_path)
    config = TrainConfig(data="tabletop", out=tmp_path / "run", teacher="none", iterations=400,
                         init_points=500, checkpoint_every=10_000)  # fmt: skip
    trainer = Trainer(config, dataset, None, 0)
    messages = []
    live = LiveViewer(trainer, dataset, None, port=_free_port(), announce=messages.append)
    try:
        assert messages == [f"live viewer at {live.viewer.url}"]
        first = live.session.field.gaussians.means.clone()
        live.control.paused.set()
        worker = threading.Thread(target=trainer.train, kwargs={"show_progress": False,
                                                               "live": live.control})  # fmt: skip
        worker.start()
        time.sleep(0.5)
        assert trainer.step == 0  # paused before the first step
        live.control.paused.clear()
        deadline = time.monotonic() + 60
        while trainer.step < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        live.control.paused.set()
        time.sleep(0.3)
        held = trainer.step
        time.sleep(0.5)
        assert 50 <= held == trainer.step < 400  # no step while paused
        live.publish()
        shown = live.session.field.gaussians.means
        assert not torch.equal(shown, first)  # the field as it is now ...
        torch.testing.assert_close(shown, trainer.field().gaussians.means.detach())
        assert shown.data_ptr() != trainer.params["means"].data_ptr()  # ... as a snapshot
        live.control.paused.clear()
        worker.join(60)
        assert trainer.step == 400
    finally:
        live.stop()
