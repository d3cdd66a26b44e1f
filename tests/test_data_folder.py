"""Image folders (`images/` + `masks/` by stem): writer, finding and decoding cases, the DataModule."""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from lesionseg.data.cases import DataError
from lesionseg.data.folder import FolderLayout
from lesionseg.factory import build_net
from lesionseg.synthetic.folder import write_synthetic_folder

SIZE, VOLUME_SLICES = 24, 5


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "export"
    return write_synthetic_folder(root, 6, seed=4, size=SIZE, n_slices=VOLUME_SLICES)


@pytest.fixture
def folder_copy(folder_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder_root, tmp_path / "export"))


def datamodule(train_config, root: Path, *overrides: str):
    cfg = train_config("data=folder", f"data.root={root}", "data.num_workers=0", "data.num_folds=2", *overrides)
    return hydra.utils.instantiate(cfg.data, augment=hydra.utils.instantiate(cfg.augment))


def assert_one_line_error_naming(error: pytest.ExceptionInfo, path: Path, problem: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message, message


def test_writer_mixes_png_pictures_and_nifti_volumes(folder_root: Path) -> None:
    images = sorted(path.name for path in (folder_root / "images").iterdir())
    assert images == sorted(path.name for path in (folder_root / "masks").iterdir())
    assert {name.split(".", 1)[1] for name in images} == {"png", "nii.gz"}
    png = np.asarray(Image.open(folder_root / "masks" / "case_000.png"))
    assert png.shape == (SIZE, SIZE) and set(np.unique(png)) == {0, 255}
    volume = nib.load(folder_root / "images" / "case_001.nii.gz")
    assert volume.shape == (SIZE, SIZE, VOLUME_SLICES)


def test_one_subject_per_stem_pictures_as_one_slice_volumes_as_many(folder_root: Path) -> None:
    layout = FolderLayout()
    cases = layout.find(folder_root)
    assert [case.subject for case in cases] == [f"case_{index:03d}" for index in range(6)]
    picture, volume = layout.load(cases[0]), layout.load(cases[1])
    assert picture.image.shape == (1, 1, SIZE, SIZE) and picture.mask.shape == (1, SIZE, SIZE)
    assert volume.image.shape == (VOLUME_SLICES, 1, SIZE, SIZE) and volume.mask.shape == (VOLUME_SLICES, SIZE, SIZE)
    assert volume.affine is not None and picture.affine is None
    np.testing.assert_array_equal(picture.image[0, 0], np.asarray(Image.open(cases[0].image[0])))


def test_pictures_are_converted_to_the_configured_channels(folder_copy: Path) -> None:
    case = FolderLayout().find(folder_copy)[0]
    grey = FolderLayout(channels=1).load(case).image
    rgb = FolderLayout(channels=3).load(case).image
    assert rgb.shape == (1, 3, SIZE, SIZE) and all(np.array_equal(rgb[:, c], grey[:, 0]) for c in range(3))
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour).save(case.image[0])
    assert np.allclose(FolderLayout(channels=1).load(case).image, 0.587 * 200, atol=1e-3)
    with pytest.raises(ValueError, match="channels=2"):
        FolderLayout(channels=2)


def test_datamodule_batches_follow_the_contract(train_config, folder_root: Path) -> None:
    dm = datamodule(train_config, folder_root, "data.batch_size=3")
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(sum(dm.split.values(), [])) == [f"case_{index:03d}" for index in range(6)]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 1, SIZE, SIZE) and str(batch["mask"].dtype) == "torch.int64"
    assert set(batch["mask"].unique().tolist()) <= {0, 1} and batch["image"].max() <= 1.0
    order = [(subject, int(index)) for batch in dm.val_dataloader() for subject, index in zip(batch["subject"], batch["slice_index"])]
    expected_slices = {subject: 1 if int(subject[-3:]) % 2 == 0 else VOLUME_SLICES for subject in dm.split["val"]}
    assert order == [(subject, z) for subject in dm.split["val"] for z in range(expected_slices[subject])]


# ---- bad input -----------------------------------------------------------------------------
def test_empty_root_names_the_layout_looked_for(train_config, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="folder layout"):
        datamodule(train_config, tmp_path).prepare_data()


def test_image_without_mask_fails_naming_it(folder_copy: Path) -> None:
    (folder_copy / "masks" / "case_002.png").unlink()
    with pytest.raises(DataError) as error:
        FolderLayout().find(folder_copy)
    assert_one_line_error_naming(error, folder_copy / "images" / "case_002.png", "no lesion mask")


def test_mask_without_image_and_clashing_stems_fail_naming_the_file(folder_copy: Path) -> None:
    orphan = folder_copy / "masks" / "case_999.png"
    shutil.copy(folder_copy / "masks" / "case_000.png", orphan)
    with pytest.raises(DataError) as error:
        FolderLayout().find(folder_copy)
    assert_one_line_error_naming(error, orphan, "mask has no image")
    orphan.unlink()
    clash = folder_copy / "images" / "case_000.tif"
    clash.write_bytes(b"")
    with pytest.raises(DataError) as error:
        FolderLayout().find(folder_copy)
    assert_one_line_error_naming(error, clash, "same stem")
    clash.rename(folder_copy / "images" / "case_000.bmp")
    with pytest.raises(DataError, match="unsupported file type"):
        FolderLayout().find(folder_copy)


def test_truncated_png_fails_naming_it_and_stores_nothing_for_it(train_config, folder_copy: Path) -> None:
    broken = folder_copy / "images" / "case_004.png"
    broken.write_bytes(broken.read_bytes()[:60])
    dm = datamodule(train_config, folder_copy)
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    assert_one_line_error_naming(error, broken, "unreadable image")
    assert not list(dm.store().folder.glob("case_004*"))


def test_mask_of_another_shape_fails_naming_it(train_config, folder_copy: Path) -> None:
    mask = folder_copy / "masks" / "case_002.png"
    Image.fromarray(np.zeros((SIZE, SIZE + 1), np.uint8)).save(mask)
    with pytest.raises(DataError) as error:
        datamodule(train_config, folder_copy).prepare_data()
    assert_one_line_error_naming(error, mask, "differs from image shape")


def test_mask_values_beyond_0_1_warn_or_fail_when_strict(train_config, folder_copy: Path) -> None:
    path = folder_copy / "masks" / "case_001.nii.gz"
    volume = nib.load(path)
    mask = np.asarray(volume.dataobj).astype(np.uint8) * 2
    nib.save(nib.Nifti1Image(mask, volume.affine), path)
    with pytest.raises(DataError, match="strict_masks"):
        datamodule(train_config, folder_copy, "data.strict_masks=true").prepare_data()
    dm = datamodule(train_config, folder_copy)
    with pytest.warns(UserWarning, match="binarised"):
        dm.prepare_data()
    dm.setup("fit")
    assert set(np.unique(dm.stored["case_001"].mask)) == {0, 1}


@pytest.mark.slow  # trains end to end
def test_multi_class_masks_keep_their_labels_and_train_with_softmax(train_config, folder_copy: Path) -> None:
    from lesionseg.training import train

    # Two lesion classes: every mask's lower half of the lesion becomes class 2.
    for path in sorted((folder_copy / "masks").iterdir()):
        if path.suffix == ".png":
            mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
            mask[SIZE // 2 :] *= 2
            Image.fromarray(mask).save(path)
        else:
            volume = nib.load(path)
            mask = (np.asarray(volume.dataobj) > 0).astype(np.uint8)
            mask[:, SIZE // 2 :] *= 2
            nib.save(nib.Nifti1Image(mask, volume.affine), path)
    dm = datamodule(train_config, folder_copy, "data.num_classes=3")
    dm.prepare_data()
    dm.setup("fit")
    assert set().union(*(np.unique(case.mask).tolist() for case in dm.stored.values())) == {0, 1, 2}
    cfg = train_config(
        "data=folder",
        f"data.root={folder_copy}",
        "data.num_workers=0",
        "data.num_folds=2",
        "data.num_classes=3",
        "model.base_channels=4",
        "debug=limit",
        "trainer.max_epochs=1",
    )
    _, summary = train(cfg)
    assert summary["status"] == "ok" and {"dice", "iou"} <= set(summary["test"])
    assert build_net(cfg.model)(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)  # softmax logits
    Image.fromarray(np.full((SIZE, SIZE), 5, np.uint8)).save(folder_copy / "masks" / "case_000.png")
    with pytest.raises(DataError) as error:
        datamodule(train_config, folder_copy, "data.num_classes=3").prepare_data()
    assert_one_line_error_naming(error, folder_copy / "masks" / "case_000.png", "not class indices 0..2")
