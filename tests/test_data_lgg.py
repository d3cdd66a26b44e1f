"""Kaggle LGG (kaggle_3m): the synthetic writer's format, finding and decoding cases, the DataModule."""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import tifffile

from lesionseg.data.cases import DataError
from lesionseg.data.lgg import LggLayout
from lesionseg.synthetic.lgg import write_synthetic_lgg

NUM_SLICES = 11  # > 10, so lexical order (1, 10, 11, 2, ...) differs from numeric order


@pytest.fixture(scope="module")
def lgg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_lgg(tmp_path_factory.mktemp("lgg") / "kaggle_3m", 5, seed=3, n_slices=NUM_SLICES, size=32)


@pytest.fixture
def lgg_copy(lgg_root: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(lgg_root, tmp_path / "kaggle_3m"))


def datamodule(train_config, root: Path, *overrides: str):
    cfg = train_config("data=lgg", f"data.root={root}", "data.num_workers=0", "data.num_folds=2", *overrides)
    return hydra.utils.instantiate(cfg.data, augment=hydra.utils.instantiate(cfg.augment))


def test_writer_produces_the_kaggle_3m_format(tmp_path: Path) -> None:
    root = write_synthetic_lgg(tmp_path, 1, seed=0, n_slices=10)
    (patient,) = [path for path in root.iterdir() if path.is_dir()]
    image = tifffile.imread(patient / f"{patient.name}_10.tif")
    mask = tifffile.imread(patient / f"{patient.name}_10_mask.tif")
    assert (image.dtype, image.shape) == (np.uint8, (256, 256, 3))
    assert (mask.dtype, mask.shape) == (np.uint8, (256, 256))
    assert set(np.unique(mask)) <= {0, 255}
    assert len(list(patient.glob("*_mask.tif"))) == 10 and len(list(patient.glob("*.tif"))) == 20
    table = pd.read_csv(root / "data.csv")
    assert patient.name.startswith(table.loc[0, "Patient"])


def test_slices_are_ordered_numerically_and_decoded_channels_first(lgg_root: Path) -> None:
    layout = LggLayout()
    cases = layout.find(lgg_root)
    assert len(cases) == 5 and [case.subject for case in cases] == sorted(case.subject for case in cases)
    case = cases[0]
    assert [int(path.stem.rsplit("_", 1)[1]) for path in case.image] == list(range(1, NUM_SLICES + 1))
    assert all(mask.name == image.name.replace(".tif", "_mask.tif") for image, mask in zip(case.image, case.mask))
    arrays = layout.load(case)
    assert arrays.image.shape == (NUM_SLICES, 3, 32, 32) and arrays.image.dtype == np.float32
    assert arrays.mask.shape == (NUM_SLICES, 32, 32)
    tenth = tifffile.imread(case.image[9])
    np.testing.assert_array_equal(arrays.image[9], tenth.transpose(2, 0, 1))
    assert arrays.mask.max() == 255


def test_root_may_be_the_folder_holding_kaggle_3m(lgg_root: Path, tmp_path: Path) -> None:
    layout = LggLayout()
    assert layout.detect(lgg_root.parent) and layout.detect(lgg_root)
    assert layout.find(lgg_root.parent) == layout.find(lgg_root)
    assert not layout.detect(tmp_path)


def test_datamodule_batches_follow_the_contract(train_config, lgg_root: Path) -> None:
    dm = datamodule(train_config, lgg_root, "data.batch_size=4")
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(sum(dm.split.values(), [])) == [case.subject for case in LggLayout().find(lgg_root)]
    assert (dm.in_channels, dm.num_classes) == (3, 1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and str(batch["image"].dtype) == "torch.float32"
    assert batch["mask"].shape == (4, 32, 32) and str(batch["mask"].dtype) == "torch.int64"
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    order = [(subject, int(index)) for batch in dm.val_dataloader() for subject, index in zip(batch["subject"], batch["slice_index"])]
    assert order == [(subject, z) for subject in dm.split["val"] for z in range(NUM_SLICES)]


def test_empty_root_names_the_layout_looked_for(train_config, tmp_path: Path) -> None:
    (tmp_path / "stray.txt").write_text("not LGG")
    with pytest.raises(DataError, match="kaggle_3m"):
        datamodule(train_config, tmp_path).prepare_data()


def assert_one_line_error_naming(error: pytest.ExceptionInfo, path: Path, problem: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message, message


def test_truncated_tiff_fails_naming_it_and_stores_nothing_for_the_patient(train_config, lgg_copy: Path) -> None:
    patient = sorted(path for path in lgg_copy.iterdir() if path.is_dir())[0]
    broken = patient / f"{patient.name}_3.tif"
    broken.write_bytes(broken.read_bytes()[:200])
    dm = datamodule(train_config, lgg_copy)
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    assert_one_line_error_naming(error, broken, "unreadable TIFF")
    assert not list(dm.store().folder.glob(f"{patient.name}*"))


def test_mask_of_another_shape_fails_naming_it(lgg_copy: Path) -> None:
    patient = sorted(path for path in lgg_copy.iterdir() if path.is_dir())[0]
    mask = patient / f"{patient.name}_2_mask.tif"
    tifffile.imwrite(mask, np.zeros((31, 32), np.uint8))
    with pytest.raises(DataError) as error:
        LggLayout().load(LggLayout().find(lgg_copy)[0])
    assert_one_line_error_naming(error, mask, "differs from image shape")


def test_image_without_mask_fails_naming_it(lgg_copy: Path) -> None:
    patient = sorted(path for path in lgg_copy.iterdir() if path.is_dir())[-1]
    (patient / f"{patient.name}_7_mask.tif").unlink()
    with pytest.raises(DataError) as error:
        LggLayout().find(lgg_copy)
    assert_one_line_error_naming(error, patient / f"{patient.name}_7.tif", "no lesion mask")


def test_mask_values_beyond_0_255_warn_or_fail_when_strict(train_config, lgg_copy: Path) -> None:
    patient = sorted(path for path in lgg_copy.iterdir() if path.is_dir())[0]
    mask_path = patient / f"{patient.name}_5_mask.tif"
    mask = tifffile.imread(mask_path)
    mask[mask > 0] = 128
    mask[10:14, 10:14] = 128  # values outside {0, 255} whether or not this slice cuts the tumour
    mask[0, 0] = 255
    tifffile.imwrite(mask_path, mask)
    with pytest.raises(DataError, match="strict_masks"):
        datamodule(train_config, lgg_copy, "data.strict_masks=true").prepare_data()
    dm = datamodule(train_config, lgg_copy)
    with pytest.warns(UserWarning, match="binarised"):
        dm.prepare_data()
    dm.setup("fit")
    stored = dm.stored[patient.name].mask
    assert set(np.unique(stored)) == {0, 1} and stored[4].sum() == (mask > 0).sum()
