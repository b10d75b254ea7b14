"""An on-disk cache of teacher features: one small file per image, never silently stale.

Layout: ``ROOT/<teacher name>-<hash of config_id>[-pca<k>-<dataset key>]/<image key>.npz``. Each file holds
the features of one image at the teacher's own resolution in float16 ([h, w, M], or [h, w, k] PCA
coefficients), with the teacher's full ``config_id`` and the image's content hash inside. A file
whose stored ids, shape or values do not check out is treated as missing and recomputed. Files are
written atomically, so a killed run leaves finished files and no half-written one; encoding again
resumes where it stopped.

With ``pca_dim = k`` the features are projected on a k-dimensional basis fitted once per dataset
(``pca.npz`` beside the files, keyed by the dataset's image hashes): the cache shrinks by M / k.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import Tensor

from feature_splat.errors import CheckpointError, ConfigError, InputShapeError
from feature_splat.io.files import write_npz
from feature_splat.io.npz_cache import ArraySpec, read_cached
from feature_splat.io.outputs import prepare_output
from feature_splat.teachers.base import Teacher

CACHE_KIND = "feature-cache"

FORMAT = 1
PCA_NAME = "pca.npz"


def image_hash(image: Tensor) -> str:
    """Content hash of an image [H, W, 3] or [3, H, W] in [0, 1], after rounding to 8 bits."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dataset_key(image_keys: list[str]) -> str:
    """Short key of a set of images (PCA bases are fitted per dataset)."""
    return hashlib.sha256("".join(image_keys).encode()).hexdigest()[:12]


class FeatureCache:
    """Teacher features of images, cached under ``root`` for one teacher (and PCA setting)."""

    def __init__(self, root: str | Path, teacher: Teacher, pca_dim: int | None = None) -> None:
        if pca_dim is not None and not 0 < pca_dim <= teacher.dim:
            raise InputShapeError(
                f"pca_dim: expected 1..{teacher.dim} (the teacher's width), got {pca_dim}"
            )
        self.teacher, self.pca_dim = teacher, pca_dim
        config_key = hashlib.sha256(teacher.config_id.encode()).hexdigest()[:16]
        self.root = Path(root) / f"{teacher.name}-{config_key}"

    # -- files ----------------------------------------------------------------------------------
    def _folder(self, dataset_key: str | None) -> Path:
        if self.pca_dim is None:
            return self.root
        return self.root.parent / f"{self.root.name}-pca{self.pca_dim}-{dataset_key}"

    def folder_of(self, images: Tensor) -> Path:
        """The folder holding the cache files of these images [V, H, W, 3]."""
        return self._folder(_dataset_key([image_hash(image) for image in images]))

    def size_bytes_of(self, images: Tensor) -> int:
        """Bytes on disk of the cache files of these images (PCA basis included)."""
        folder = self.folder_of(images)
        names = [f"{image_hash(image)}.npz" for image in images]
        if self.pca_dim is not None:
            names.append(PCA_NAME)
        return sum((folder / n).stat().st_size for n in names if (folder / n).is_file())

    def _ids(self, **more: object) -> dict[str, object]:
        return {"format": FORMAT, "config_id": self.teacher.config_id, **more}

    def _read(self, path: Path, key: str, channels: int) -> Tensor | None:
        """The stored array, or None when missing or not trustworthy (then it is recomputed)."""
        spec = ArraySpec((None, None, channels), np.float16, finite=True)
        arrays, _ = read_cached(path, self._ids(image=key), {"features": spec})
        return None if arrays is None else torch.from_numpy(arrays["features"].astype(np.float32))

    def _write(self, path: Path, key: str, values: Tensor) -> None:
        features = values.detach().cpu().numpy().astype(np.float16)
        ids = {name: np.array(value) for name, value in self._ids(image=key).items()}
        write_npz(path, {**ids, "features": features}, compress=False)

    def _clear(self, folder: Path, keys: list[str]) -> None:
        for key in keys:
            (folder / f"{key}.npz").unlink(missing_ok=True)
        (folder / PCA_NAME).unlink(missing_ok=True)

    # -- PCA ------------------------------------------------------------------------------------
    def _read_basis(self, folder: Path) -> tuple[Tensor, Tensor] | None:
        """The dataset's PCA (mean [M], basis [M, k]), or None if missing or not trustworthy."""
        dim, k = self.teacher.dim, self.pca_dim
        specs = {"mean": ArraySpec((dim,), finite=True), "basis": ArraySpec((dim, k), finite=True)}
        arrays, _ = read_cached(folder / PCA_NAME, self._ids(), specs)
        if arrays is None:
            return None
        return tuple(torch.from_numpy(arrays[n].astype(np.float32)) for n in ("mean", "basis"))

    def _fit_basis(self, folder: Path, sample: Tensor) -> tuple[Tensor, Tensor]:
        mean = sample.mean(0)
        _, _, basis = torch.pca_lowrank(sample - mean, q=self.pca_dim, center=False, niter=6)
        ids = {name: np.array(value) for name, value in self._ids().items()}
        write_npz(folder / PCA_NAME, {**ids, "mean": mean.numpy(), "basis": basis.numpy()},
                  compress=False)  # fmt: skip
        return mean, basis

    # -- the main entry point -------------------------------------------------------------------
    def encode(self, images: Tensor, batch: int = 8, show_progress: bool = True) -> Tensor:
        """Teacher features [V, h, w, M] of images [V, H, W, 3]: read from the cache, computing
        (in batches) and storing only what is missing or stale."""
        keys = [image_hash(image) for image in images]
        folder = self._folder(_dataset_key(keys))
        basis = self._read_basis(folder) if self.pca_dim is not None else None
        channels = self.teacher.dim if self.pca_dim is None else self.pca_dim
        stored: dict[int, Tensor] = {}
        if self.pca_dim is None or basis is not None:  # without its basis, coefficients are void
            for i, key in enumerate(keys):
                value = self._read(folder / f"{key}.npz", key, channels)
                if value is not None:
                    stored[i] = value
        # One dataset's images share a size, so its maps share a grid: a stored map with another
        # grid than the others (or than the teacher's fresh output) is damaged; recompute it.
        grids = Counter(value.shape[:2] for value in stored.values())
        if len(grids) > 1:
            grid = grids.most_common(1)[0][0]
            stored = {i: v for i, v in stored.items() if v.shape[:2] == grid}
        missing = [i for i in range(len(images)) if i not in stored]
        fresh: dict[int, Tensor] = {}
        batches = [missing[s : s + batch] for s in range(0, len(missing), batch)]
        for chunk in track(
            batches, description="teacher", disable=not show_progress or not batches
        ):
            encoded = self.teacher.encode(images[chunk].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            for i, value in zip(chunk, encoded, strict=True):
                fresh[i] = value.half().float()  # what a later read returns
                if self.pca_dim is None:
                    self._write(folder / f"{keys[i]}.npz", keys[i], value)
        if fresh and stored:
            grid = next(iter(fresh.values())).shape[:2]
            if next(iter(stored.values())).shape[:2] != grid:  # the stored ones were all damaged
                self._clear(folder, keys)
                return self.encode(images, batch, show_progress)
        if self.pca_dim is None:
            return torch.stack([stored[i] if i in stored else fresh[i] for i in range(len(images))])
        if basis is None:  # fit on every view of the dataset (all were recomputed above)
            basis = self._fit_basis(
                folder, torch.cat([v.reshape(-1, v.shape[-1]) for v in fresh.values()])
            )
        mean, vectors = basis
        coefficients = dict(stored)
        for i, value in fresh.items():
            coefficients[i] = ((value - mean) @ vectors).half().float()
            self._write(folder / f"{keys[i]}.npz", keys[i], coefficients[i])
        return torch.stack([coefficients[i] @ vectors.T + mean for i in range(len(keys))])


def pca_dim_of(folder: Path) -> int | None:
    """The PCA width k of a cache folder's stored coefficients (None: full-width features)."""
    path = folder / PCA_NAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return int(arrays["basis"].shape[-1])
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: not a PCA basis ({err})") from None


def read_cache_folder(folder: Path, images: Tensor, names: list[str]) -> tuple[Teacher, Tensor]:
    """The teacher record and the maps [V, h, w, M] of ``images`` [V, H, W, 3] (named ``names``)
    in a cache folder that ``feature-splat encode`` filled, with no teacher at hand: where
    another environment trains on the cache. A CheckpointError names the folder, and the first
    image without a valid map."""
    from feature_splat.teachers.stored import TEACHER_RECORD, StoredTeacher

    record = folder / TEACHER_RECORD
    if not record.is_file():
        raise CheckpointError(
            f"{folder}: no {TEACHER_RECORD}; expected a teacher folder of a feature cache, as "
            f"`feature-splat encode DATA --cache-dir DIR` prints it (DIR/<teacher>-<hash>)"
        )
    teacher = StoredTeacher(record, lambda: None)
    pca = folder / PCA_NAME
    cache = FeatureCache(folder.parent, teacher, pca_dim_of(folder))
    if cache.pca_dim is None and cache.root != folder:
        raise CheckpointError(f"{record}: its teacher is not the one this folder's name is for")
    basis = cache._read_basis(folder) if cache.pca_dim is not None else None
    if cache.pca_dim is not None and basis is None:
        raise CheckpointError(f"{pca}: not a PCA basis of this teacher's features")
    channels = teacher.dim if basis is None else cache.pca_dim
    maps = []
    for image, name in zip(images, names, strict=True):
        key = image_hash(image)
        value = cache._read(folder / f"{key}.npz", key, channels)
        if value is None:
            raise CheckpointError(
                f"{folder}: no valid features of image {name!r} (its pixels hash to {key[:12]}); "
                f"encode this dataset's images into the cache: feature-splat encode DATA "
                f"--teacher {teacher.name} --cache-dir {folder.parent}"
            )
        maps.append(value if basis is None else value @ basis[1].T + basis[0])
    return teacher, torch.stack(maps)


def encode_dataset(
    teacher: Teacher,
    images: Tensor,
    cache_dir: Path | None = None,
    pca_dim: int | None = None,
    *,
    dataset_root: Path | None = None,
    batch: int = 8,
) -> Tensor:
    """The teacher's features of every image [V, H, W, 3] as [V, h, w, M] float16: through the
    on-disk cache in ``cache_dir`` when given (an output folder: never inside ``dataset_root``),
    else computed in memory."""
    if cache_dir is not None:
        prepare_output(cache_dir, CACHE_KIND, inputs=[dataset_root])
        return FeatureCache(cache_dir, teacher, pca_dim).encode(images, batch).to(torch.float16)
    if pca_dim is not None:
        raise ConfigError("--teacher-pca: PCA storage is a cache option; give --cache-dir too")
    maps = []
    for start in track(range(0, len(images), batch), description="teacher", transient=True):
        chunk = images[start : start + batch].permute(0, 3, 1, 2)
        maps.append(teacher.encode(chunk).permute(0, 2, 3, 1).to(torch.float16))
    return torch.cat(maps)
