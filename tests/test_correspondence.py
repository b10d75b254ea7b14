"""Keypoint transfer, PCK and part co-segmentation scored against independently known answers."""

from __future__ import annotations

import math

import pytest
import torch

from feature_splat.eval import (
    PCK_2D_THRESHOLDS_PX,
    PCK_3D_THRESHOLDS,
    accumulate_confusion,
    cosine_nearest,
    part_iou_from_confusion,
    part_miou,
    pck,
    pck_2d,
    pck_3d,
    sample_map,
    transfer_keypoints_2d,
    transfer_keypoints_3d,
    transfer_labels,
)


def _unit(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)


def _pixel_centres(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.stack([cols, rows], dim=1).double() + 0.5


# Nearest-feature search ---------------------------------------------------------------------------


def test_cosine_nearest_matches_brute_force_across_chunk_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(50, 5, generator=g, dtype=torch.float64)
    candidates = torch.randn(37, 5, generator=g, dtype=torch.float64)
    expected = []
    for q in queries:
        sims = [float(q @ c / (q.norm() * c.norm())) for c in candidates]
        expected.append(max(range(len(sims)), key=lambda i: (sims[i], -i)))
    for chunk in (1, 7, 49, 50, 51, 4096):
        assert cosine_nearest(queries, candidates, chunk=chunk).tolist() == expected
    # Cosine ignores the candidates' lengths.
    scales = torch.rand(37, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    assert cosine_nearest(queries, candidates * scales, chunk=7).tolist() == expected


def test_cosine_nearest_ties_and_zero_vectors() -> None:
    v = torch.tensor([0.6, -0.8, 0.0])
    candidates = torch.stack([torch.zeros(3), v, 2 * v, -v])
    queries = torch.stack([v, torch.zeros(3), -3 * v])
    # v ties with 2v (goes to the lower index); the zero query ties everywhere at 0.
    assert cosine_nearest(queries, candidates).tolist() == [1, 0, 3]
    assert cosine_nearest(torch.empty(0, 3), candidates).shape == (0,)
    with pytest.raises(ValueError):
        cosine_nearest(queries, torch.empty(0, 3))
    with pytest.raises(ValueError):
        cosine_nearest(queries, candidates, chunk=0)


# Sampling and 2D transfer -------------------------------------------------------------------------


def test_sample_map_exact_at_centres_linear_between_and_clamped_outside() -> None:
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(3, 4, 2, generator=g)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    centres = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1).float() + 0.5
    torch.testing.assert_close(sample_map(fmap, centres), fmap.reshape(12, 2))
    midway = torch.tensor([[2.0, 0.5], [1.5, 2.0], [3.0, 2.0]])  # x = 2 lies between cols 1 and 2
    expected = torch.stack(
        [
            (fmap[0, 1] + fmap[0, 2]) / 2,
            (fmap[1, 1] + fmap[2, 1]) / 2,
            (fmap[1, 2] + fmap[1, 3] + fmap[2, 2] + fmap[2, 3]) / 4,
        ]
    )
    torch.testing.assert_close(sample_map(fmap, midway), expected)
    quarter = sample_map(fmap, torch.tensor([[1.25, 0.5]]))[0]  # a quarter of the way to col 1
    torch.testing.assert_close(quarter, 0.25 * fmap[0, 0] + 0.75 * fmap[0, 1])
    outside = torch.tensor([[-3.0, 0.5], [100.0, 100.0], [0.0, 0.0]])
    torch.testing.assert_close(sample_map(fmap, outside), fmap[[0, 2, 0], [0, 3, 0]])


def test_transfer_keypoints_2d_returns_pixel_centres_and_honours_the_mask() -> None:
    fmap = torch.zeros(4, 5, 3)
    fmap[..., 2] = 1.0
    fmap[1, 3] = fmap[2, 0] = torch.tensor([1.0, 0.0, 0.0])
    query = torch.tensor([[2.0, 0.0, 0.0]])
    assert transfer_keypoints_2d(query, fmap).tolist() == [[3.5, 1.5]]  # first of the two matches
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3] = False
    assert transfer_keypoints_2d(query, fmap, mask).tolist() == [[0.5, 2.5]]


def test_ground_truth_features_transfer_2d_keypoints_perfectly() -> None:
    g = torch.Generator().manual_seed(2)
    size, dim, shift = 32, 16, (5, 3)
    object_features = _unit(14 * 12, dim, g).reshape(12, 14, dim)  # one vector per object point
    source, target = _unit(size * size, dim, g), _unit(size * size, dim, g)
    source, target = source.reshape(size, size, dim), target.reshape(size, size, dim)
    source[4:16, 6:20] = object_features
    target[4 + shift[1] : 16 + shift[1], 6 + shift[0] : 20 + shift[0]] = object_features
    target_mask = torch.zeros(size, size, dtype=torch.bool)
    target_mask[4 + shift[1] : 16 + shift[1], 6 + shift[0] : 20 + shift[0]] = True
    cols = torch.randint(6, 20, (40,), generator=g)
    rows = torch.randint(4, 16, (40,), generator=g)
    keypoints = torch.stack([cols, rows], dim=1).float() + 0.5
    truth = keypoints + torch.tensor(shift, dtype=torch.float32)
    predicted = transfer_keypoints_2d(sample_map(source, keypoints), target, target_mask)
    torch.testing.assert_close(predicted, truth)
    assert pck_2d(predicted, truth, size) == {t: 1.0 for t in PCK_2D_THRESHOLDS_PX}


def test_random_features_give_chance_2d_pck_of_the_mask_area_within_each_disc() -> None:
    g = torch.Generator().manual_seed(3)
    size, dim, n_queries = 128, 16, 4000
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[30:70, 40:80] = True
    target = _unit(size * size, dim, g).reshape(size, size, dim)
    queries = _unit(n_queries, dim, g)
    truth = torch.rand(n_queries, 2, generator=g, dtype=torch.float64) * 40
    truth += torch.tensor([40.0, 30.0], dtype=torch.float64)  # uniform over the masked square
    predicted = transfer_keypoints_2d(queries, target, mask)
    assert bool(mask[predicted[:, 1].long(), predicted[:, 0].long()].all())
    measured = pck_2d(predicted, truth, size)
    # A uniformly random masked pixel lands within r of a keypoint with probability
    # (masked pixel centres within r) / (masked pixels).
    distances = torch.cdist(truth, _pixel_centres(mask))
    for threshold in PCK_2D_THRESHOLDS_PX:
        expected = float((distances <= threshold).double().mean())
        assert measured[threshold] == pytest.approx(expected, abs=0.02)
    assert 0.05 < measured[10.0] < 0.5  # a non-trivial chance level


# 3D transfer --------------------------------------------------------------------------------------


def test_ground_truth_features_transfer_3d_keypoints_perfectly() -> None:
    g = torch.Generator().manual_seed(4)
    points = torch.rand(300, 3, generator=g) * torch.tensor([2.0, 1.0, 0.5])
    features = _unit(300, 24, g)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    moved = points @ rotation.T + torch.tensor([3.0, -1.0, 0.5])
    order = torch.randperm(300, generator=g)  # the target lists its points in another order
    picked = torch.randperm(300, generator=g)[:50]
    predicted = transfer_keypoints_3d(features[picked], moved[order], features[order])
    torch.testing.assert_close(predicted, moved[picked])
    size = float(torch.linalg.vector_norm(moved.amax(0) - moved.amin(0)))
    assert pck_3d(predicted, moved[picked], size) == {t: 1.0 for t in PCK_3D_THRESHOLDS}


# PCK on known errors ------------------------------------------------------------------------------


def test_pck_counts_errors_within_each_threshold() -> None:
    errors = torch.tensor([0.0, 1.0, 2.5, 3.0, 6.0, 12.0])
    assert pck(errors, PCK_2D_THRESHOLDS_PX) == {2.5: 3 / 6, 5.0: 4 / 6, 7.5: 5 / 6, 10.0: 5 / 6}
    assert pck(errors, (1.0, 3.0), scale=2.0) == {1.0: 2 / 6, 3.0: 5 / 6}
    empty = pck(torch.empty(0), PCK_2D_THRESHOLDS_PX)
    assert list(empty) == list(PCK_2D_THRESHOLDS_PX)
    assert all(math.isnan(v) for v in empty.values())


def test_pck_2d_scales_the_128_pixel_thresholds_with_the_image() -> None:
    truth = torch.full((6, 2), 20.0)
    offsets = torch.tensor(
        [[0.0, 0.0], [1.0, 0.0], [0.0, 2.5], [3.0, 4.0], [6.0, 0.0], [0.0, 12.0]]
    )
    predicted = truth + offsets  # errors 0, 1, 2.5, 5, 6, 12 pixels
    assert pck_2d(predicted, truth, 128) == {2.5: 3 / 6, 5.0: 4 / 6, 7.5: 5 / 6, 10.0: 5 / 6}
    # At 64 px the thresholds halve to 1.25, 2.5, 3.75 and 5 pixels.
    assert pck_2d(predicted, truth, 64) == {2.5: 2 / 6, 5.0: 3 / 6, 7.5: 3 / 6, 10.0: 4 / 6}
    # At 256 px they double to 5, 10, 15 and 20 pixels.
    assert pck_2d(predicted, truth, 256) == {2.5: 4 / 6, 5.0: 5 / 6, 7.5: 1.0, 10.0: 1.0}


def test_pck_3d_uses_fractions_of_one_or_per_query_object_sizes() -> None:
    truth = torch.zeros(3, 3)
    predicted = torch.tensor([[0.01, 0.0, 0.0], [0.0, 0.06, 0.0], [0.0, 0.0, 0.2]])
    assert pck_3d(predicted, truth, 1.0) == {0.025: 1 / 3, 0.05: 1 / 3, 0.075: 2 / 3, 0.1: 2 / 3}
    # Relative errors 0.01 / 0.125, 0.06 / 2 and 0.2 / 5: 0.08, 0.03 and 0.04.
    sizes = torch.tensor([0.125, 2.0, 5.0])
    assert pck_3d(predicted, truth, sizes) == {0.025: 0.0, 0.05: 2 / 3, 0.075: 2 / 3, 0.1: 1.0}


# Label transfer and part IoU ----------------------------------------------------------------------


def test_ground_truth_features_transfer_labels_perfectly() -> None:
    g = torch.Generator().manual_seed(5)
    points = torch.rand(500, 3, generator=g) * 2 - 1
    # Parts 1..4 by quadrant; points below z = -0.6 are background (0).
    labels = 1 + (points[:, 0] > 0).long() + 2 * (points[:, 1] > 0).long()
    labels[points[:, 2] < -0.6] = 0
    features = _unit(500, 32, g)
    order = torch.randperm(500, generator=g)
    predicted = transfer_labels(features, labels, features[order], chunk=64)
    assert torch.equal(predicted, labels[order])
    scores = part_miou(predicted, labels[order], 5)
    assert scores.miou == 1.0
    assert scores.per_part == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_random_features_give_chance_label_transfer() -> None:
    g = torch.Generator().manual_seed(6)
    n_labels, dim = 5, 8
    source_labels = torch.arange(2000) % n_labels  # equally frequent
    target_truth = torch.randint(0, n_labels, (20000,), generator=g)
    predicted = transfer_labels(_unit(2000, dim, g), source_labels, _unit(20000, dim, g))
    accuracy = float((predicted == target_truth).double().mean())
    assert accuracy == pytest.approx(1 / n_labels, abs=0.015)
    # Independent uniform labels: IoU = (1/L^2) / (2/L - 1/L^2) = 1 / (2L - 1) per part.
    scores = part_miou(predicted, target_truth, n_labels, ignore=None)
    assert scores.miou == pytest.approx(1 / (2 * n_labels - 1), abs=0.015)


def test_part_miou_by_hand_with_background_ignored() -> None:
    truth = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    predicted = torch.tensor([1, 2, 1, 1, 2, 2, 2, 0])
    scores = part_miou(predicted, truth, 3)
    # Background truth is skipped. Part 1: 2 hits, 3 true, 2 predicted -> 2 / 3;
    # part 2: 2 hits, 3 true, 3 predicted -> 2 / 4.
    assert scores.confusion.tolist() == [[0, 0, 0], [0, 2, 1], [1, 0, 2]]
    assert scores.confusion.dtype == torch.int64
    assert scores.per_part == pytest.approx({1: 2 / 3, 2: 2 / 4})
    assert scores.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Counting background as a part: IoU 0 for it, 2 / 4 for part 1 and 2 / 5 for part 2.
    counted = part_miou(predicted, truth, 3, ignore=None)
    assert counted.per_part == pytest.approx({0: 0.0, 1: 0.5, 2: 0.4})
    assert counted.miou == pytest.approx(0.3)


def test_part_miou_counts_parts_seen_only_in_the_prediction() -> None:
    truth = torch.tensor([[1, 1], [2, 2]])
    predicted = torch.tensor([[1, 3], [2, 2]])
    scores = part_miou(predicted, truth, 4)
    assert scores.per_part == pytest.approx({1: 0.5, 2: 1.0, 3: 0.0})
    assert scores.miou == pytest.approx(0.5)
    assert math.isnan(part_miou(torch.zeros(3), torch.zeros(3), 4).miou)
    with pytest.raises(ValueError):
        part_miou(torch.tensor([4]), torch.tensor([1]), 4)


def test_pooled_confusion_equals_concatenated_pairs() -> None:
    g = torch.Generator().manual_seed(7)
    pairs = [
        (torch.randint(0, 4, shape, generator=g), torch.randint(0, 4, shape, generator=g))
        for shape in ((6, 7), (50,))
    ]
    confusion = torch.zeros(4, 4, dtype=torch.long)
    for predicted, truth in pairs:
        confusion = accumulate_confusion(confusion, predicted, truth)
    pooled = part_iou_from_confusion(confusion)
    joined = part_miou(
        torch.cat([p.reshape(-1) for p, _ in pairs]),
        torch.cat([t.reshape(-1) for _, t in pairs]),
        4,
    )
    assert torch.equal(pooled.confusion, joined.confusion)
    assert pooled.miou == joined.miou
    assert pooled.per_part == joined.per_part
    assert int(confusion[0].sum()) == 0  # background truth skipped
