"""Run folders: what a training run writes, and the one loader every command that reads a run uses.

Layout::

    .feature-splat.json  marker: made by feature-splat for a "run" (or an "edit" of one)
    config.json       the TrainConfig, with absolute paths
    dataset.json      where the data came from, its views and splits, and a content fingerprint
    teacher.npz       the teacher's identity and text embeddings (commands need no weights)
    sam_decoder.pt    SAM runs: SAM's prompt encoder and mask decoder (point and box prompts)
    point_cloud.ply   3DGS fields + f_feat_0..F-1 (standard viewers show the RGB part)
    decoder.pt        speed-up decoder weights, background, SH degree
    metrics.json      held-out metrics (and the teacher that produced the targets)
    renders/*.png     per held-out view: truth | RGB | depth | feature PCA | text segmentation
    checkpoint.pt     full training state (resume with --resume)

Which data a run means is decided once, at training time, and stored resolved: a built-in world by
its name and seed, a folder by its absolute path. A name of a built-in world (``room``) always
means the world, even when a folder of that name is in the current directory; write ``./room``
for the folder. Every load checks the data against the stored fingerprint, so a run is never
evaluated, rendered or queried on data other than its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import Tensor

from feature_splat.data import Dataset
from feature_splat.errors import CheckpointError, ConfigError
from feature_splat.field import FeatureField
from feature_splat.io import atomic_write_bytes, write_json
from feature_splat.io.feature_cache import encode_dataset, image_hash
from feature_splat.io.files import read_json_object
from feature_splat.io.outputs import output_kind, prepare_output
from feature_splat.options import refuse_changed_settings
from feature_splat.teachers import Teacher
from feature_splat.teachers.factory import build_teacher
from feature_splat.teachers.stored import (
    TEACHER_RECORD,
    StoredTeacher,
    TeacherUnavailableError,
    vocabulary_of,
    write_teacher_record,
)
from feature_splat.training.config import TrainConfig

CONFIG_NAME = "config.json"
DATASET_NAME = "dataset.json"
METRICS_NAME = "metrics.json"
SAM_DECODER_NAME = "sam_decoder.pt"
RUN_KIND = "run"
EDIT_KIND = "edit"
# Settings a resumed run may change: they do not change what is trained, only for how long,
# how often it is saved, where it and its cache live, and which rasterizer backend runs it.
RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "resume", "backend", "out", "cache_dir")

_log = logging.getLogger(__name__)


def is_world_name(data: str) -> bool:
    """Whether ``data`` names a built-in world (those names win over folders, module docstring)."""
    from feature_splat.data.synthetic import WORLD_NAMES

    return data in WORLD_NAMES


def resolved(config: TrainConfig) -> TrainConfig:
    """``config`` with absolute paths (the data folder, a built-in world keeping its name, the
    run folder, the cache and the teacher's checkpoint) and the oracle's text space made definite
    (``auto`` becomes the space this machine gives, :func:`resolve_text_space`)."""
    from feature_splat.teachers.text_space import resolve_text_space

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(path).expanduser().resolve()

    data = config.data if is_world_name(config.data) else str(absolute(Path(config.data)))
    return dataclasses.replace(
        config,
        data=data,
        out=absolute(config.out),
        cache_dir=absolute(config.cache_dir),
        teacher_checkpoint=absolute(config.teacher_checkpoint),
        features=absolute(config.features),
        oracle_text=resolve_text_space(config.oracle_text, config.teacher_dim),
    )


def load_scene(config: TrainConfig) -> Dataset:
    """The dataset named by ``config.data``: a built-in world or a dataset folder."""
    from feature_splat.data.files import holdout_split
    from feature_splat.data.loading import load_dataset
    from feature_splat.data.synthetic import load_world

    if is_world_name(config.data):
        if Path(config.data).exists():
            _log.warning(
                "'%s' names the built-in world; the folder ./%s is not used (write ./%s for it)",
                config.data, config.data, config.data,
            )  # fmt: skip
        dataset = load_world(
            config.data, width=config.width, height=config.height, seed=config.world_seed
        )
    else:
        dataset = load_dataset(config.data, allow_outside_paths=config.allow_outside_paths)
    if config.test_views:
        return dataset.with_test_views(dataset.view_indices(config.test_views, "--test-views"))
    if config.holdout_every is not None:
        return dataset.with_test_views(holdout_split(len(dataset), config.holdout_every)[1])
    return dataset


def make_teacher(config: TrainConfig, dataset: Dataset) -> Teacher | None:
    """The teacher named by ``config.teacher``, set up for ``dataset`` (None: RGB only)."""
    if config.teacher == "none":
        return None
    return build_teacher(
        config.teacher,
        dataset,
        checkpoint=config.teacher_checkpoint,
        model=config.teacher_model,
        dim=config.teacher_dim,
        stride=config.teacher_stride,
        oracle_text=config.oracle_text,
        allow_torchscript=config.allow_torchscript,
        features=config.features,
        features_layout=config.features_layout,
    )


def write_teacher_files(folder: Path, teacher: Teacher, dataset: Dataset) -> None:
    """Save what commands need of ``teacher`` into ``folder`` (a run, or a feature cache):
    ``teacher.npz`` with the text embeddings of the dataset's label names and the canonical
    negatives (or of the precomputed labels), and for SAM its prompt decoder."""
    from feature_splat.prompts.text import CANONICAL_NEGATIVES

    vocabulary = vocabulary_of(teacher) or [*dataset.class_names, *CANONICAL_NEGATIVES]
    write_teacher_record(folder / TEACHER_RECORD, teacher, vocabulary)
    if teacher.name == "sam":  # point and box prompts then need no SAM weights
        teacher.save_prompt_decoder(folder / SAM_DECODER_NAME)


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of what training sees of a dataset: image content (8-bit), masks, cameras, names
    and splits."""
    digest = hashlib.sha256()
    layout = [dataset.width, dataset.height, dataset.image_names, dataset.train_indices,
              dataset.test_indices]  # fmt: skip
    digest.update(json.dumps(layout).encode())
    digest.update(dataset.cameras.viewmats.float().contiguous().numpy().tobytes())
    digest.update(dataset.cameras.Ks.float().contiguous().numpy().tobytes())
    for image in dataset.images:
        digest.update(image_hash(image).encode())
    if dataset.masks is not None:
        digest.update(dataset.masks.contiguous().numpy().tobytes())
    return digest.hexdigest()


def dataset_record(config: TrainConfig, dataset: Dataset) -> dict[str, Any]:
    """What ``dataset.json`` holds."""
    return {
        "source": config.data,
        "world_seed": config.world_seed if is_world_name(config.data) else None,
        "views": len(dataset),
        "width": dataset.width,
        "height": dataset.height,
        "train_views": len(dataset.train_indices),
        "test_views": len(dataset.test_indices),
        "held_out": [dataset.image_names[i] for i in dataset.test_indices],
        "fingerprint": dataset_fingerprint(dataset),
    }


def write_manifest(run_dir: Path, config: TrainConfig, dataset: Dataset) -> None:
    """Write ``config.json`` and ``dataset.json`` (``config`` with resolved paths)."""
    write_json(run_dir / DATASET_NAME, dataset_record(config, dataset))
    write_json(run_dir / CONFIG_NAME, config.to_dict())


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a started training run (marked, with its config written)."""
    return output_kind(folder) == RUN_KIND and (folder / CONFIG_NAME).is_file()


def read_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig stored in a run folder; any bad field is a CheckpointError naming it."""
    path = run_dir / CONFIG_NAME
    data = read_json_object(path)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: not a config this version can read ({err})") from None


def check_resume(run_dir: Path, config: TrainConfig, dataset: Dataset) -> None:
    """Refuse to resume a run with other data or model settings than it was started with."""
    stored = read_config(run_dir).to_dict()
    refuse_changed_settings(str(run_dir / CONFIG_NAME), stored, config.to_dict(), RESUMABLE_CHANGES)
    _check_data(run_dir, dataset)


def _check_data(run_dir: Path, dataset: Dataset) -> None:
    path = run_dir / DATASET_NAME
    record = read_json_object(path)
    if record.get("fingerprint") != dataset_fingerprint(dataset):
        raise CheckpointError(
            f"{path}: the data at {record.get('source')} is not what this run was trained on "
            f"(its content fingerprint differs: images, cameras, names or splits changed)"
        )


class Run:
    """A run folder opened for reading: its config at once; dataset, teacher and field on first use.

    ``allow_torchscript`` lets the teacher load an OpenAI TorchScript archive (code runs from it);
    it is never read from the folder.
    """

    def __init__(self, path: str | Path, *, allow_torchscript: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: run folder does not exist")
        if output_kind(self.path) not in (RUN_KIND, EDIT_KIND):
            raise CheckpointError(
                f"{self.path}: not a run folder (made by `feature-splat train` or `edit`)"
            )
        config = read_config(self.path)
        self.config = dataclasses.replace(config, allow_torchscript=allow_torchscript)

    @cached_property
    def dataset(self) -> Dataset:
        """The run's data, checked against its fingerprint."""
        dataset = load_scene(self.config)
        _check_data(self.path, dataset)
        return dataset

    @cached_property
    def teacher(self) -> Teacher | None:
        """The run's teacher as training saved it (:class:`StoredTeacher`; None for an RGB-only
        run). Its weights are loaded only for what the record does not hold."""
        if self.config.teacher == "none":
            return None
        record = self.path / TEACHER_RECORD
        if not record.is_file():  # a run from before teacher records
            return make_teacher(self.config, self.dataset)
        return StoredTeacher(record, lambda: make_teacher(self.config, self.dataset))

    def prompt_teacher(self) -> Teacher:
        """The teacher text prompts go through; an RGB-only run has none (a ConfigError)."""
        if self.teacher is None:
            raise ConfigError(
                f"{self.path}: trained with --teacher none (RGB only): it has no features to prompt"
            )
        return self.teacher

    def sam_teacher(self) -> Teacher:
        """SAM as point and box prompts need it: its prompt decoder saved with the run (no
        weights needed), else the teacher built from its checkpoint."""
        if self.config.teacher != "sam":
            raise ConfigError(f"{self.path}: point and box prompts need a field distilled from SAM")
        teacher = self.prompt_teacher()
        saved = self.path / SAM_DECODER_NAME
        if saved.is_file():
            from feature_splat.teachers.sam import SamTeacher

            sam = SamTeacher.from_prompt_decoder(saved)
            if sam.config_id != teacher.config_id:
                raise CheckpointError(f"{saved}: not the SAM this run was trained with")
            return sam
        return teacher.real if isinstance(teacher, StoredTeacher) else teacher

    def teacher_maps(self) -> Tensor | None:
        """The teacher's maps of every view, from the cache (or the teacher, if it can be
        built); None, with a logged reason, when neither has them."""
        teacher = self.teacher
        if teacher is None:
            return None
        config, dataset = self.config, self.dataset
        try:
            return encode_dataset(
                teacher, dataset.images, config.cache_dir, config.teacher_pca,
                dataset_root=dataset.root,
            )  # fmt: skip
        except TeacherUnavailableError as err:
            _log.warning("feature metrics skipped: %s", err)
            return None

    @cached_property
    def field(self) -> FeatureField:
        field = FeatureField.load(self.path)
        if field.gaussians.feature_dim != self.config.feature_dim:
            raise CheckpointError(
                f"{self.path / CONFIG_NAME}: feature_dim is {self.config.feature_dim}, but the "
                f"field's PLY has {field.gaussians.feature_dim} feature channels"
            )
        return field

    def save_field_as(self, field: FeatureField, out: Path) -> Path:
        """Write ``field`` (this run's, edited) as a new run folder at ``out`` that ``query``,
        ``edit``, ``render`` and ``view`` open as they open this one: the field, and this run's
        config, dataset record, teacher record and SAM decoder. ``out`` may be neither this run
        folder nor inside it, nor inside its dataset."""
        out = prepare_output(out, EDIT_KIND, inputs=[self.dataset.root, self.path])
        field.save(out)
        for name in (CONFIG_NAME, DATASET_NAME, TEACHER_RECORD, SAM_DECODER_NAME):
            if (self.path / name).is_file():
                atomic_write_bytes(out / name, (self.path / name).read_bytes())
        return out

    def views(self, chosen: list[int]) -> list[int]:
        """``chosen`` dataset view indices (default: the held-out views), range-checked."""
        dataset = self.dataset
        views = chosen or dataset.test_indices
        bad = [v for v in views if not 0 <= v < len(dataset)]
        if bad:
            raise ConfigError(f"--views: indices {bad} outside 0..{len(dataset) - 1}")
        if not views:
            raise ConfigError(f"--views: {self.path} has no held-out views; name views to use")
        return views
