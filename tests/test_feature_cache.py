"""The teacher-feature cache: reuse, staleness, corruption, resumption, PCA storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feature_splat.data.synthetic import load_world
from feature_splat.errors import InputShapeError
from feature_splat.eval import segment_by_text
from feature_splat.io.feature_cache import FeatureCache, image_hash
from feature_splat.teachers.synthetic import SyntheticTeacher


class CountingTeacher:
    """Wraps a teacher and counts the images it is asked to encode."""

    def __init__(self, teacher: SyntheticTeacher) -> None:
        self.inner, self.encoded = teacher, 0
        self.name, self.dim, self.stride = teacher.name, teacher.dim, teacher.stride
        self.language_aligned, self.config_id = True, teacher.config_id

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encoded += len(images)
        return self.inner.encode(images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.inner.encode_text(texts)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return load_world("tabletop", width=48, height=36, n_views=8,
                      cache_dir=tmp_path_factory.mktemp("worlds"))  # fmt: skip


def test_cache_reuses_detects_stale_and_corrupt_files(world, tmp_path) -> None:
    teacher = CountingTeacher(SyntheticTeacher.for_dataset(world, dim=64))
    cache = FeatureCache(tmp_path, teacher)
    first = cache.encode(world.images, show_progress=False)
    direct = teacher.inner.encode(world.images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(first, direct.half().float())
    assert teacher.encoded == 8 and len(list(cache.folder_of(world.images).glob("*.npz"))) == 8

    again = cache.encode(world.images, show_progress=False)
    assert teacher.encoded == 8 and torch.equal(again, first)

    folder = cache.folder_of(world.images)
    key0, key1 = image_hash(world.images[0]), image_hash(world.images[1])
    (folder / f"{key0}.npz").write_bytes(b"PK\x03\x04 truncated")  # corrupt
    with np.load(folder / f"{key1}.npz") as data:  # stale: another teacher configuration
        np.savez(folder / f"{key1}.npz", **{**dict(data), "config_id": np.array("other")})
    (folder / ".half-written.npz.tmp").write_bytes(b"partial")  # what a kill leaves behind
    third = cache.encode(world.images, show_progress=False)
    assert teacher.encoded == 10 and torch.equal(third, first)

    key2 = image_hash(world.images[2])
    with np.load(folder / f"{key2}.npz") as data:  # right ids, damaged grid (one row of cells)
        np.savez(folder / f"{key2}.npz", **{**dict(data), "features": data["features"][:1]})
    fourth = cache.encode(world.images, show_progress=False)
    assert teacher.encoded == 11 and torch.equal(fourth, first)


def test_encoding_resumes_after_an_interruption(world, tmp_path) -> None:
    teacher = CountingTeacher(SyntheticTeacher.for_dataset(world, dim=64))
    cache = FeatureCache(tmp_path, teacher)
    cache.encode(world.images[:5], show_progress=False)  # the run was killed after 5 views
    cache.encode(world.images, show_progress=False)
    assert teacher.encoded == 8


def test_pca_storage_is_smaller_and_keeps_the_segmentation(world, tmp_path) -> None:
    teacher = SyntheticTeacher.for_dataset(world)  # 512 channels
    full = FeatureCache(tmp_path, teacher).encode(world.images, show_progress=False)
    pca_cache = FeatureCache(tmp_path, teacher, pca_dim=16)
    reduced = pca_cache.encode(world.images, show_progress=False)
    assert torch.equal(pca_cache.encode(world.images, show_progress=False), reduced)
    text = teacher.encode_text(world.class_names)
    agreement = (segment_by_text(full, text) == segment_by_text(reduced, text)).float().mean()
    assert float(agreement) > 0.99
    full_bytes = FeatureCache(tmp_path, teacher).size_bytes_of(world.images)
    folder = pca_cache.folder_of(world.images)
    per_image = sum(p.stat().st_size for p in folder.glob("*.npz") if p.name != "pca.npz")
    assert per_image < full_bytes / 10  # plus one basis per dataset (pca.npz)
    with pytest.raises(InputShapeError, match="pca_dim"):
        FeatureCache(tmp_path, teacher, pca_dim=0)


@pytest.mark.parametrize("pca", [None, 6])
def test_a_cache_folder_is_read_without_the_teacher(world, tmp_path, pca) -> None:
    """What another environment (ns-train feature-splat) reads: the maps `encode` stored and the
    teacher record beside them, in any order of the images; a missing map names its image."""
    from feature_splat.errors import CheckpointError
    from feature_splat.io.feature_cache import read_cache_folder
    from feature_splat.run_folder import write_teacher_files

    teacher = SyntheticTeacher.for_dataset(world, dim=32, stride=8)
    cache = FeatureCache(tmp_path, teacher, pca)
    expected = cache.encode(world.images, show_progress=False)
    folder = cache.folder_of(world.images)
    write_teacher_files(folder, teacher, world)
    order = torch.randperm(len(world), generator=torch.Generator().manual_seed(0))
    names = [world.image_names[i] for i in order]
    stored, maps = read_cache_folder(folder, world.images[order], names)
    assert stored.config_id == teacher.config_id and stored.dim == 32
    assert torch.allclose(maps, expected[order], atol=1e-6)
    (folder / f"{image_hash(world.images[order[3]])}.npz").unlink()
    with pytest.raises(CheckpointError, match=repr(names[3])):
        read_cache_folder(folder, world.images[order], names)
