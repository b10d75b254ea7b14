"""`feature-splat import-ns` on nerfstudio run folders this test writes itself (no nerfstudio).

The folder mimics what ``ns-train feature-splat`` writes: a ``config.yml`` with Python tags, a
``dataparser_transforms.json`` that centres and scales (and, in one test, rotates), and a
checkpoint with optimiser and scheduler states beside the pipeline's. The truth is analytic: the
Gaussians are made in the dataset's frame and moved into nerfstudio's, so the import must give
them back, and render as they did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_errors import cli_error

from feature_splat.cameras import Cameras
from feature_splat.cli import main
from feature_splat.data.nerfstudio import export_nerfstudio
from feature_splat.data.synthetic import load_world
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField, quat_to_rotmat
from feature_splat.io.feature_cache import FeatureCache
from feature_splat.nerfstudio.import_run import import_nerfstudio_run, read_nerfstudio_config
from feature_splat.nerfstudio.params import splatfacto_params
from feature_splat.run_folder import Run, make_teacher
from feature_splat.training.config import TrainConfig

WIDTH, HEIGHT, TEACHER_DIM, FEATURES = 64, 48, 16, 4
SHIFT, SCALE = torch.tensor([0.4, -1.1, 0.25], dtype=torch.float64), 0.37


def _config_yml(data: Path, cache: Path, method: str = "feature-splat") -> str:
    def path(p: Path) -> str:
        parts = "\n".join(f"      - {part}" for part in p.parts)
        return f"!!python/object/apply:pathlib.PosixPath\n{parts}"

    return f"""!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
method_name: {method}
evil: !!python/object/apply:os.system
- touch PWNED
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  datamanager: !!python/object:feature_splat.nerfstudio.datamanager.FeatureDataManagerConfig
    data: {path(data)}
    feature_cache: {path(cache)}
  model: !!python/object:feature_splat.nerfstudio.model.FeatureSplatModelConfig
    background_color: learned
    decoder: linear
    decoder_hidden: !!python/tuple
    - 128
    near_plane: 0.02
    sh_degree: 1
    sh_degree_interval: 1000
"""


def _world_gaussians(n: int = 300) -> GaussianField:
    """Gaussians in the world's frame, around where room's cameras look."""
    g = torch.Generator().manual_seed(3)
    world = load_world("room", width=WIDTH, height=HEIGHT)
    pick = torch.randperm(len(world.points), generator=g)[:n]
    return GaussianField(
        means=world.points[pick].float(),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        log_scales=torch.full((n, 3), math.log(0.06)) + 0.2 * torch.randn(n, 3, generator=g),
        logit_opacities=torch.randn(n, generator=g) + 1.0,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=0.3 * torch.randn(n, 3, 3, generator=g),
        features=torch.randn(n, FEATURES, generator=g),
    )


def _write_checkpoint(
    run_dir: Path, moved: GaussianField, decoder: SpeedUpDecoder, background: torch.Tensor
) -> None:
    state = {f"_model.gauss_params.{k}": v for k, v in splatfacto_params(moved).items()}
    state |= {f"_model.decoder.{k}": v for k, v in decoder.state_dict().items()}
    state["_model.background"] = background
    torch.save(
        {"step": 99, "pipeline": state,
         "schedulers": {"means": {"_last_lr": [1.6e-4], "base_lrs": [1.6e-4]}}},
        run_dir / "nerfstudio_models" / "step-000000099.ckpt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def ns_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A nerfstudio run folder of room (exported), its feature cache, and the truth."""
    root = tmp_path_factory.mktemp("ns")
    world = load_world("room", width=WIDTH, height=HEIGHT)
    data = export_nerfstudio(world, root / "room")
    main(["encode", "room", "--width", str(WIDTH), "--height", str(HEIGHT),
          "--teacher-dim", str(TEACHER_DIM), "--cache-dir", str(root / "cache")])  # fmt: skip
    config = TrainConfig(data="room", teacher_dim=TEACHER_DIM, width=WIDTH, height=HEIGHT)
    cache = FeatureCache(root / "cache", make_teacher(config, world)).folder_of(world.images)
    gaussians = _world_gaussians()
    decoder = SpeedUpDecoder(FEATURES, TEACHER_DIM)
    background = torch.rand(3 + FEATURES, generator=torch.Generator().manual_seed(4))
    moved = GaussianField(
        **{
            **gaussians.__dict__,
            "means": (SCALE * (gaussians.means.double() + SHIFT)).float(),
            "log_scales": gaussians.log_scales + math.log(SCALE),
        }
    )
    run_dir = root / "outputs" / "room" / "feature-splat" / "2026-12-01_000000"
    (run_dir / "nerfstudio_models").mkdir(parents=True)
    (run_dir / "config.yml").write_text(_config_yml(data, cache))
    transform = torch.cat([torch.eye(3, dtype=torch.float64), SHIFT[:, None]], dim=1)
    (run_dir / "dataparser_transforms.json").write_text(
        json.dumps({"transform": transform.tolist(), "scale": SCALE})
    )
    _write_checkpoint(run_dir, moved, decoder, background)
    return {"root": root, "config": run_dir / "config.yml", "world": world, "moved": moved,
            "gaussians": gaussians, "decoder": decoder, "background": background}  # fmt: skip


def test_config_tags_are_read_as_data_never_run(ns_run: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = read_nerfstudio_config(ns_run["config"])
    assert cfg["evil"] == ["touch PWNED"] and not (tmp_path / "PWNED").exists()
    assert cfg["pipeline"]["model"]["decoder_hidden"] == [128]
    assert Path(cfg["pipeline"]["datamanager"]["data"]) == ns_run["root"] / "room"


def test_import_maps_back_to_the_dataset_frame(ns_run: dict, tmp_path: Path) -> None:
    folder, field = import_nerfstudio_run(ns_run["config"], tmp_path / "run")
    truth = ns_run["gaussians"]
    assert torch.allclose(field.gaussians.means, truth.means, atol=1e-5)
    assert torch.allclose(field.gaussians.log_scales, truth.log_scales, atol=1e-5)
    assert torch.equal(field.gaussians.features, truth.features)
    # Seen by a dataset camera, the imported field renders as the moved one does from the
    # same camera moved into nerfstudio's frame (centre s (c + t), same orientation).
    camera = ns_run["world"].cameras[5]
    camtoworld = camera.camtoworlds.double().clone()
    camtoworld[:, :3, 3] = SCALE * (camtoworld[:, :3, 3] + SHIFT)
    moved_camera = Cameras(torch.linalg.inv(camtoworld).float(), camera.Ks, WIDTH, HEIGHT)
    near = field.near_plane
    theirs = FeatureField(ns_run["moved"], ns_run["decoder"], ns_run["background"], 1, near * SCALE)
    ours, expected = field.render(camera), theirs.render(moved_camera)
    assert float(ours.alpha.mean()) > 0.05  # the view sees the Gaussians
    assert torch.allclose(ours.rgb, expected.rgb, atol=2e-4)
    assert torch.allclose(ours.features, expected.features, atol=2e-4)
    # An ordinary run folder: its dataset, teacher record (from the cache) and field open.
    run = Run(folder)
    assert run.teacher is not None and run.teacher.dim == TEACHER_DIM
    assert run.field.gaussians.feature_dim == FEATURES
    assert run.teacher_maps() is not None  # the cache the nerfstudio run read
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["imported_from"] == str(ns_run["config"].resolve())


def test_imported_run_answers_commands(ns_run: dict, tmp_path: Path, capsys) -> None:
    main(["import-ns", str(ns_run["config"]), str(tmp_path / "run")])
    assert "300 Gaussians (4 feature channels)" in capsys.readouterr().out
    main(["query", str(tmp_path / "run"), "--text", "chair", "--out", str(tmp_path / "q")])
    assert json.loads((tmp_path / "q" / "query.json").read_text())["gaussians"] == 300
    main(["eval", str(tmp_path / "run")])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"psnr", "feature_cosine"} <= set(metrics) and "imported_from" in metrics


def test_import_undoes_a_rotation(ns_run: dict, tmp_path: Path) -> None:
    # A run nerfstudio re-oriented (orientation-method up): x_ns = s (R x + t) with a rotation.
    rotation = quat_to_rotmat(torch.tensor([0.8, 0.3, -0.4, 0.35], dtype=torch.float64))
    copy = _copy_run(ns_run, tmp_path)
    transform = torch.cat([rotation, SHIFT[:, None]], dim=1)
    (copy / "dataparser_transforms.json").write_text(
        json.dumps({"transform": transform.tolist(), "scale": SCALE})
    )
    truth = ns_run["gaussians"]
    moved = truth.transformed(rotation, SCALE * SHIFT, SCALE)
    _write_checkpoint(copy, moved, ns_run["decoder"], ns_run["background"])
    _, field = import_nerfstudio_run(copy / "config.yml", tmp_path / "run")
    got = field.gaussians
    assert torch.allclose(got.means, truth.means, atol=1e-5)
    assert torch.allclose(got.log_scales, truth.log_scales, atol=1e-5)
    assert torch.allclose(quat_to_rotmat(got.quats), quat_to_rotmat(truth.quats), atol=1e-5)
    assert torch.allclose(got.shN, truth.shN, atol=1e-5)
    assert torch.equal(got.features, truth.features)
    # The dataset camera, moved into nerfstudio's frame (orientation R Rc, centre s (R c + t)),
    # sees the trained field as the dataset camera sees the imported one.
    camera = ns_run["world"].cameras[5]
    camtoworld = camera.camtoworlds.double().clone()
    camtoworld[:, :3, :3] = rotation @ camtoworld[:, :3, :3]
    camtoworld[:, :3, 3] = SCALE * (camtoworld[:, :3, 3] @ rotation.T + SHIFT)
    moved_camera = Cameras(torch.linalg.inv(camtoworld).float(), camera.Ks, WIDTH, HEIGHT)
    near = field.near_plane
    theirs = FeatureField(moved, ns_run["decoder"], ns_run["background"], 1, near * SCALE)
    ours, expected = field.render(camera), theirs.render(moved_camera)
    assert float(ours.alpha.mean()) > 0.05
    assert torch.allclose(ours.rgb, expected.rgb, atol=2e-4)
    assert torch.allclose(ours.features, expected.features, atol=2e-4)


def _copy_run(ns_run: dict, tmp_path: Path) -> Path:
    source = ns_run["config"].parent
    target = tmp_path / "copy"
    (target / "nerfstudio_models").mkdir(parents=True)
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def test_refusals_name_the_file(ns_run: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    copy = _copy_run(ns_run, tmp_path)
    transforms = copy / "dataparser_transforms.json"
    sheared = {"transform": [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "scale": 1.0}
    transforms.write_text(json.dumps(sheared))
    line = cli_error(["import-ns", str(copy / "config.yml"), "out"], capsys)
    assert str(transforms) in line and "transform" in line and "sheared" in line
    transforms.write_text(json.dumps({"transform": sheared["transform"][:2], "scale": 0}))
    line = cli_error(["import-ns", str(copy / "config.yml"), "out"], capsys)
    assert str(transforms) in line and "transform" in line
    transforms.write_text((ns_run["config"].parent / transforms.name).read_text())

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "PWNED",))

    checkpoint = copy / "nerfstudio_models" / "step-000000099.ckpt"
    torch.save({"step": 1, "pipeline": {"x": RunsCode()}}, checkpoint)
    line = cli_error(["import-ns", str(copy / "config.yml"), "out"], capsys)
    assert str(checkpoint) in line and "refused" in line and not (tmp_path / "PWNED").exists()
    checkpoint.unlink()
    assert "no step-*.ckpt" in cli_error(["import-ns", str(copy / "config.yml"), "out"], capsys)

    other = copy / "config.yml"
    other.write_text(_config_yml(ns_run["root"] / "room", ns_run["root"], method="splatfacto"))
    line = cli_error(["import-ns", str(other), "out"], capsys)
    assert "method_name" in line and "splatfacto" in line
    assert not (tmp_path / "out").exists()
