"""Text prompts, 3D selection, mask lifting and edits on a field whose answer is known by design:
a Gaussian carrying the 'chair' embedding on the left and one carrying 'table' on the right."""

from __future__ import annotations

import pytest
import torch

from feature_splat.cameras import Cameras, intrinsics, look_at
from feature_splat.data.synthetic import build_world, load_world
from feature_splat.decoders import SpeedUpDecoder
from feature_splat.edit import delete, extract, recolour
from feature_splat.errors import InputShapeError
from feature_splat.field import FeatureField
from feature_splat.gaussians import GaussianField
from feature_splat.prompts import gaussian_scores, relevancy, segment_labels, select_by_masks
from feature_splat.teachers.synthetic import SyntheticTeacher

W, H = 40, 24


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    world = load_world(
        "tabletop", width=48, height=36, n_views=8, cache_dir=tmp_path_factory.mktemp("w")
    )
    return SyntheticTeacher.for_dataset(world, dim=64)


@pytest.fixture(scope="module")
def field(teacher) -> FeatureField:
    texts = teacher.encode_text(["chair", "table"])
    gaussians = GaussianField.from_activated(
        means=torch.tensor([[-0.55, 0.0, 0.0], [0.55, 0.0, 0.0]]),
        scales=torch.full((2, 3), 0.22),
        opacities=torch.tensor([0.95, 0.95]),
        rgb=torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.2, 0.8]]),
        features=texts,
    )
    decoder = SpeedUpDecoder(64, 64, identity=True)
    return FeatureField(gaussians, decoder, torch.zeros(3 + 64), sh_degree=0)


@pytest.fixture(scope="module")
def camera() -> Cameras:
    viewmat = look_at(torch.tensor([0.0, -3.0, 0.0]), torch.zeros(3))
    return Cameras(viewmat, intrinsics(30.0, 30.0, W / 2, H / 2)[None], W, H)


# Pixels around each Gaussian's projected centre (u = 20 -/+ 30 * 0.55 / 3 = 14.5 / 25.5).
LEFT = (slice(None), slice(H // 2 - 2, H // 2 + 2), slice(12, 17))
RIGHT = (slice(None), slice(H // 2 - 2, H // 2 + 2), slice(24, 29))


def test_relevancy_and_labels_follow_the_embedded_classes(field, camera, teacher) -> None:
    chair = relevancy(field, camera, teacher, "chair")
    # Relevancy is relative to the negatives: ~1 where the query's own embedding is rendered, near
    # 0.5 (chance) on an unrelated class.
    assert float(chair[LEFT].min()) > 0.99 and float(chair[RIGHT].max()) < 0.8
    _, labels = segment_labels(field, camera, teacher, ["chair", "table"])
    assert bool((labels[LEFT] == 0).all()) and bool((labels[RIGHT] == 1).all())


def test_gaussian_scores_select_in_3d(field, teacher) -> None:
    scores = gaussian_scores(field, teacher, "armchair")  # a synonym
    assert float(scores[0]) > 0.99 and float(scores[1]) < 0.8
    cosine = gaussian_scores(field, teacher, "table", mode="cosine")
    assert float(cosine[1]) == pytest.approx(1.0, abs=1e-5) and float(cosine[0]) < 0.5


def test_a_2d_mask_lifts_to_the_gaussian_behind_it(field, camera) -> None:
    masks = torch.zeros(1, H, W, dtype=torch.bool)
    masks[:, :, : W // 2] = True
    assert select_by_masks(field, camera, masks).tolist() == [True, False]
    with pytest.raises(InputShapeError, match="masks"):
        select_by_masks(field, camera, masks[:, :, :5])


def test_edits_return_new_fields(field, camera) -> None:
    chosen = torch.tensor([True, False])
    assert torch.equal(delete(field, chosen).gaussians.means, field.gaussians.means[1:])
    assert torch.equal(extract(field, chosen).gaussians.means, field.gaussians.means[:1])
    green = recolour(field, chosen, (0.1, 0.9, 0.1))
    before, after = field.render(camera).rgb, green.render(camera).rgb
    assert float(after[LEFT][..., 1].mean()) > float(before[LEFT][..., 1].mean()) + 0.3
    torch.testing.assert_close(after[RIGHT], before[RIGHT])
    with pytest.raises(InputShapeError, match="selection"):
        delete(field, torch.tensor([1, 0]))
    nothing = torch.zeros(2, dtype=torch.bool)  # an empty selection is a valid answer
    assert torch.equal(delete(field, nothing).gaussians.means, field.gaussians.means)
    empty = extract(field, nothing)
    assert len(empty.gaussians) == 0
    torch.testing.assert_close(empty.render(camera).rgb, torch.zeros(1, H, W, 3))  # background


def test_selection_scores_on_known_labels() -> None:
    from feature_splat.eval.prompts import selection_scores

    labels = torch.tensor([3, 3, 3, 1, 1, -1])
    chosen = torch.tensor([True, True, False, True, False, True])
    scores = selection_scores(chosen, labels, 3)
    assert scores == {"precision": 2 / 3, "recall": 2 / 3, "selected": 4}
    # Several classes together are the truth of a prompt that means both ("something to sit on").
    both = selection_scores(chosen, labels, [3, 1])
    assert both == {"precision": 1.0, "recall": 3 / 5, "selected": 4}


def test_mask_iou_and_threshold_calibration_on_known_maps() -> None:
    from feature_splat.eval.prompts import best_threshold, mask_iou

    scores = torch.tensor([[0.9, 0.7, 0.4, 0.1]])
    truth = torch.tensor([[True, True, False, False]])
    assert mask_iou(scores, truth, 0.5) == 1.0
    assert mask_iou(scores, truth, 0.8) == 0.5  # one of the two true pixels
    assert mask_iou(scores, truth, 0.05) == 0.5  # all four chosen, two true
    assert mask_iou(scores, torch.zeros_like(truth), 0.95) == 0.0  # nothing chosen, nothing true
    # Two prompts whose masks want different thresholds: the grid value best for their mean wins.
    maps = torch.stack([scores, torch.tensor([[0.9, 0.3, 0.2, 0.1]])])
    truths = torch.stack([truth, torch.tensor([[True, False, False, False]])])
    grid = torch.tensor([0.05, 0.35, 0.5, 0.8])
    threshold, mean = best_threshold(maps, truths, grid)
    assert threshold == 0.5 and mean == 1.0


def test_prompts_and_deletion_meet_bars_on_a_small_world(tmp_path, monkeypatch) -> None:
    """A field trained briefly on the tabletop world, measured against the world's truth.

    Measured when written: 2D IoU (cosine) table 0.77 / chair 0.84; 3D precision 0.83 / 0.95 and
    recall 0.98 / 0.86; deletion PSNR inside / outside 29.6 / 28.8 dB (table); extraction PSNR
    18.8 / 18.2 dB against the class rendered alone, inside the class; outside it, against the
    empty background, 33.5 dB for the table (extracting everything: 8.4 dB).
    """
    from pathlib import Path

    from feature_splat.bench.prompts import PromptBenchConfig, run_prompt_bench
    from feature_splat.training.config import TrainConfig
    from feature_splat.training.run import train

    monkeypatch.setenv("FEATURE_SPLAT_CACHE", str(tmp_path))
    run = Path(tmp_path) / "run"
    # The conditions the bars were measured in: the random text space, L1, threshold 0.5.
    train(TrainConfig(data="tabletop", out=run, width=64, height=48, iterations=300, feature_dim=32,
                      init_points=3000, teacher_dim=128, feature_loss="l1"))  # fmt: skip
    report = run_prompt_bench(PromptBenchConfig(run=run, classes=("table", "chair"), threshold=0.5))
    for row in report["results"]:
        assert row["text_iou_2d_cosine"] > 0.65, row
        assert row["precision"] > 0.7 and row["recall"] > 0.75, row
        assert row["psnr_outside"] > 26.0 and row["psnr_inside_removed_region"] > 24.0, row
        assert row["extract_psnr_inside_class"] > 16.0, row
    # Outside the class the extraction must be empty: extracting everything is far worse there.
    from feature_splat.eval.prompts import extraction_psnr
    from feature_splat.run_folder import Run

    opened = Run(run)
    dataset = opened.dataset
    cameras = dataset.cameras[torch.tensor(dataset.test_indices)]
    alone = build_world("tabletop").only(["table"]).render(cameras)
    truth = {v: (alone["rgb"][i], alone["labels"][i]) for i, v in enumerate(dataset.test_indices)}
    everything = extraction_psnr(opened.field, dataset, opened.teacher, "table", truth, -1.0)
    table = report["results"][0]
    assert table["extract_psnr_outside_class"] > everything["extract_psnr_outside_class"] + 5.0

    # Paraphrases in the random text space: "desk" is a hand-written synonym of table, so it is
    # answered exactly as "table" is; a word no list holds is answered by nothing.
    from feature_splat.bench.text import TextBenchConfig, run_text_bench

    text = run_text_bench(TextBenchConfig(run=run, prompts=("desk=table", "zxqv=chair")))
    rows = {row["prompt"]: row for row in text["results"]}
    for score in ("relevancy", "cosine"):
        assert rows["desk"][f"iou_2d_{score}"] == rows["table"][f"iou_2d_{score}"] > 0.5
        assert rows["zxqv"][f"iou_2d_{score}"] < 0.1
    assert rows["desk"]["nearest_class_name"] == "table"
    assert (run / "bench_text" / "results.json").is_file()


def test_a_stored_teacher_asks_its_real_teacher_once_per_new_text(teacher, tmp_path) -> None:
    """Texts outside the saved vocabulary come from the real teacher, once each (the viewer asks
    for the same prompt every frame); the synthetic oracle's record names its text space, which
    then encodes them itself, and the real teacher is never built."""
    from feature_splat.teachers.stored import StoredTeacher, write_teacher_record

    asked: list[list[str]] = []

    class Counting:
        """The teacher, counting its text requests; without a text space of its own."""

        def __getattr__(self, name):
            if name == "text":
                raise AttributeError(name)
            return getattr(teacher, name)

        def encode_text(self, texts: list[str]) -> torch.Tensor:
            asked.append(list(texts))
            return teacher.encode_text(texts)

    record = write_teacher_record(tmp_path / "teacher.npz", Counting(), ["chair", "table"])
    stored = StoredTeacher(record, Counting)
    asked.clear()  # writing the record encoded its vocabulary
    torch.testing.assert_close(stored.encode_text(["table"]), teacher.encode_text(["table"]))
    assert asked == []  # in the vocabulary: from the record
    for _ in range(3):
        got = stored.encode_text(["armchair", "table"])
    torch.testing.assert_close(got, teacher.encode_text(["armchair", "table"]))
    assert asked == [["armchair", "table"]]

    own = write_teacher_record(tmp_path / "own.npz", teacher, [*teacher.class_names, "object"])
    unbuildable = StoredTeacher(own, lambda: None)
    texts = ["armchair", "a photo of a zxqv", "table"]
    torch.testing.assert_close(unbuildable.encode_text(texts), teacher.encode_text(texts))
