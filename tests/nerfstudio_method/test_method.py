"""``ns-train feature-splat`` in nerfstudio's own environment (``make test-nerfstudio``).

Everything goes through the real entry points: ``ns-train`` finds the method through the
``nerfstudio.method_configs`` entry point, trains on the CPU on the built-in ``room`` exported as a
nerfstudio folder, with the synthetic oracle's features from a cache ``feature-splat encode``
filled; ``feature-splat import-ns`` turns the result into a run folder. Truth: the world's labels
and depths, and our own renderer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import (
    browser_page,
    canvas_screenshot,
    fill_text,
    free_port,
    select_dropdown,
    wait_for_gui_value,
    wait_until,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from feature_splat.cameras import Cameras
from feature_splat.data.nerfstudio import export_nerfstudio
from feature_splat.data.synthetic import load_world
from feature_splat.eval.prompts import selection_scores, surface_labels
from feature_splat.io import read_ply
from feature_splat.io.feature_cache import FeatureCache
from feature_splat.nerfstudio.import_run import import_nerfstudio_run
from feature_splat.prompts.text import CANONICAL_NEGATIVES, gaussian_scores, selection_threshold
from feature_splat.run_folder import Run, make_teacher
from feature_splat.training.config import TrainConfig

BIN = Path(sys.executable).parent
ITERATIONS = 300
# Bars from a measured run (room, 300 CPU iterations, 128 x 96; docs/nerfstudio.md): held-out
# PSNR 28.7 dB, feature cosine 0.84; "chair" at cosine 0.1: precision 0.73, recall 0.72.
MIN_PSNR, MIN_COSINE = 26.0, 0.75
MIN_PRECISION, MIN_RECALL = 0.6, 0.3


def _run(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == expect, f"{args[0]} exit {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def _ns_train(root: Path, name: str, iterations: int, *extra: str) -> Path:
    """Train with ns-train on the CPU; returns the run's config.yml."""
    _run(
        [
            str(BIN / "ns-train"), "feature-splat", "--data", "room",
            "--machine.device-type", "cpu", "--max-num-iterations", str(iterations),
            "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True",
            "--output-dir", "outputs", "--experiment-name", name, "--timestamp", "run",
            "--steps-per-eval-image", "100", "--steps-per-eval-all-images", str(iterations - 1),
            "--steps-per-save", str(iterations), *extra,
        ],
        cwd=root,
    )  # fmt: skip
    return root / "outputs" / name / "feature-splat" / "run" / "config.yml"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """room as a nerfstudio folder, and the synthetic teacher's cache of its images (the random
    text space, which the bars above were measured with)."""
    root = tmp_path_factory.mktemp("ns")
    world = load_world("room")
    export_nerfstudio(world, root / "room")
    encode = ["encode", "room", "--cache-dir", "cache", "--oracle-text", "random"]
    _run([str(BIN / "feature-splat"), *encode], cwd=root)
    teacher = make_teacher(TrainConfig(data="room", oracle_text="random"), world)
    cache = FeatureCache(root / "cache", teacher).folder_of(world.images)
    return {"root": root, "world": world, "cache": cache}


@pytest.fixture(scope="module")
def trained(scene: dict) -> Path:
    cache = ["--pipeline.datamanager.feature-cache", str(scene["cache"])]
    return _ns_train(scene["root"], "features", ITERATIONS, *cache)


def _scalars(config: Path, tag: str) -> list[float]:
    (events,) = config.parent.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars(tag)]


def test_ns_train_lists_the_method() -> None:
    (found,) = [
        e for e in entry_points(group="nerfstudio.method_configs") if e.name == "feature-splat"
    ]
    assert found.value == "feature_splat.nerfstudio.method:feature_splat_method"
    listed = _run([str(BIN / "ns-train"), "--help"], cwd=Path.cwd()).stdout
    assert "feature-splat" in listed


def test_cpu_training_learns_rgb_and_features(trained: Path) -> None:
    loss = _scalars(trained, "Train Loss")
    assert sum(loss[-3:]) / 3 < 0.5 * sum(loss[:3]) / 3, loss
    assert _scalars(trained, "Train Loss Dict/feature_loss")[-1] > 0
    held_out = "Eval Images Metrics Dict (all images)"
    assert _scalars(trained, f"{held_out}/psnr")[-1] >= MIN_PSNR
    assert _scalars(trained, f"{held_out}/feature_cosine")[-1] >= MIN_COSINE
    assert _scalars(trained, "Train Metrics Dict/feature_cosine")[-1] >= MIN_COSINE


def _loaded(config: Path, root: Path, monkeypatch: pytest.MonkeyPatch):
    from nerfstudio.utils.eval_utils import eval_setup

    monkeypatch.chdir(root)  # the config's paths are relative to where ns-train ran
    _, pipeline, _, step = eval_setup(config, test_mode="test")
    return pipeline, step


def _our_camera(ns_camera, width: int, height: int) -> Cameras:
    return Cameras.from_camtoworlds(
        ns_camera.camera_to_worlds.float(), ns_camera.get_intrinsics_matrices().float(),
        width, height, convention="opengl",
    )  # fmt: skip


def test_checkpoint_loads_back_and_renders_as_imported(
    trained: Path, scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, step = _loaded(trained, scene["root"], monkeypatch)
    assert step == ITERATIONS - 1
    folder, field = import_nerfstudio_run(trained, tmp_path / "imported")
    world, evaluation = scene["world"], pipeline.datamanager.eval_dataset
    assert len(evaluation) == len(world.test_indices)
    for i in range(2):
        name = Path(evaluation.image_filenames[i]).stem
        (view,) = [v for v in world.test_indices if world.image_names[v].endswith(name)]
        outputs = pipeline.model.get_outputs_for_camera(evaluation.cameras[i : i + 1])
        ours = field.render(world.cameras[view])
        assert torch.allclose(outputs["rgb"], ours.rgb[0].clamp(0, 1), atol=2e-3)
        assert torch.allclose(outputs["features"], ours.features[0], atol=2e-3)
    assert Run(folder).field.gaussians.feature_dim == 16


def test_import_ns_then_query_selects_the_chair(trained: Path, scene: dict) -> None:
    root = scene["root"]
    _run([str(BIN / "feature-splat"), "import-ns", str(trained), "imported"], cwd=root)
    run = Run(root / "imported")
    threshold = selection_threshold(run.teacher, "cosine")  # query's own default
    query = ["query", "imported", "--text", "chair", "--threshold", str(threshold)]
    _run([str(BIN / "feature-splat"), *query, "--out", "chair"], cwd=root)
    summary = json.loads((root / "chair" / "query.json").read_text())
    selected = gaussian_scores(run.field, run.teacher, "chair", mode="cosine") > threshold
    assert summary["gaussians_selected"] == int(selected.sum())
    world = scene["world"]
    labels = surface_labels(run.field, world)
    scores = selection_scores(selected, labels, world.class_names.index("chair"))
    assert scores["precision"] >= MIN_PRECISION and scores["recall"] >= MIN_RECALL, scores


def test_viewer_prompts(trained: Path, scene: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from nerfstudio.viewer.viewer_elements import (
        ViewerButton,
        ViewerControl,
        ViewerDropdown,
        ViewerText,
    )

    pipeline, _ = _loaded(trained, scene["root"], monkeypatch)
    model = pipeline.model
    assert isinstance(model.text_element, ViewerText)
    assert isinstance(model.negatives_element, ViewerText)
    assert isinstance(model.render_mode_element, ViewerDropdown)
    assert model.render_mode_element.options == ["rgb", "pca", "relevancy", "similarity"]
    assert isinstance(model.click_element, ViewerButton)
    assert isinstance(model.viewer_control, ViewerControl)

    world, evaluation = scene["world"], pipeline.datamanager.eval_dataset
    name = Path(evaluation.image_filenames[1]).stem
    (view,) = [v for v in world.test_indices if world.image_names[v].endswith(name)]
    # The model lives in nerfstudio's (centred, scaled) frame: its cameras, the world's labels.
    camera = _our_camera(evaluation.cameras[1:2], world.width, world.height)
    chair = world.labels[view] == world.class_names.index("chair")
    assert chair.sum() > 50
    field = model.field()
    render = field.render(camera)
    rgb, features = render.rgb[0].clamp(0, 1), render.features[0]
    assert model.render_mode == "rgb" and model._feature_view(field, camera, rgb, features) is rgb
    model.render_mode_element.value = "pca"  # as the dropdown does: the features' PCA
    model.show(model.render_mode_element.value)
    pca = model._feature_view(field, camera, rgb, features)
    assert pca.shape == rgb.shape and not torch.allclose(pca, rgb, atol=0.05)

    model.text_element.value = "chair"
    model._on_text(model.text_element)
    assert model.render_mode == "relevancy"
    heat = model._feature_view(field, camera, rgb, features)
    # LERF relevancy by brute force: decode every pixel to the teacher's width, then the
    # softmax of 10 x cosine against each canonical negative, the minimum over them.
    texts = model.teacher.encode_text(["chair", *CANONICAL_NEGATIVES])
    decoded = torch.nn.functional.normalize(model.decoder(features.detach()), dim=-1)
    cosines = decoded @ torch.nn.functional.normalize(texts, dim=-1).T
    pairs = torch.stack([cosines[..., :1].expand_as(cosines[..., 1:]), cosines[..., 1:]], dim=-1)
    relevancy = torch.softmax(10 * pairs, dim=-1)[..., 0].min(dim=-1).values
    # The heat map covers the relevant pixels (its weight grows from 0 at relevancy 0.5), and
    # only them: elsewhere the view is the RGB render (to the 8 bits of the frame).
    shown = (heat - rgb).abs().amax(-1) > 2 / 255
    assert float(shown[relevancy > 0.6].float().mean()) > 0.95
    assert not bool(shown[relevancy < 0.5].any())
    assert float(cosines[..., 0][chair].mean()) > float(cosines[..., 0][~chair].mean()) + 0.05
    model.negatives_element.value = "chair"  # against itself: relevancy 0.5, nothing shown
    model._on_text(model.negatives_element)
    plain = model._feature_view(field, camera, rgb, features)
    assert torch.allclose(plain, rgb, atol=2 / 255)

    v, u = (c.float().mean() for c in chair.nonzero(as_tuple=True))  # a pixel on the chair
    ray = torch.linalg.solve(camera.Ks[0], torch.tensor([u + 0.5, v + 0.5, 1.0]))
    direction = camera.viewmats[0, :3, :3].T @ ray
    model.point_prompt(camera.centers[0], direction)
    assert model.render_mode == "similarity" and model.clicked_feature is not None
    query = torch.nn.functional.normalize(model.decoder(model.clicked_feature), dim=-1)
    similarity = model.decoder.cosines(features.detach(), query[None])[..., 0]
    assert float(similarity[chair].mean()) > float(similarity[~chair].mean()) + 0.2


def test_minilm_text_space_answers_paraphrases_in_the_method(
    scene: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache encoded with the MiniLM oracle (installed in this environment too): the method's
    teacher encodes a prompt no vocabulary holds ("couch") with the model itself, from the cache's
    record alone, and its relevancy picks out the sofa."""
    from feature_splat.teachers.text_space import MiniLMTextSpace

    root, world = scene["root"], scene["world"]
    encode = ["encode", "room", "--cache-dir", "cache-minilm", "--oracle-text", "minilm"]
    _run([str(BIN / "feature-splat"), *encode], cwd=root)
    teacher = make_teacher(TrainConfig(data="room", oracle_text="minilm"), world)
    cache = FeatureCache(root / "cache-minilm", teacher).folder_of(world.images)
    config = _ns_train(
        root, "minilm", ITERATIONS, "--pipeline.datamanager.feature-cache", str(cache)
    )
    pipeline, _ = _loaded(config, root, monkeypatch)
    model = pipeline.model
    assert model.teacher.dim == 384
    couch = model.teacher.encode_text(["couch"])
    torch.testing.assert_close(couch, MiniLMTextSpace().embed(["couch"]), atol=1e-6, rtol=0)
    evaluation = pipeline.datamanager.eval_dataset
    best = 0.0
    for i in range(len(evaluation)):
        name = Path(evaluation.image_filenames[i]).stem
        (view,) = [v for v in world.test_indices if world.image_names[v].endswith(name)]
        sofa = world.labels[view] == world.class_names.index("sofa")
        if sofa.sum() < 100:
            continue
        camera = _our_camera(evaluation.cameras[i : i + 1], world.width, world.height)
        features = model.field().render(camera).features[0].detach()
        texts = model.teacher.encode_text(["couch", *CANONICAL_NEGATIVES])
        cosines = model.decoder.cosines(features, torch.nn.functional.normalize(texts, dim=-1))
        pairs = torch.stack([cosines[..., :1].expand_as(cosines[..., 1:]), cosines[..., 1:]], -1)
        relevancy = torch.softmax(10 * pairs, dim=-1)[..., 0].min(dim=-1).values
        best = max(best, float(relevancy[sofa].mean() - relevancy[~sofa].mean()))
    assert best > 0.05, best


def test_rgb_only_without_a_cache(scene: dict) -> None:
    root = scene["root"]
    config = _ns_train(root, "rgb", 100)
    _run([str(BIN / "feature-splat"), "import-ns", str(config), "rgb-run"], cwd=root)
    assert Run(root / "rgb-run").field.gaussians.feature_dim == 0
    refused = _run(
        [str(BIN / "feature-splat"), "query", "rgb-run", "--text", "chair"], cwd=root, expect=2
    )
    assert len(refused.stderr.strip().splitlines()) == 1 and "RGB only" in refused.stderr


def test_ns_export_writes_the_same_gaussians(trained: Path, scene: dict, tmp_path: Path) -> None:
    root = scene["root"]
    export = tmp_path / "export"
    _run([str(BIN / "ns-export"), "gaussian-splat", "--load-config", str(trained),
          "--output-dir", str(export)], cwd=root)  # fmt: skip
    standard = read_ply(export / "splat.ply")  # Inria's layout: no feature channels
    _, field = import_nerfstudio_run(trained, tmp_path / "imported", workdir=root)
    ours = field.gaussians
    assert len(standard) == len(ours) and standard.feature_dim == 0
    frame = json.loads((trained.parent / "dataparser_transforms.json").read_text())
    shift, scale = torch.tensor(frame["transform"])[:, 3], frame["scale"]
    assert torch.allclose(standard.means, scale * (ours.means + shift), atol=1e-4)
    assert torch.allclose(standard.sh0, ours.sh0, atol=1e-5)
    assert torch.allclose(standard.shN, ours.shN, atol=1e-5)  # 3DGS's channel-major f_rest
    assert torch.allclose(standard.logit_opacities, ours.logit_opacities, atol=1e-5)
    # The exported PLY is in nerfstudio's frame: `lift` maps it back with the dataparser transform
    # and gives it features from the same cache, without training.
    lifted = tmp_path / "lifted"
    _run([str(BIN / "feature-splat"), "lift", "room", "--gaussians", str(export / "splat.ply"),
          "--dataparser-transforms", str(trained.parent / "dataparser_transforms.json"),
          "--cache-dir", "cache", "--out", str(lifted)], cwd=root)  # fmt: skip
    assert torch.allclose(read_ply(lifted / "point_cloud.ply").means, ours.means, atol=1e-4)
    metrics = json.loads((lifted / "metrics.json").read_text())
    assert metrics["psnr"] > MIN_PSNR - 2 and metrics["feature_cosine"] > MIN_COSINE, metrics


def test_text_prompt_in_nerfstudios_viewer(trained: Path, scene: dict) -> None:
    """ns-viewer in headless Chromium: a text prompt switches the output to the relevancy map,
    the render mode dropdown to the feature PCA and back to RGB."""
    port = free_port()
    viewer = subprocess.Popen(
        [str(BIN / "ns-viewer"), "--load-config", str(trained), "--viewer.websocket-host",
         "127.0.0.1", "--viewer.websocket-port", str(port)],
        cwd=scene["root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def serving() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(serving, 180, "ns-viewer serving")
        with browser_page(
            f"http://127.0.0.1:{port}/", width=1100, height=700, timeout_s=60
        ) as page:
            wait_for_gui_value(page, "Output type", "rgb", 120)  # set by the first render
            colour = canvas_screenshot(page).astype(np.float32)
            fill_text(page, "Text prompt", "chair", submit=True)  # relevancy, in feature_view
            wait_for_gui_value(page, "Output type", "feature_view", 60)
            select_dropdown(page, "Render mode", "pca")

            def shows_pca() -> bool:  # false colours everywhere, unlike the RGB frame
                return float(np.abs(canvas_screenshot(page) - colour).mean()) > 20

            wait_until(shows_pca, 60, "the feature PCA on the canvas")
            select_dropdown(page, "Render mode", "rgb")
            wait_for_gui_value(page, "Output type", "rgb", 60)
    finally:
        viewer.terminate()
        viewer.wait(30)
