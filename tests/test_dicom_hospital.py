"""DICOM as hospitals store it: compressed, multi-frame, headerless, series folders; masks written back as PNG + DICOM SEG."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from lesionseg.data.cases import DataError
from lesionseg.data.dicom_stroke import DicomPlane, read_dicom_frames, read_dicom_volume, series_affine
from lesionseg.data.scans import input_scans, write_prediction
from lesionseg.synthetic.dicom import dicom_slice

SIZE = 40
POSITIONS = [12.5, 10.0, 17.5, 15.0]  # stored out of order: the volume must come out sorted along z
SPACING = (0.8, 0.9)


def pixels(index: int) -> np.ndarray:
    """A slice whose bright square's row tells which slice it is (index 0 at row 2, 1 at row 10, ...)."""
    image = np.full((SIZE, SIZE), 100, np.uint16)
    image[2 + 8 * index : 8 + 8 * index, 5:20] = 900
    return image


def hospital_slice(index: int, position: float, series: str, instance: int) -> pydicom.Dataset:
    dataset = dicom_slice(pixels(index), "PAT1", series, "1.2.826.0.1.3680043.8.498.1", instance, f"slice-{series}")
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(index)])
    dataset.ImagePositionPatient = [-20.0, -18.0, position]
    dataset.PixelSpacing = list(SPACING)
    dataset.SliceThickness = 2.5
    dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    return dataset


def compressed_series(folder: Path) -> list[pydicom.Dataset]:
    """Four slices of one series: JPEG-LS, JPEG 2000, RLE and JPEG-LS, files named by UID (no suffix), instance numbers reversed."""
    folder.mkdir(parents=True)
    series = "1.2.826.0.1.3680043.8.498.10"
    datasets = []
    for index, (position, syntax) in enumerate(zip(POSITIONS, (JPEGLSLossless, JPEG2000Lossless, RLELossless, JPEGLSLossless))):
        dataset = hospital_slice(int(np.argsort(np.argsort(POSITIONS))[index]), position, series, instance=4 - index)
        dataset.compress(syntax)
        dataset.save_as(folder / dataset.SOPInstanceUID, enforce_file_format=True)
        datasets.append(dataset)
    return datasets


def multi_frame(path: Path) -> pydicom.Dataset:
    """A legacy-converted enhanced MR image (3 frames) from a single-frame series, RLE compressed."""
    series = "1.2.826.0.1.3680043.8.498.20"
    frames = [hospital_slice(index, 10.0 + 2.5 * index, series, index + 1) for index in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
            frames, series_instance_uid=generate_uid(), series_number=4, sop_instance_uid=generate_uid(), instance_number=1
        )
    enhanced.compress(RLELossless)
    enhanced.save_as(path, enforce_file_format=True)
    return enhanced


def headerless(path: Path) -> pydicom.Dataset:
    """A data set written without preamble and File Meta header (implicit VR little endian), as old software did."""
    dataset = hospital_slice(1, 0.0, "1.2.826.0.1.3680043.8.498.30", 1)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, pydicom.Dataset({element.tag: element for element in dataset}))
    path.write_bytes(buffer.getvalue())
    return dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hospital") / "inputs"
    compressed_series(root / "series")
    multi_frame(root / "enhanced.dcm")
    headerless(root / "old.dcm")
    return root


def test_series_compressed_and_headerless_files_decode_to_volumes_in_their_geometry(inputs: Path) -> None:
    scans = {scan.case.subject: scan for scan in input_scans(inputs, channels=1)}
    assert sorted(scans) == ["enhanced", "old", "series"]
    series = scans["series"].decode()
    assert series.image.shape == (4, 1, SIZE, SIZE)
    # Sorted along z: slice k has its bright square at row 2 + 8k, whatever the file order.
    assert [int(np.argmax(plane[0, :, 10])) for plane in series.image] == [2, 10, 18, 26]
    assert series.affine is not None
    np.testing.assert_allclose(np.diag(series.affine)[:3], [-SPACING[1], -SPACING[0], 2.5])
    np.testing.assert_allclose(series.affine[:3, 3], [20.0, 18.0, 10.0])
    enhanced = scans["enhanced"].decode()
    assert enhanced.image.shape == (3, 1, SIZE, SIZE) and sorted(int(np.argmax(plane[0, :, 10])) for plane in enhanced.image) == [2, 10, 18]
    old = scans["old"].decode()
    assert old.image.shape == (1, 1, SIZE, SIZE) and np.array_equal(old.image[0, 0], pixels(1))
    # Frames that are not one regular grid (here: spacing 1 mm, then 2 mm) have no affine.
    irregular = [DicomPlane((0.0, 0.0, z), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), SPACING, 1.0) for z in (0.0, 1.0, 3.0)]
    assert series_affine(irregular) is None and series_affine(irregular[:2]) is not None


def test_masks_are_written_per_source_file_and_as_a_dicom_seg_highdicom_reads_back(inputs: Path, tmp_path: Path) -> None:
    for scan in input_scans(inputs, channels=1):
        decoded = scan.decode()
        mask = (decoded.image[:, 0] > 500).astype(np.uint8)  # the bright square: a mask tied to each slice
        files = write_prediction(scan, mask, tmp_path)
        seg = hd.seg.segread(files[0].parent / f"{scan.case.subject}_seg.dcm")
        if scan.case.subject == "series":
            assert len(files) == 4 and all(path.parent.name == "series" for path in files)
            for source in scan.case.image:  # each PNG and each SEG frame belongs to its own source slice
                stored = pydicom.dcmread(source)
                truth = (stored.pixel_array > 500).astype(np.uint8)
                png = cv2.imread(str(tmp_path / "series" / f"{source.name}_mask.png"), cv2.IMREAD_UNCHANGED)
                assert np.array_equal(png > 0, truth > 0)
                frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[stored.SOPInstanceUID], segment_numbers=[1])
                assert np.array_equal(frame[0, ..., 0], truth)
        elif scan.case.subject == "enhanced":
            source = pydicom.dcmread(scan.case.image[0])
            frames = seg.get_pixels_by_source_frame(source.SOPInstanceUID, source_frame_numbers=[1, 2, 3], segment_numbers=[1])
            assert np.array_equal(frames[..., 0], (source.pixel_array > 500).astype(np.uint8))
        assert seg.SeriesInstanceUID != pydicom.dcmread(scan.case.image[0], force=True).SeriesInstanceUID
    assert not list(tmp_path.glob("**/.*"))  # no temporary files left


def colour_ultrasound(path: Path) -> None:
    dataset = hospital_slice(0, 0.0, "1.2.826.0.1.3680043.8.498.40", 1)
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = np.zeros((SIZE, SIZE, 3), np.uint8).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def no_pixels(path: Path) -> None:
    dataset = hospital_slice(0, 0.0, "1.2.826.0.1.3680043.8.498.50", 1)
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)


def not_dicom(path: Path) -> None:
    path.write_bytes(b"this is a text file, named .dcm by mistake" * 4)


UNSUPPORTED = {
    "colour ultrasound": (colour_ultrasound, "unsupported DICOM photometric interpretation RGB"),
    "no pixel data": (no_pixels, "DICOM holds no pixel data"),
    "not DICOM": (not_dicom, "not a DICOM"),
}


@pytest.mark.parametrize("variant", list(UNSUPPORTED))
def test_unsupported_inputs_fail_with_one_line_naming_the_file(variant: str, tmp_path: Path) -> None:
    write, message = UNSUPPORTED[variant]
    path = tmp_path / "bad.dcm"
    write(path)
    with pytest.raises(DataError, match=message) as error:
        read_dicom_frames(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_missing_decoder_names_the_transfer_syntax_and_the_package(inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")})
    scan = next(scan for scan in input_scans(inputs, channels=1) if scan.case.subject == "series")
    with pytest.raises(DataError, match=r"JPEG-LS Lossless Image Compression \(1.2.840.10008.1.2.4.80\).*pylibjpeg-libjpeg") as error:
        read_dicom_volume(scan.case)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_predict_writes_pngs_and_a_seg_for_each_hospital_input(inputs: Path, train_config, tmp_path: Path) -> None:
    from lesionseg.predict import predict
    from lesionseg.training import train

    cfg = train_config(
        "data.num_training=4",
        "data.num_testing=0",
        "data.volume_shape=[32,32,3]",
        "data.num_workers=0",
        "data.num_folds=2",
        "model=unet_small",
        "model.base_channels=4",
        "debug=limit",
        "trainer.max_epochs=1",
        "logger=csv",
    )
    _, summary = train(cfg)
    predict([f"ckpt_path={summary['best_checkpoint']}", f"input={inputs}", f"output_dir={tmp_path / 'masks'}"])
    table = pd.read_csv(tmp_path / "masks" / "predictions.csv")
    assert sorted(table["subject"]) == ["enhanced", "old", "series"] and (table["status"] == "ok").all()
    assert dict(zip(table["subject"], table["slices"])) == {"enhanced": 3, "old": 1, "series": 4}
    for subject in ("enhanced", "old"):
        assert (tmp_path / "masks" / f"{subject}_seg.dcm").is_file()
    assert (tmp_path / "masks" / "series" / "series_seg.dcm").is_file()
