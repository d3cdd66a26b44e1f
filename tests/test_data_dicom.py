"""DICOM stroke slices with colour-drawn labels: grid split/merge, colour masks, layout, grid DataModule."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from lesionseg.data.cases import DataError
from lesionseg.data.colour_masks import LabelColour, extract_colour_mask
from lesionseg.data.dicom_stroke import DicomStrokeLayout
from lesionseg.data.grid import merge_grid, predict_in_grid, split_grid
from lesionseg.data.grid_datamodule import GridTileDataset
from lesionseg.data.slices import SliceDataset
from lesionseg.synthetic.dicom import write_synthetic_dicom_stroke

SIZE, SLICES, LABELLED, UNLABELLED = 32, 2, 5, 1


# ---- grid ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 1, 13, 10)])
def test_merge_is_the_exact_inverse_of_split(shape: tuple[int, ...]) -> None:
    images = torch.randn(shape)
    tiles = split_grid(images, 4)
    assert tiles.shape == (shape[0] * 16, shape[1], -(-shape[2] // 4), -(-shape[3] // 4))
    assert torch.equal(merge_grid(tiles, 4, shape[-2:]), images)


def test_tiles_are_row_major_per_image() -> None:
    images = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    tiles = split_grid(images, 4)
    assert torch.equal(tiles[1], images[0, :, 0:2, 2:4])
    assert torch.equal(tiles[4], images[0, :, 2:4, 0:2])
    assert torch.equal(tiles[16 + 15], images[1, :, 6:8, 6:8])


def test_predict_in_grid_reassembles_tile_predictions() -> None:
    pointwise = torch.nn.Conv2d(1, 1, kernel_size=1)
    images = torch.randn(2, 1, 10, 14)
    with torch.no_grad():
        assert torch.allclose(predict_in_grid(pointwise, images, 4), pointwise(images), atol=1e-6)

    class TileClassifier(torch.nn.Module):
        def forward(self, x):  # tile cls logit = its largest pixel
            return {"seg": x, "cls": x.amax(dim=(1, 2, 3))[:, None]}

    output = predict_in_grid(TileClassifier(), images, 4)
    assert torch.equal(output["seg"], images) and output["cls"].shape == (2, 1)
    assert torch.equal(output["cls"][:, 0], images.amax(dim=(1, 2, 3)))


# ---- colour masks --------------------------------------------------------------------------
def grey_picture(size: int = 64) -> np.ndarray:
    gradient = np.linspace(20, 230, size, dtype=np.float32)
    return np.repeat(np.add.outer(gradient, gradient[::-1])[..., None] / 2, 3, axis=-1).astype(np.uint8)


def disc(size: int = 64, radius: int = 14, centre: tuple[int, int] = (30, 36)) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, centre[::-1], radius, 1, thickness=cv2.FILLED)
    return mask


def drawn(mask: np.ndarray, colour: tuple[int, int, int], filled: bool) -> np.ndarray:
    picture = grey_picture(mask.shape[0])
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, colour, thickness=cv2.FILLED if filled else 1)
    return picture


def jpeg(picture: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.astype(bool) & b.astype(bool)).sum() / (a.astype(bool) | b.astype(bool)).sum())


def test_filled_and_outlined_green_give_the_lesion() -> None:
    lesion = disc()
    assert np.array_equal(extract_colour_mask(drawn(lesion, (0, 255, 0), filled=True), lesion.shape), lesion)
    assert np.array_equal(extract_colour_mask(drawn(lesion, (0, 255, 0), filled=False), lesion.shape), lesion)
    # JPEG tears a 1-pixel outline and bleeds its colour about one pixel either side.
    compressed = jpeg(drawn(lesion, (0, 255, 0), filled=False), quality=75)
    assert iou(extract_colour_mask(compressed, lesion.shape), lesion) > 0.75


def test_other_colours_and_grey_are_ignored_unless_configured() -> None:
    lesion = disc()
    red = drawn(lesion, (255, 0, 0), filled=False)
    assert not extract_colour_mask(red, lesion.shape).any()
    assert not extract_colour_mask(grey_picture(), lesion.shape).any()
    dark_red = drawn(lesion, (200, 0, 40), filled=False)  # hue ~348 degrees: across the 0/360 wrap
    assert np.array_equal(extract_colour_mask(dark_red, lesion.shape, LabelColour(hue="red")), lesion)
    with pytest.raises(ValueError, match="unknown label colour"):
        LabelColour(hue="teal")


def test_label_pictures_of_another_size_are_resized_to_the_dicom_grid() -> None:
    lesion = disc(size=128, radius=28, centre=(60, 72))
    mask = extract_colour_mask(drawn(lesion, (0, 255, 0), filled=False), (64, 64))
    assert mask.shape == (64, 64) and iou(mask, disc()) > 0.9


# ---- layout --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicom") / "stroke"
    return write_synthetic_dicom_stroke(root, LABELLED, seed=2, slices_per_series=SLICES, size=SIZE, n_unlabelled=UNLABELLED)


@pytest.fixture
def dicom_copy(dicom_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dicom_root, tmp_path / "stroke"))


def datamodule(train_config, root: Path, *overrides: str):
    cfg = train_config("data=dicom_stroke", f"data.root={root}", "data.num_workers=0", "data.num_folds=2", *overrides)
    return hydra.utils.instantiate(cfg.data, augment=hydra.utils.instantiate(cfg.augment))


def test_writer_produces_valid_16_bit_dicom_and_green_labels(dicom_root: Path) -> None:
    first = sorted((dicom_root / "images").glob("*.dcm"))[0]
    dataset = pydicom.dcmread(first)
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert dataset.SOPClassUID == pydicom.uid.MRImageStorage
    assert (dataset.PhotometricInterpretation, dataset.BitsAllocated) == ("MONOCHROME2", 16)
    assert dataset.pixel_array.dtype == np.uint16 and dataset.pixel_array.shape == (SIZE, SIZE)
    suffixes = sorted(path.suffix for path in (dicom_root / "labels").iterdir())
    assert len(suffixes) == LABELLED * SLICES and {".jpg", ".png"} == set(suffixes)


def test_subjects_are_series_and_labels_align_with_the_lesion(dicom_root: Path) -> None:
    layout = DicomStrokeLayout()
    cases = layout.find(dicom_root)
    assert len(cases) == LABELLED + UNLABELLED
    assert sum(case.labelled for case in cases) == LABELLED
    for case in cases:
        series = {pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID for path in case.image}
        assert series == {case.meta["series"]} and case.subject.startswith(case.meta["patient"])
        assert [pydicom.dcmread(path).InstanceNumber for path in case.image] == list(range(1, SLICES + 1))
    for case in cases:
        assert not case.labelled or layout.load(case).mask.any()
    filled = next(case for case in cases if case.labelled and case.mask[0].suffix == ".png")
    arrays = layout.load(filled)
    assert arrays.image.shape == (SLICES, 1, SIZE, SIZE) and arrays.mask.shape == (SLICES, SIZE, SIZE)
    image, lesion = arrays.image[:, 0], arrays.mask.astype(bool)
    # The synthetic stroke is hypointense: a mask aligned with it (not flipped or transposed) covers
    # much darker tissue than the rest of the brain.
    assert image[lesion].mean() < 0.7 * image[(image > 0) & ~lesion].mean()


def test_a_slice_without_series_tags_is_its_own_subject(dicom_copy: Path) -> None:
    path = sorted((dicom_copy / "images").glob("*.dcm"))[0]
    dataset = pydicom.dcmread(path)
    del dataset.SeriesInstanceUID
    dataset.save_as(path)
    subjects = [case.subject for case in DicomStrokeLayout().find(dicom_copy)]
    assert path.stem in subjects and len(subjects) == LABELLED + UNLABELLED + 1


def test_grid_datamodule_trains_on_tiles_and_validates_on_whole_slices(train_config, dicom_root: Path) -> None:
    dm = datamodule(train_config, dicom_root, "data.batch_size=4")
    dm.prepare_data()
    dm.setup("fit")
    assert len(sum(dm.split.values(), [])) == LABELLED  # the unlabelled series is for prediction only
    train = dm.train_dataloader()
    assert len(train.dataset) == 16 * SLICES * len(dm.split["train"])
    batch = next(iter(train))
    assert batch["image"].shape == (4, 1, SIZE // 4, SIZE // 4) and batch["mask"].shape == (4, SIZE // 4, SIZE // 4)
    assert batch["mask"].dtype == torch.int64 and len(batch["subject"]) == 4
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (1, SIZE, SIZE) and val["slice_index"].tolist()[:SLICES] == list(range(SLICES))
    cases = dm.subjects("train")
    whole = SliceDataset.all_slices(cases, dm.in_channels)
    tiles = GridTileDataset(whole, 4)
    items = [tiles[i] for i in range(16)]
    merged_image = merge_grid(torch.stack([item["image"] for item in items]), 4, (SIZE, SIZE))
    merged_mask = merge_grid(torch.stack([item["mask"][None] for item in items]), 4, (SIZE, SIZE))
    assert torch.equal(merged_image[0], whole[0]["image"]) and torch.equal(merged_mask[0, 0], whole[0]["mask"])


# ---- bad input -----------------------------------------------------------------------------
def assert_one_line_error_naming(error: pytest.ExceptionInfo, path: Path, problem: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message, message


def test_empty_root_names_the_layout_looked_for(train_config, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("no DICOM here")
    with pytest.raises(DataError, match="dicom_stroke layout"):
        datamodule(train_config, tmp_path).prepare_data()


def test_truncated_dicom_fails_naming_it_and_stores_nothing_for_its_series(train_config, dicom_copy: Path) -> None:
    broken = sorted((dicom_copy / "images").glob("*.dcm"))[1]
    subject = next(case.subject for case in DicomStrokeLayout().find(dicom_copy) if broken in case.image)
    broken.write_bytes(broken.read_bytes()[:-300])
    dm = datamodule(train_config, dicom_copy)
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    assert_one_line_error_naming(error, broken, "unreadable DICOM")
    assert not list(dm.store().folder.glob(f"{subject}*"))


def test_truncated_label_fails_naming_it(dicom_copy: Path) -> None:
    label = sorted((dicom_copy / "labels").glob("*.jpg"))[0]
    label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
    case = next(case for case in DicomStrokeLayout().find(dicom_copy) if label in case.mask)
    with pytest.raises(DataError) as error:
        DicomStrokeLayout().load(case)
    assert_one_line_error_naming(error, label, "unreadable image")


def test_label_without_dicom_fails_naming_it(dicom_copy: Path) -> None:
    orphan = dicom_copy / "labels" / "ghost.png"
    shutil.copy(sorted((dicom_copy / "labels").glob("*.png"))[0], orphan)
    with pytest.raises(DataError) as error:
        DicomStrokeLayout().find(dicom_copy)
    assert_one_line_error_naming(error, orphan, "label has no DICOM slice")


def test_slices_of_one_series_with_different_sizes_fail_naming_the_slice(dicom_copy: Path) -> None:
    path = sorted((dicom_copy / "images").glob("*.dcm"))[1]
    dataset = pydicom.dcmread(path)
    cropped = dataset.pixel_array[: SIZE // 2, : SIZE // 2]
    dataset.Rows, dataset.Columns = cropped.shape
    dataset.PixelData = cropped.tobytes()
    dataset.save_as(path)
    case = next(case for case in DicomStrokeLayout().find(dicom_copy) if path in case.image)
    with pytest.raises(DataError) as error:
        DicomStrokeLayout().load(case)
    assert_one_line_error_naming(error, path, "slice shape")
