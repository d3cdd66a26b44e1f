"""Challenge conventions on hand-computed volumes, MONAI surface distances, and `lesionseg.score` on folders."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionseg.config import UsageError
from lesionseg.data.cases import DataError
from lesionseg.evaluation import METRIC_NAMES, subject_metrics
from lesionseg.score import check_keys, main, match_files, score_folders


def voxels(shape: tuple[int, int, int], *points: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for point in points:
        mask[point] = True
    return mask


# Label: two voxels touching only at a corner. Prediction: one of them, plus a separate two-voxel
# lesion far away. 6-connectivity (ATLAS) sees two label lesions, 26-connectivity (ISLES'22) one.
CORNER_TARGET = voxels((5, 5, 6), (0, 0, 0), (1, 1, 1))
CORNER_PRED = voxels((5, 5, 6), (0, 0, 0), (3, 3, 3), (3, 3, 4))
SPACING = (2.0, 1.0, 0.5)  # mm: one voxel is 1 mm^3 = 0.001 ml


def test_atlas_counts_corner_touching_voxels_as_two_lesions() -> None:
    metrics = subject_metrics(CORNER_PRED, CORNER_TARGET, "atlas", SPACING)
    # Label lesions {A}, {B}; predicted lesions {A}, {far}: A found (tp 1), B missed (fn 1), far is a false lesion (fp 1).
    assert metrics["lesion_count_difference"] == 0.0
    assert metrics["lesion_f1"] == pytest.approx(1 / (1 + (1 + 1) / 2))
    assert metrics["volume_difference"] == 1.0  # voxels: 3 predicted - 2 labelled


def test_isles22_counts_corner_touching_voxels_as_one_lesion() -> None:
    metrics = subject_metrics(CORNER_PRED, CORNER_TARGET, "isles22", SPACING)
    # Label lesions {A+B}; predicted {A}, {far}: the lesion is found (tp 1), far is a false lesion (fp 1).
    assert metrics["lesion_count_difference"] == 1.0
    assert metrics["lesion_f1"] == pytest.approx(1 / (1 + 1 / 2))
    assert metrics["volume_difference"] == pytest.approx(0.001)  # ml: one voxel of 2 x 1 x 0.5 mm


def test_overlap_metrics_do_not_depend_on_the_convention() -> None:
    atlas = subject_metrics(CORNER_PRED, CORNER_TARGET, "atlas", SPACING)
    isles = subject_metrics(CORNER_PRED, CORNER_TARGET, "isles22", SPACING)
    for name in ("dice", "iou", "precision", "recall", "hd95", "asd"):
        assert atlas[name] == isles[name]
    assert atlas["dice"] == pytest.approx(2 * 1 / (3 + 2))


def test_unknown_convention_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="convention=brats: use one of atlas, isles22"):
        subject_metrics(CORNER_PRED, CORNER_TARGET, "brats")


def test_hd95_and_asd_in_mm_with_anisotropic_spacing() -> None:
    """Label: one voxel g. Prediction: p1 two voxels from g along axis 2 (0.5 mm each), p2 three along axis 0 (2 mm each).

    Distances prediction -> label: p1 1.0 mm, p2 6.0 mm; label -> prediction: 1.0 mm. MONAI's HD95 takes
    each direction's 95th percentile (linear interpolation: 1 + 0.95 x 5 = 5.75) and the larger one;
    the average symmetric surface distance is the mean of all three distances, 8/3 mm.
    """
    target = voxels((6, 3, 5), (1, 1, 1))
    pred = voxels((6, 3, 5), (1, 1, 3), (4, 1, 1))
    metrics = subject_metrics(pred, target, spacing=SPACING)
    assert metrics["hd95"] == pytest.approx(5.75)
    assert metrics["asd"] == pytest.approx(8 / 3)


def test_surface_distances_of_empty_masks_follow_the_nan_policy() -> None:
    empty = np.zeros((3, 3, 3), dtype=bool)
    lesion = voxels((3, 3, 3), (1, 1, 1))
    both_empty = subject_metrics(empty, empty)
    assert both_empty["hd95"] == 0.0 and both_empty["asd"] == 0.0
    for pred, target in ((empty, lesion), (lesion, empty)):
        metrics = subject_metrics(pred, target)
        assert math.isnan(metrics["hd95"]) and math.isnan(metrics["asd"])


# ---------------------------------------------------------------- folders
AFFINE = np.diag([2.0, 1.0, 0.5, 1.0])


def write_mask(path: Path, mask: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(path))
    return path


def test_files_match_by_stem_mask_suffix_and_bids_subject(tmp_path: Path) -> None:
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    mask = CORNER_TARGET
    write_mask(preds / "case7_mask.nii.gz", mask)  # predict's name for subject case7
    write_mask(labels / "case7.nii.gz", mask)  # identical stem once `_mask` is removed
    write_mask(preds / "sub-r001s002_mask.nii.gz", mask)
    write_mask(preds / "sub-r001s002_probabilities.nii.gz", mask.astype(float))  # a map, not a mask: skipped
    bids = labels / "sub-r001s002" / "ses-1" / "anat"
    write_mask(bids / "sub-r001s002_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", mask)  # the image beside the label
    write_mask(bids / "sub-r001s002_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz", mask)
    write_mask(labels / "sub-r009s009_mask.nii.gz", mask)  # no prediction: left unmatched, not an error

    pairs, unmatched = match_files(preds, labels)
    assert [(subject, pred.name, label.name) for subject, pred, label in pairs] == [
        ("case7", "case7_mask.nii.gz", "case7.nii.gz"),
        ("sub-r001s002", "sub-r001s002_mask.nii.gz", "sub-r001s002_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"),
    ]
    assert sorted(path.name for path in unmatched) == ["sub-r001s002_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", "sub-r009s009_mask.nii.gz"]


def test_prediction_without_label_is_an_error_naming_it(tmp_path: Path) -> None:
    write_mask(tmp_path / "pred" / "lonely_mask.nii.gz", CORNER_PRED)
    write_mask(tmp_path / "labels" / "other.nii.gz", CORNER_TARGET)
    with pytest.raises(DataError, match=r"lonely_mask\.nii\.gz: no label in .*labels"):
        match_files(tmp_path / "pred", tmp_path / "labels")


def test_score_folders_writes_per_subject_csv_and_summary_json(tmp_path: Path) -> None:
    target_b = voxels((5, 5, 6), (2, 2, 2), (2, 2, 3))
    write_mask(tmp_path / "pred" / "a_mask.nii.gz", CORNER_PRED)
    write_mask(tmp_path / "labels" / "a.nii.gz", CORNER_TARGET)
    write_mask(tmp_path / "pred" / "b_mask.nii.gz", target_b)
    write_mask(tmp_path / "labels" / "b.nii.gz", target_b)
    out = tmp_path / "scores"

    table, summary = score_folders(tmp_path / "pred", tmp_path / "labels", "isles22", out)

    written = pd.read_csv(out / "scores.csv")
    assert list(written["subject"]) == ["a", "b"]
    expected_a = subject_metrics(CORNER_PRED, CORNER_TARGET, "isles22", SPACING)
    for name in METRIC_NAMES:
        assert written.loc[0, name] == pytest.approx(expected_a[name])
    assert written.loc[1, "dice"] == 1.0 and written.loc[1, "hd95"] == 0.0
    assert written.loc[0, "spacing"] == "2x1x0.5"
    saved = json.loads((out / "scores.json").read_text())
    assert saved["convention"] == "isles22" and saved["connectivity"] == 26 and saved["volume_unit"] == "ml"
    assert saved["mean"]["dice"] == pytest.approx((expected_a["dice"] + 1.0) / 2)
    assert saved["std"]["lesion_f1"] == pytest.approx(np.std([expected_a["lesion_f1"], 1.0], ddof=1))
    assert saved["subjects"] == 2 and summary["output_dir"] == str(out)

    with pytest.raises(UsageError, match="exists and is not empty"):  # never overwrites
        score_folders(tmp_path / "pred", tmp_path / "labels", "isles22", out)


def test_unknown_key_is_an_error_naming_the_closest_key() -> None:
    with pytest.raises(UsageError, match=r"unknown key 'pred_dri' \(did you mean pred_dir\?\)"):
        check_keys(["pred_dri=x", "label_dir=y"])
    check_keys(["pred_dir=x", "label_dir=y", "convention=isles22", "hydra.verbose=true"])


def test_cli_mismatched_pair_is_one_line_naming_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The Hydra app, run in this process (a subprocess would pay ~10 s of imports)."""
    write_mask(tmp_path / "pred" / "a_mask.nii.gz", CORNER_PRED)
    write_mask(tmp_path / "labels" / "a.nii.gz", CORNER_TARGET, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    monkeypatch.setattr(sys, "argv", ["score", f"pred_dir={tmp_path / 'pred'}", f"label_dir={tmp_path / 'labels'}"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a_mask.nii.gz and " in lines[0] and "a.nii.gz: affines differ" in lines[0]
    assert not (tmp_path / "pred" / "score").exists()  # nothing written for a failed run


@pytest.mark.slow
def test_score_on_predicts_masks_reproduces_the_test_stage_for_every_metric(tiny_run: dict, tmp_path: Path) -> None:
    """`predict` writes masks, `score` reads them back: the test stage's per-subject numbers, to 1e-9."""
    from lesionseg.predict import predict

    masks = tmp_path / "masks"
    predict([f"ckpt_path={tiny_run['best_checkpoint']}", "cases=all", f"output_dir={masks}"])
    sources = pd.read_csv(masks / "predictions.csv")["source"]
    label_dir = Path(os.path.commonpath(list(sources)))  # the synthetic ATLAS root: images and BIDS-named labels
    table, _ = score_folders(masks, label_dir, "atlas", tmp_path / "scores")
    scored = table.set_index("subject")
    staged = pd.read_csv(Path(tiny_run["run_dir"]) / "test_subjects.csv")
    assert len(staged) >= 2
    for row in staged.itertuples():
        for name in METRIC_NAMES:
            assert scored.loc[row.subject, name] == pytest.approx(getattr(row, name), abs=1e-9, nan_ok=True), (row.subject, name)
