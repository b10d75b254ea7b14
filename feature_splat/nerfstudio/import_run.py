"""``feature-splat import-ns``: a finished ``ns-train feature-splat`` run as our run folder.

Reads the run's ``config.yml`` (YAML with Python tags, read as plain data: nothing is
constructed from it), its newest checkpoint (``weights_only``), ``dataparser_transforms.json``
and the teacher record of its feature cache; maps the Gaussians from nerfstudio's centred, scaled
and (with an orientation method) rotated frame back to the dataset's, turning their orientations
and SH colours with the rotation
(:func:`~feature_splat.data.nerfstudio.gaussians_to_dataset_frame`); and writes a run folder that
``query``, ``edit``, ``view``, ``render`` and ``eval`` open. Imports nothing from nerfstudio, so
it runs in the main environment, where the teachers are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from feature_splat.data.nerfstudio import gaussians_to_dataset_frame
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.errors import CheckpointError
from feature_splat.field import FeatureField
from feature_splat.io import atomic_write_bytes, write_json
from feature_splat.io.checkpoints import read_checkpoint
from feature_splat.io.feature_cache import pca_dim_of
from feature_splat.io.outputs import prepare_output
from feature_splat.near_field import scene_scale
from feature_splat.nerfstudio.params import (
    SPLATFACTO_PARAMS,
    gaussians_from_splatfacto,
    rendered_background,
)
from feature_splat.run_folder import (
    METRICS_NAME,
    RUN_KIND,
    SAM_DECODER_NAME,
    load_scene,
    resolved,
    write_manifest,
)
from feature_splat.teachers.stored import TEACHER_RECORD, StoredTeacher
from feature_splat.training.config import TrainConfig

METHOD_NAME = "feature-splat"
TRANSFORMS_NAME = "dataparser_transforms.json"


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader, reading nerfstudio's ``!!python/...`` tags as plain data."""


def _python_tag(loader: _PlainLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        if suffix.startswith("object/apply:pathlib."):
            return str(Path(*items)) if items else "."
        return items
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)


def read_nerfstudio_config(path: Path) -> dict[str, Any]:
    """nerfstudio's ``config.yml`` as nested dicts (classes by their fields, paths as text)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: not a readable nerfstudio config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a nerfstudio TrainerConfig")
    return data


def _entry(data: dict, dotted: str, source: Path) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise CheckpointError(
                f"{source}: {dotted}: missing (not a feature-splat nerfstudio run)"
            )
        value = value[key]
    return value


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest ``nerfstudio_models/step-*.ckpt`` of a nerfstudio run folder."""
    folder = run_dir / "nerfstudio_models"
    found = [
        (int(match.group(1)), path)
        for path in folder.glob("step-*.ckpt")
        if (match := re.fullmatch(r"step-(\d+)\.ckpt", path.name))
    ]
    if not found:
        raise CheckpointError(f"{folder}: no step-*.ckpt checkpoint (has the run saved one?)")
    return max(found)[1]


def _local_path(value: Any, base: Path, field: str, source: Path) -> Path:
    """A path from the config: as stored if absolute, else relative to ``base`` (where ns-train ran)."""
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{source}: {field}: expected a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _model_state(checkpoint: Path) -> tuple[dict[str, Any], int]:
    """The model's state dict in a nerfstudio checkpoint (keys without ``_model.``) and its step."""
    saved = read_checkpoint(checkpoint, "nerfstudio checkpoint")
    state = saved.get("pipeline") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}: pipeline: expected the pipeline's state dict")
    state = {key.removeprefix("module.").removeprefix("_model."): v for key, v in state.items()}
    missing = [f"gauss_params.{n}" for n in SPLATFACTO_PARAMS if f"gauss_params.{n}" not in state]
    if missing or "background" not in state:
        raise CheckpointError(
            f"{checkpoint}: missing {missing or ['background']} (not a feature-splat run)"
        )
    step = saved.get("step", 0)
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{checkpoint}: step: expected a whole number >= 0, got {step!r}")
    return state, step


def import_nerfstudio_run(
    config_path: Path,
    out: Path,
    *,
    data: str | Path | None = None,
    feature_cache: Path | None = None,
    features: Path | None = None,
    workdir: Path | None = None,
) -> tuple[Path, FeatureField]:
    """Write the run of nerfstudio's ``config_path`` as our run folder ``out``; returns the
    folder and the field. ``data`` (a folder, or a built-in world's name for a run trained on
    its export) and ``feature_cache`` override the paths in the config
    (relative ones there are relative to ``workdir``, by default the current folder, where
    ns-train ran); ``features`` is the precomputed teacher's folder when that is the teacher."""
    config_path = Path(config_path)
    cfg = read_nerfstudio_config(config_path)
    if cfg.get("method_name") != METHOD_NAME:
        raise CheckpointError(
            f"{config_path}: method_name: expected {METHOD_NAME!r}, got {cfg.get('method_name')!r}"
        )
    run_dir, base = config_path.parent, Path(workdir or Path.cwd())
    model = _entry(cfg, "pipeline.model", config_path)
    manager = _entry(cfg, "pipeline.datamanager", config_path)
    data = data or _local_path(manager.get("data"), base, "pipeline.datamanager.data", config_path)
    cache = feature_cache
    if cache is None and manager.get("feature_cache") is not None:
        cache = _local_path(manager["feature_cache"], base, "pipeline.datamanager.feature_cache",
                            config_path)  # fmt: skip
    checkpoint = latest_checkpoint(run_dir)
    state, step = _model_state(checkpoint)
    gaussians = gaussians_from_splatfacto(
        {n: state[f"gauss_params.{n}"].float() for n in SPLATFACTO_PARAMS}
    )
    gaussians = gaussians_to_dataset_frame(gaussians, run_dir / TRANSFORMS_NAME)
    gaussians.check_finite()
    feature_dim = gaussians.feature_dim
    teacher = None
    if feature_dim > 0:
        if cache is None:
            raise CheckpointError(
                f"{config_path}: the field has features but no feature cache is named"
            )
        teacher = StoredTeacher(cache / TEACHER_RECORD, lambda: None)
    decoder_state = {
        k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")
    }
    hidden = list(model.get("decoder_hidden") or []) if model.get("decoder") == "mlp" else []
    decoder = SpeedUpDecoder.from_state(
        {"in_dim": feature_dim, "out_dim": teacher.dim if teacher else 0, "hidden": hidden,
         "identity": feature_dim == 0},
        decoder_state, str(checkpoint),
    )  # fmt: skip
    config = resolved(
        TrainConfig(
            data=str(data),
            out=Path(out),
            teacher=teacher.name if teacher else "none",  # type: ignore[arg-type]
            features=features,
            teacher_dim=teacher.dim if teacher else 512,
            teacher_stride=teacher.stride if teacher else 8,
            cache_dir=cache.parent if cache is not None else None,
            teacher_pca=pca_dim_of(cache) if cache is not None else None,
            feature_dim=feature_dim,
            decoder="mlp" if hidden else "linear",
            decoder_hidden=tuple(hidden) or (128,),
            iterations=step + 1,
            feature_loss=model.get("feature_loss", "l1"),
            feature_weight=float(model.get("feature_weight", 1.0)),
            sh_degree=int(model.get("sh_degree", gaussians.sh_degree)),
            sh_degree_every=int(model.get("sh_degree_interval", 1000)),
            init=model.get("init", "auto"),
            near_plane=float(model.get("near_plane", 0.02)),
            seed=int(model.get("seed", 0)),
        )
    )
    dataset = load_scene(config)
    background = rendered_background(
        model.get("background_color", "learned"), state["background"].float()
    )
    field = FeatureField(
        gaussians, decoder, background, config.sh_degree,
        config.near_plane * scene_scale(dataset.cameras),
    )  # fmt: skip
    inputs = [dataset.root, run_dir, cache]
    folder = prepare_output(config.out, RUN_KIND, inputs=inputs)
    field.save(folder)
    write_manifest(folder, config, dataset)
    for name in (TEACHER_RECORD, SAM_DECODER_NAME):
        if cache is not None and (cache / name).is_file():
            atomic_write_bytes(folder / name, (cache / name).read_bytes())
    write_json(
        folder / METRICS_NAME,
        {"gaussians": len(gaussians), "iterations": config.iterations,
         "teacher_config_id": teacher.config_id if teacher else None,
         "imported_from": str(config_path.resolve())},
    )  # fmt: skip
    return folder, field
