"""`data=nnunet_raw`: nnU-Net v2 raw datasets (dataset.json, imagesTr/<case>_000K, labelsTr/, imagesTs/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionseg.data.cases import DataError
from lesionseg.data.nnunet_raw import NnUNetRawLayout
from lesionseg.synthetic.phantom import phantom

SHAPE = (40, 48, 4)  # x, y, z
AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def write_nnunet_raw(root: Path, n_training: int = 6, n_test: int = 1, seed: int = 0) -> Path:
    """A 2-channel (T1, FLAIR) nnU-Net raw dataset of phantoms with an oblique-free, anisotropic affine."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_training + n_test):
        sample = phantom(SHAPE, np.random.default_rng([seed, index]))
        flair = np.where(sample.image > 0, 160.0 - 0.6 * sample.image + 90.0 * sample.mask, 0.0)
        case, images = f"STROKE_{index:03d}", "imagesTr" if index < n_training else "imagesTs"
        for channel, volume in enumerate((sample.image, flair)):
            nib.save(nib.Nifti1Image(volume.astype(np.float32), AFFINE), root / images / f"{case}_{channel:04d}.nii.gz")
        if index < n_training:
            nib.save(nib.Nifti1Image(sample.mask, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
    description = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": n_training, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nnunet_raw(tmp_path_factory.mktemp("raw") / "Dataset501_Stroke")


@pytest.fixture
def broken(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / dataset.name))


def test_cases_stack_channels_keep_the_affine_and_imagests_is_unlabelled(dataset: Path) -> None:
    layout = NnUNetRawLayout()
    assert layout.detect(dataset) and not layout.detect(dataset / "imagesTr")
    cases = layout.find(dataset)
    assert [case.subject for case in cases] == [f"STROKE_{index:03d}" for index in range(7)]
    assert [case.labelled for case in cases] == [True] * 6 + [False]
    first = cases[0]
    assert [path.name for path in first.image] == ["STROKE_000_0000.nii.gz", "STROKE_000_0001.nii.gz"]
    assert first.meta["channels"] == "T1,FLAIR"
    arrays = layout.load(first)
    assert arrays.image.shape == (SHAPE[2], 2, SHAPE[1], SHAPE[0]) and arrays.mask is not None
    assert arrays.mask.shape == (SHAPE[2], SHAPE[1], SHAPE[0]) and set(np.unique(arrays.mask)) == {0, 1}
    np.testing.assert_allclose(arrays.affine, AFFINE)
    t1, flair = arrays.image[:, 0], arrays.image[:, 1]
    lesion = arrays.mask.astype(bool)
    assert flair[lesion].mean() > flair[~lesion & (t1 > 0)].mean() > 0  # the second file is the second channel
    assert layout.load(cases[-1]).mask is None


def _replace(path: Path, voxels: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(voxels, affine), path)


BROKEN = {
    "missing channel": (lambda root: (root / "imagesTr" / "STROKE_002_0001.nii.gz").unlink(), r"STROKE_002_0001.nii.gz: missing \(channel 1, FLAIR"),
    "unknown label value": (
        lambda root: _replace(root / "labelsTr" / "STROKE_001.nii.gz", np.full(SHAPE, 3, np.uint8)),
        r"STROKE_001.nii.gz: label value\(s\) \[3\] not in dataset.json's labels \[0, 1\]",
    ),
    "channel shape": (
        lambda root: _replace(root / "imagesTr" / "STROKE_003_0001.nii.gz", np.zeros((40, 48, 5), np.float32)),
        r"STROKE_003_0001.nii.gz: shape \(5, 48, 40\) differs from STROKE_003_0000.nii.gz \(4, 48, 40\)",
    ),
    "channel affine": (
        lambda root: _replace(root / "imagesTr" / "STROKE_004_0001.nii.gz", np.zeros(SHAPE, np.float32), np.eye(4)),
        "STROKE_004_0001.nii.gz: affine differs from STROKE_004_0000.nii.gz's",
    ),
    "label without images": (
        lambda root: shutil.copy(root / "labelsTr" / "STROKE_000.nii.gz", root / "labelsTr" / "STROKE_099.nii.gz"),
        "STROKE_099.nii.gz: label without images",
    ),
    "no dataset.json keys": (lambda root: (root / "dataset.json").write_text('{"labels": {}}'), "dataset.json: not an nnU-Net dataset.json"),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_broken_datasets_fail_with_one_line_naming_the_file(variant: str, broken: Path) -> None:
    damage, message = BROKEN[variant]
    damage(broken)
    layout = NnUNetRawLayout()
    with pytest.raises(DataError, match=message) as error:
        for case in layout.find(broken):
            layout.load(case)
    assert "\n" not in str(error.value) and str(broken) in str(error.value)


@pytest.mark.slow
def test_trains_on_two_channels_and_predicts_imagests_in_the_scans_geometry(dataset: Path, train_config, tmp_path: Path) -> None:
    from lesionseg.predict import predict
    from lesionseg.training import train

    cfg = train_config(
        "data=nnunet_raw",
        f"data.root={dataset}",
        "data.in_channels=2",
        "data.num_workers=0",
        "data.num_folds=2",
        "data.batch_size=4",
        "model=unet_small",
        "model.base_channels=4",
        "debug=limit",
        "trainer.max_epochs=1",
        "logger=csv",
    )
    _, summary = train(cfg)
    assert summary["status"] == "ok" and summary["data"] == "nnunet_raw"
    assert summary["dataset"]["layout"] == "nnunet_raw" and (summary["dataset"]["cases"], summary["dataset"]["labelled"]) == (7, 6)
    predict([f"ckpt_path={summary['best_checkpoint']}", f"output_dir={tmp_path / 'masks'}"])
    table = pd.read_csv(tmp_path / "masks" / "predictions.csv")
    assert list(table["subject"]) == ["STROKE_006"] and (table["status"] == "ok").all()
    mask = nib.load(table["mask"][0])
    assert mask.shape == SHAPE and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, AFFINE)
