"""After training: the factory, Hydra apps over checkpoints, ensembles, 3D clean-up chosen on validation, one preprocessing path."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lesionseg.evaluate import evaluate
from lesionseg.evaluation import METRIC_NAMES, subject_metrics
from lesionseg.inference.cleanup import clean_mask
from lesionseg.inference.predictor import Predictor
from lesionseg.inference.settings import InferenceSettings
from lesionseg.postprocess_select import select
from lesionseg.predict import predict

FULL = np.ones((3, 3, 3), dtype=bool)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
@pytest.mark.parametrize("entry", ["predict", "evaluate"])
def test_a_typo_in_an_override_exits_2_naming_the_key_and_the_closest_one(tiny_run: dict, entry: str, monkeypatch, capsys) -> None:
    module = __import__(f"lesionseg.{entry}", fromlist=["main"])
    monkeypatch.setattr(sys, "argv", [entry, f"ckpt_path={tiny_run['best_checkpoint']}", "inference.min_sise=50"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["error: unknown key 'inference.min_sise' (did you mean inference.min_size?)"]


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_a_data_group_override_swaps_the_dataset_and_keeps_the_checkpoints_preprocessing(tiny_run: dict, tmp_path: Path) -> None:
    # The synthetic data is written in the ATLAS R2.0 layout: data=atlas reads the same subjects, split the same way.
    atlas_root = _testing_images(tiny_run)[0].parents[5]
    result = evaluate([f"ckpt_path={tiny_run['best_checkpoint']}", "data=atlas", f"data.root={atlas_root}", f"output_dir={tmp_path / 'atlas'}"])
    assert result["data"] == "atlas"
    for name in ("dice", "lesion_f1", "volume_difference"):
        assert result["test"][name] == pytest.approx(tiny_run["test"][name], abs=1e-9)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_an_ensemble_of_two_checkpoints_averages_their_probabilities(tiny_run: dict, second_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((3, 1, 64, 64)) * 1.5).astype(np.float32)
    first = Predictor.from_checkpoints([tiny_run["best_checkpoint"]], device="cpu")
    second = Predictor.from_checkpoints([second_checkpoint], device="cpu")
    both = Predictor.from_checkpoints([tiny_run["best_checkpoint"], second_checkpoint], device="cpu")
    p1, p2, p12 = (predictor.model_space(image)[0] for predictor in (first, second, both))
    assert np.abs(p1 - p2).max() > 1e-3  # two different members
    assert np.allclose(p12, (p1 + p2) / 2, atol=1e-6)
    result = both.predict_array(image[:, 0])
    assert result.mask.shape == (3, 64, 64) and result.uncertainty.shape == (3, 64, 64)
    assert ((result.probabilities[:, 0] > 0.5) == (result.mask > 0)).all()


def test_keep_largest_keeps_exactly_one_3d_component() -> None:
    volume = np.zeros((6, 12, 12), dtype=np.uint8)
    volume[0:5, 1:5, 1:5] = 1  # the largest lesion, across five slices
    volume[5, 8:10, 8:10] = 1  # a second one, alone on slice 5: per-slice clean-up keeps it
    cleaned = clean_mask(volume, InferenceSettings(keep_largest=True))
    labels, count = ndimage.label(cleaned, structure=FULL)
    assert count == 1 and cleaned.sum() == 5 * 16 and cleaned[0:5, 1:5, 1:5].all()
    per_slice = clean_mask(volume, InferenceSettings(keep_largest=True, cleanup_space="slice"))
    assert ndimage.label(per_slice, structure=FULL)[1] == 2  # what per-slice clean-up did: slice 5 keeps its blob
    corner = np.zeros((2, 4, 4), dtype=np.uint8)
    corner[0, 0:2, 0:2] = 1
    corner[1, 2, 2] = 1  # touches the first lesion at a corner only
    assert clean_mask(corner, InferenceSettings(keep_largest=True)).sum() == 5  # 26-connectivity: one lesion
    assert clean_mask(corner, InferenceSettings(keep_largest=True, connectivity=6)).sum() == 4
    assert clean_mask(corner, InferenceSettings(min_size_ml=0.004), voxel_ml=0.001).sum() == 5  # 5 voxels of 1 mm^3 pass 4 mm^3


def test_postprocess_select_keeps_an_option_where_it_helps_and_drops_it_where_it_hurts() -> None:
    def volume(*boxes: tuple[slice, ...]) -> np.ndarray:
        mask = np.zeros((8, 16, 16), dtype=np.uint8)
        for box in boxes:
            mask[box] = 1
        return mask

    lesion = (slice(1, 6), slice(2, 8), slice(2, 8))
    speck = (slice(6, 7), slice(12, 14), slice(12, 14))
    second = (slice(2, 5), slice(11, 14), slice(11, 14))
    # One lesion per subject, plus a small false positive: keep-largest removes it (Dice up, lesion F1 up).
    single = [(volume(lesion, speck), volume(lesion))]
    chosen = select(single, InferenceSettings(), min_sizes=[5])
    assert chosen["chosen"]["keep_largest"] is True or chosen["chosen"]["min_size"] == 5
    assert all(row["accepted"] for row in chosen["candidates"])
    # Two true lesions: keep-largest drops the smaller one (Dice and lesion F1 down); a size filter below it is neutral.
    multifocal = [(volume(lesion, second), volume(lesion, second))]
    dropped = select(multifocal, InferenceSettings(), min_sizes=[5])
    assert dropped["chosen"] == {"keep_largest": False, "min_size": 0, "min_size_ml": 0.0}
    assert not any(row["accepted"] for row in dropped["candidates"])
    # Multi-focal label, prediction with a false positive: keep-largest raises Dice but loses a lesion (F1 down): dropped.
    mixed = [(volume(lesion, second, speck), volume(lesion, second))] + single
    result = select(mixed, InferenceSettings(), min_sizes=[5])
    keep_largest = next(row for row in result["candidates"] if row["option"]["keep_largest"])
    assert not keep_largest["accepted"] and result["chosen"]["min_size"] == 5


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_predict_refuses_an_undersized_scan_alone_and_predicts_the_rest(tiny_run: dict, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    good = _testing_images(tiny_run)[0]
    shutil.copy(good, scans / "good.nii.gz")
    small = nib.load(good)
    nib.save(nib.Nifti1Image(np.asarray(small.dataobj)[:40, :40], small.affine), scans / "small.nii.gz")
    out = tmp_path / "out"
    summary = predict([f"ckpt_path={tiny_run['best_checkpoint']}", f"input={scans}", f"output_dir={out}", "data.preprocess.crop=[[0,60],[0,60]]"])
    assert summary["scans"] == 2 and summary["failed"] == 1
    table = pd.read_csv(out / "predictions.csv").set_index("subject")
    assert table.loc["good", "status"] == "ok" and table.loc["good", "model_region"] == "rows 0:60, cols 0:60 of 64x64 slices"
    assert table.loc["small", "status"].startswith(f"failed: {scans / 'small.nii.gz'}: slices of 40x40 are smaller than the checkpoint's crop")
    assert nib.load(out / "good_mask.nii.gz").shape == small.shape


def _testing_images(tiny_run: dict) -> list[Path]:
    """The unlabelled images of the dataset the run trained on (its root is in summary.json; the cache may hold others)."""
    return sorted(Path(tiny_run["dataset"]["root"]).glob("Testing/**/*_T1w.nii.gz"))


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_predicted_masks_reproduce_every_test_stage_metric(tiny_run: dict, tmp_path: Path) -> None:
    # The synthetic T1w intensities are integers / 100: not representable in float16, as the slice store holds them.
    image = nib.load(_testing_images(tiny_run)[0]).get_fdata(dtype=np.float32) / 100
    assert (image.astype(np.float16).astype(np.float32) != image).any()
    out = tmp_path / "all"
    predict([f"ckpt_path={tiny_run['best_checkpoint']}", "cases=all", f"output_dir={out}"])
    table = pd.read_csv(out / "predictions.csv").set_index("subject")
    scored = pd.read_csv(Path(tiny_run["run_dir"]) / "test_subjects.csv")
    for row in scored.itertuples():
        source = Path(table.loc[row.subject, "source"])
        truth = nib.load(str(source).replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz")).get_fdata() > 0
        predicted = np.asarray(nib.load(table.loc[row.subject, "mask"]).dataobj) > 0
        metrics = subject_metrics(predicted, truth)
        for name in METRIC_NAMES:
            assert metrics[name] == pytest.approx(getattr(row, name), abs=1e-9), (row.subject, name)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_predict_on_a_multirun_folder_ensembles_its_folds_and_applies_the_chosen_postprocessing(
    tiny_run: dict, second_checkpoint: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "multirun"
    for job, checkpoint in enumerate((Path(tiny_run["best_checkpoint"]), second_checkpoint)):
        (runs / str(job) / "checkpoints").mkdir(parents=True)
        shutil.copy(checkpoint, runs / str(job) / "checkpoints" / "last.ckpt")
    (runs / "postprocessing.json").write_text(json.dumps({"chosen": {"keep_largest": True, "min_size": 0, "min_size_ml": 0.0}}))
    out = tmp_path / "ensemble"
    summary = predict([f"run_dir={runs}", f"output_dir={out}", "save_probabilities=true"])
    assert len(summary["checkpoints"]) == 2 and summary["inference"]["keep_largest"] is True
    table = pd.read_csv(out / "predictions.csv")
    assert (table["status"] == "ok").all() and (table["components"] <= 1).all()
    for row in table.itertuples():
        probabilities = nib.load(row.probabilities)
        uncertainty = np.asarray(nib.load(row.uncertainty).dataobj)
        assert probabilities.shape == nib.load(row.source).shape and np.allclose(probabilities.affine, nib.load(row.source).affine)
        assert uncertainty.min() >= 0 and uncertainty.max() <= 1
        if row.lesion_voxels:
            assert row.mean_uncertainty_in_lesion == pytest.approx(uncertainty[np.asarray(nib.load(row.mask).dataobj) > 0].mean(), abs=1e-4)
    overridden = predict([f"run_dir={runs}", f"output_dir={tmp_path / 'plain'}", "inference.keep_largest=false"])
    assert overridden["inference"]["keep_largest"] is False and overridden["postprocessing_from"] is None


def test_the_checkpoint_config_takes_only_what_the_command_line_names() -> None:
    from hydra_helpers import compose_train
    from omegaconf import OmegaConf

    from lesionseg.app_config import checkpoint_config, compose_app
    from lesionseg.config import UsageError
    from lesionseg.predict import OWN_KEYS

    composed = compose_train(["data=atlas", "data.root=/data/ATLAS_2", "data.preprocess.scale=50"], Path("/runs/a"))
    stored = OmegaConf.to_container(composed, resolve=True)
    stored.pop("hydra")
    del stored["inference"]["min_size_ml"], stored["inference"]["threshold"]  # a checkpoint older than these keys
    stored = OmegaConf.create(stored)

    def apply(*overrides: str):
        return checkpoint_config(stored, compose_app("predict", list(overrides)), list(overrides), OWN_KEYS, "old.ckpt")

    cfg = apply("threshold=0.3", "inference.min_size=7")
    assert cfg.inference.threshold == 0.3 and cfg.inference.min_size == 7 and cfg.inference.min_size_ml == 0.0
    assert cfg.data.name == "atlas" and cfg.data.preprocess.scale == 50  # the rest is the checkpoint's
    swapped = apply("data=lgg", "data.root=/data/lgg")
    assert swapped.data.name == "lgg" and swapped.data.root == "/data/lgg" and swapped.data.preprocess.scale == 50
    with pytest.raises(UsageError, match="cannot change"):
        apply("model=xnet")
    with pytest.raises(UsageError, match=r"unknown key 'data.num_training' in the config of old.ckpt"):
        apply("data.num_training=3")  # a synthetic-only key: composes, but this checkpoint's data has no such key


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_evaluating_an_ensemble_of_one_checkpoint_twice_reproduces_the_test_stage(tiny_run: dict, tmp_path: Path) -> None:
    best = tiny_run["best_checkpoint"]
    result = evaluate([f"ckpt_path=[{best},{best}]", f"output_dir={tmp_path / 'twice'}"])
    assert len(result["checkpoints"]) == 2
    for name in METRIC_NAMES:
        assert result["test"][name] == pytest.approx(tiny_run["test"][name], rel=1e-6, abs=1e-9, nan_ok=True), name  # summary.json went through float32 logging
