"""Per-subject 3D metrics against hand-computed volumes, and rebuilding subjects from slices."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from lesionseg.evaluation import METRIC_NAMES, SubjectAccumulator, subject_metrics, summarize_subjects


def volume(shape: tuple[int, int, int], *boxes: tuple[slice, slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


def test_both_empty_is_a_perfect_score_with_atlas_zero_precision_and_recall() -> None:
    empty = np.zeros((2, 4, 4), dtype=bool)
    assert subject_metrics(empty, empty) == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 0.0,
        "recall": 0.0,
        "hd95": 0.0,
        "asd": 0.0,
        "volume_difference": 0.0,
        "lesion_count_difference": 0.0,
        "lesion_f1": 1.0,
    }


def test_missed_lesion_and_false_alarm_score_zero() -> None:
    empty = np.zeros((2, 4, 4), dtype=bool)
    lesion = volume((2, 4, 4), np.s_[0, 0:1, 0:3])
    missed = subject_metrics(pred=empty, target=lesion)
    false_alarm = subject_metrics(pred=lesion, target=empty)
    for metrics in (missed, false_alarm):
        # Surface distances to an empty mask are undefined: NaN (the stated policy).
        assert math.isnan(metrics.pop("hd95")) and math.isnan(metrics.pop("asd"))
        assert metrics == {
            "dice": 0.0,
            "iou": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "volume_difference": 3.0,
            "lesion_count_difference": 1.0,
            "lesion_f1": 0.0,
        }


def test_one_prediction_covering_one_of_two_lesions() -> None:
    # Label: lesion A (4 voxels) and lesion B (2 voxels). Prediction: A plus 2 voxels next to it.
    target = volume((2, 4, 6), np.s_[0, 0:2, 0:2], np.s_[1, 3, 4:6])
    pred = volume((2, 4, 6), np.s_[0, 0:2, 0:3])
    metrics = subject_metrics(pred, target)
    # tp = 4, fp = 2, fn = 2 voxels; lesions: A found, B missed, no false lesion.
    assert metrics["dice"] == pytest.approx(8 / 12)
    assert metrics["iou"] == pytest.approx(4 / 8)
    assert metrics["precision"] == pytest.approx(4 / 6)
    assert metrics["recall"] == pytest.approx(4 / 6)
    assert metrics["volume_difference"] == 0.0
    assert metrics["lesion_count_difference"] == 1.0
    assert metrics["lesion_f1"] == pytest.approx(1 / (1 + 1 / 2))


def test_partial_overlap_and_a_false_positive_lesion() -> None:
    # Label: a 2x2x2 cube (8 voxels). Prediction: a 1x2x4 bar over half the cube (4 hit, 4 miss)
    # plus one isolated voxel: 9 voxels in 2 lesions.
    target = volume((2, 4, 6), np.s_[0:2, 0:2, 0:2])
    pred = volume((2, 4, 6), np.s_[1, 0:2, 0:4], np.s_[0, 3, 5])
    metrics = subject_metrics(pred, target)
    # tp = 4, fp = 5, fn = 4 voxels; lesions: the cube found, the isolated voxel a false positive.
    assert metrics["dice"] == pytest.approx(8 / 17)
    assert metrics["iou"] == pytest.approx(4 / 13)
    assert metrics["precision"] == pytest.approx(4 / 9)
    assert metrics["recall"] == pytest.approx(4 / 8)
    assert metrics["volume_difference"] == 1.0
    assert metrics["lesion_count_difference"] == 1.0
    assert metrics["lesion_f1"] == pytest.approx(1 / (1 + 1 / 2))


def test_diagonal_neighbours_are_separate_lesions() -> None:
    """scipy.ndimage.label's default connectivity: voxels sharing only an edge do not connect."""
    target = volume((1, 2, 2), np.s_[0, 0, 0], np.s_[0, 1, 1])
    pred = volume((1, 2, 2), np.s_[0, 0, 0])
    metrics = subject_metrics(pred, target)
    assert metrics["lesion_count_difference"] == 1.0
    assert metrics["lesion_f1"] == pytest.approx(1 / (1 + 1 / 2))


def test_mismatched_shapes_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"3D volumes of one shape, got \(2, 4, 4\) and \(2, 4, 5\)"):
        subject_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def random_subjects(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {subject: (rng.random((depth, 6, 5)) > 0.6, rng.random((depth, 6, 5)) > 0.7) for subject, depth in (("sub-b", 4), ("sub-a", 7), ("sub-c", 3))}


def stream_shuffled(accumulator: SubjectAccumulator, subjects: dict, batch_size: int = 3, seed: int = 0) -> None:
    """Feed every slice of every subject in a random order, in batches mixing subjects."""
    items = [(subject, index) for subject, (pred, _) in subjects.items() for index in range(len(pred))]
    random.Random(seed).shuffle(items)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        accumulator.add(
            [subject for subject, _ in batch],
            torch.tensor([index for _, index in batch]),
            torch.from_numpy(np.stack([subjects[subject][0][index] for subject, index in batch])).long(),
            torch.from_numpy(np.stack([subjects[subject][1][index] for subject, index in batch])).long(),
        )


def test_accumulator_rebuilds_shuffled_subjects_and_scores_them() -> None:
    subjects = random_subjects(seed=1)
    accumulator = SubjectAccumulator()
    stream_shuffled(accumulator, subjects)

    volumes = accumulator.volumes()
    assert list(volumes) == ["sub-a", "sub-b", "sub-c"]
    for subject, (pred, target) in subjects.items():
        assert volumes[subject][0].dtype == bool
        np.testing.assert_array_equal(volumes[subject][0], pred)
        np.testing.assert_array_equal(volumes[subject][1], target)

    table = accumulator.compute()
    assert list(table.columns) == ["subject", *METRIC_NAMES]
    assert list(table["subject"]) == ["sub-a", "sub-b", "sub-c"]
    expected = pd.DataFrame([subject_metrics(*subjects[name]) for name in ["sub-a", "sub-b", "sub-c"]])
    pd.testing.assert_frame_equal(table[list(METRIC_NAMES)], expected[list(METRIC_NAMES)])

    summary = accumulator.summary(table)
    assert summary["dice"] == pytest.approx(expected["dice"].mean())
    assert summary["dice_std"] == pytest.approx(np.std(expected["dice"], ddof=1))
    assert set(summary) == {*METRIC_NAMES, *(f"{name}_std" for name in METRIC_NAMES)}


def test_summary_of_one_subject_has_undefined_std_and_of_none_is_an_error() -> None:
    one = pd.DataFrame([{"subject": "s", **subject_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)))}])
    summary = summarize_subjects(one)
    assert summary["dice"] == 1.0
    assert math.isnan(summary["dice_std"])
    with pytest.raises(ValueError, match="at least one subject"):
        summarize_subjects(one.iloc[:0])


def add_slices(accumulator: SubjectAccumulator, subject: str, indices: list[int], labelled: bool = True) -> None:
    masks = torch.zeros(len(indices), 4, 4, dtype=torch.bool)
    accumulator.add([subject] * len(indices), torch.tensor(indices), masks, masks if labelled else None)


def test_missing_slice_is_an_error_naming_the_subject() -> None:
    accumulator = SubjectAccumulator()
    add_slices(accumulator, "sub-ok", [0, 1, 2])
    add_slices(accumulator, "sub-gap", [3, 0])
    add_slices(accumulator, "sub-gap", [1])
    with pytest.raises(ValueError, match=r"subject 'sub-gap': slice index \[2\] missing"):
        accumulator.volumes()


def test_duplicated_slice_is_an_error_naming_the_subject() -> None:
    accumulator = SubjectAccumulator()
    add_slices(accumulator, "sub-dup", [0, 1])
    add_slices(accumulator, "sub-dup", [1])
    with pytest.raises(ValueError, match=r"subject 'sub-dup': slice index \[1\] added more than once"):
        accumulator.compute()


def test_unlabelled_subject_gives_volumes_but_no_metrics() -> None:
    accumulator = SubjectAccumulator()
    add_slices(accumulator, "sub-x", [1, 0], labelled=False)
    pred, target = accumulator.volumes()["sub-x"]
    assert pred.shape == (2, 4, 4) and target is None
    with pytest.raises(ValueError, match="subject 'sub-x' has no target"):
        accumulator.compute()


def test_batch_of_wrong_shape_or_length_is_refused() -> None:
    accumulator = SubjectAccumulator()
    with pytest.raises(ValueError, match=r"shape \(B, H, W\), got \(2, 1, 4, 4\)"):
        accumulator.add(["a", "a"], torch.tensor([0, 1]), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="got 1 subjects, 2 slice indices, 2 predictions"):
        accumulator.add(["a"], torch.tensor([0, 1]), torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))


def test_merging_ranks_drops_sampler_padding_repeats() -> None:
    """Ranks share a subject's slices; a distributed sampler repeats a slice to pad a rank."""
    subjects = random_subjects(seed=2)
    ranks = [SubjectAccumulator(), SubjectAccumulator()]

    def send(rank: int, subject: str, index: int) -> None:
        pred, target = subjects[subject]
        ranks[rank].add([subject], torch.tensor([index]), torch.from_numpy(pred[[index]]), torch.from_numpy(target[[index]]))

    for subject, (pred, _) in subjects.items():
        for index in range(len(pred)):
            send(index % 2, subject, index)
    send(1, "sub-a", 0)

    merged = SubjectAccumulator.merged(ranks).volumes()
    for subject, (pred, target) in subjects.items():
        np.testing.assert_array_equal(merged[subject][0], pred)
        np.testing.assert_array_equal(merged[subject][1], target)

    repeat_within_rank = SubjectAccumulator()
    add_slices(repeat_within_rank, "sub-a", [0, 0])
    with pytest.raises(ValueError, match=r"'sub-a': slice index \[0\] added more than once"):
        SubjectAccumulator.merged([repeat_within_rank]).volumes()


def test_gathered_without_distributed_run_is_the_same_accumulator() -> None:
    accumulator = SubjectAccumulator()
    add_slices(accumulator, "sub-a", [0])
    assert accumulator.gathered() is accumulator


def test_gathered_joins_the_accumulators_of_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks, simulated: all_gather_object hands each rank both accumulators."""
    this_rank, other_rank = SubjectAccumulator(), SubjectAccumulator()
    add_slices(this_rank, "sub-a", [0, 2])
    add_slices(other_rank, "sub-a", [1, 0])  # slice 0 again: sampler padding
    add_slices(other_rank, "sub-b", [0])

    def all_gather_object(gathered: list, sent: SubjectAccumulator) -> None:
        gathered[:] = [sent, other_rank]

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    volumes = this_rank.gathered().volumes()
    assert {subject: pred.shape for subject, (pred, _) in volumes.items()} == {"sub-a": (3, 4, 4), "sub-b": (1, 4, 4)}
