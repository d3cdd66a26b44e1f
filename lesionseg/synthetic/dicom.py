"""Synthetic stroke DICOM: phantom slices written in the dicom_stroke layout (`data=synthetic_dicom`).

The setting of Kalmutskiy & Berikov (2021, seed 003): 34 labelled DICOM slices whose labels are JPG
copies with the stroke outlined in green. `data=synthetic_dicom` generates such a study once per
parameter set, deterministically from a seed, into `<cache_dir>/synthetic/<params-hash>/`, and
reads it with exactly the `data=dicom_stroke` code path (`DicomStrokeLayout`, colour-mask extraction,
the 4 x 4 grid of sub-images).

What is generated, and why:

- 17 series (subjects) of 2 slices = 34 labelled slices, as the study. In each series one slice shows
  one stroke and the other none: the study validated on "8 (4+4) images" and reports a false-positive
  rate, so its classifier gate needs lesion-free slices to decide on. Two more series are unlabelled
  (prediction only, as the study's 30 GB of unlabelled slices).
- 256 x 256 slices, a standard MR matrix (the study does not state its size), 16-bit MONOCHROME2,
  1 mm pixels. The label pictures are 512 x 512 JPGs (quality 90) with a 1-pixel green outline, as an annotator's
  screen copy: the layout has to undo the colour, the JPEG damage and the resize.
- One stroke per lesion slice of 1500 to 6000 px (2.3 % to 9 % of the slice; a disc of radius 22 to
  44 px), T1-hypointense (below grey matter). The recipe keeps the largest connected component and
  drops it below 1200 px: the smallest lesion is 1.25 x that minimum, so a prediction that covers
  at least 80 % of the smallest lesion survives the clean-up, and a one-lesion slice is what "keep
  the largest component" assumes. At smaller slice sizes (`size` < 256) the same fractions fall
  under 1200 px (lesion areas scale with the slice, `LESION_FRACTION`) and the clean-up would erase
  every lesion: keep `size` >= 256 for the stroke_fewshot recipe, or scale `inference.min_size` with it.

`write_synthetic_dicom_stroke` is the small, general writer the layout tests use (series cut from a
3D phantom, JPG outlines and PNG fills alternating).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lesionseg.data.grid_datamodule import GridDataModule
from lesionseg.data.nifti import axial_slices
from lesionseg.synthetic.cache import SyntheticDataModule
from lesionseg.synthetic.phantom import Phantom, phantom

# Stroke area as a fraction of the slice: 1500 to 6000 px on 256 x 256 (see the module docstring).
LESION_FRACTION = (1500 / 256**2, 6000 / 256**2)


def dicom_slice(pixels: np.ndarray, patient: str, series_uid: str, study_uid: str, number: int, uid_seed: str) -> Dataset:
    """A valid single-frame 16-bit MONOCHROME2 MR Image Storage dataset holding `pixels` (uint16), 1 mm pixels.

    The patient, study and frame-of-reference attributes a DICOM SEG needs to reference it are present (empty where optional).
    """
    sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop", str(number)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = sop_uid
    dataset.PatientID = patient
    dataset.PatientName = f"Phantom^{patient}"
    dataset.PatientBirthDate = dataset.PatientSex = ""
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = dataset.StudyTime = dataset.StudyID = dataset.AccessionNumber = dataset.ReferringPhysicianName = ""
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = 1
    dataset.FrameOfReferenceUID = generate_uid(entropy_srcs=[uid_seed, "frame of reference"])
    dataset.Modality = "MR"
    dataset.Manufacturer = "lesionseg phantom"
    dataset.InstanceNumber = number
    dataset.ImagePositionPatient = [0.0, 0.0, float(number)]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = [1.0, 1.0]
    dataset.SliceThickness = 1.0
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = 0
    dataset.PixelData = pixels.astype("<u2").tobytes()
    return dataset


def label_picture(pixels: np.ndarray, mask: np.ndarray, size: int, filled: bool) -> np.ndarray:
    """What an annotator hands over: the slice as an 8-bit grey RGB picture, lesion drawn in green."""
    grey = cv2.resize((pixels * (255.0 / max(float(pixels.max()), 1.0))).astype(np.uint8), (size, size))
    picture = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    lesion = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(lesion, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, color=(0, 255, 0), thickness=cv2.FILLED if filled else 1)
    return picture


def _series_uids(seed: int | str, patient: str) -> tuple[str, str, str]:
    """(uid seed, series UID, study UID) of one patient's series, deterministic."""
    uid_seed = f"{seed}-{patient}"
    return uid_seed, generate_uid(entropy_srcs=[uid_seed, "series"]), generate_uid(entropy_srcs=[uid_seed, "study"])


def _to_uint16(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 10.0, 0, 65535).astype(np.uint16)


def write_synthetic_dicom_stroke(
    root: Path,
    n_subjects: int,
    seed: int = 0,
    slices_per_series: int = 2,
    size: int = 64,
    label_size: int | None = None,
    n_unlabelled: int = 0,
) -> Path:
    """Write phantom series in the dicom_stroke layout under `root` (returns `root`).

    Each subject is one series (its own PatientID and SeriesInstanceUID) of `slices_per_series`
    16-bit DICOM slices cut from a 3D phantom with a hypointense stroke. Every slice gets a label
    copy at `label_size` (default: the DICOM size), alternately JPG with a green outline and PNG
    with the lesion filled green, as annotators deliver them. `n_unlabelled` more series get no labels.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_subjects + n_unlabelled):
        patient = f"STROKE{index:03d}"
        uid_seed, series_uid, study_uid = _series_uids(seed, patient)
        case = phantom((size, size, slices_per_series), rng, lesion_intensity=40.0)
        pixels = _to_uint16(axial_slices(case.image))
        masks = axial_slices(case.mask)
        for number in range(1, slices_per_series + 1):
            name = f"{patient}_{number:03d}"
            dataset = dicom_slice(pixels[number - 1], patient, series_uid, study_uid, number, uid_seed)
            dataset.save_as(root / "images" / f"{name}.dcm", enforce_file_format=True)
            if index >= n_subjects:
                continue
            filled = index % 2 == 1
            picture = label_picture(pixels[number - 1], masks[number - 1], label_size or size, filled)
            if filled:
                Image.fromarray(picture).save(root / "labels" / f"{name}.png")
            else:
                Image.fromarray(picture).save(root / "labels" / f"{name}.jpg", quality=95)
    return root


def stroke_slice(rng: np.random.Generator, size: int, lesion: bool) -> Phantom:
    """A 2D (size x size) phantom with one stroke of LESION_FRACTION of the slice, or none.

    Lesion draws outside the area range are redrawn from the same generator (deterministic).
    """
    if not lesion:
        return phantom((size, size), rng, num_lesions=(0, 0))
    low, high = (fraction * size * size for fraction in LESION_FRACTION)
    while True:
        sample = phantom((size, size), rng, num_lesions=(1, 1), lesion_radius=(0.09, 0.17), lesion_intensity=40.0)
        if low <= sample.mask.sum() <= high:
            return sample


def write_stroke_study(
    root: Path,
    num_series: int = 17,
    slices_per_series: int = 2,
    num_unlabelled: int = 2,
    size: int = 256,
    label_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a study like Kalmutskiy & Berikov's in the dicom_stroke layout under `root` (returns `root`).

    Series `i` has `slices_per_series` independent 2D slices; odd-numbered slices show one stroke,
    even-numbered ones none. Labelled series get a `label_size` JPG per slice, stroke outlined in
    green; `num_unlabelled` more series get no labels.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for index in range(num_series + num_unlabelled):
        rng = np.random.default_rng([seed, index])
        patient = f"STROKE{index:03d}"
        uid_seed, series_uid, study_uid = _series_uids(seed, patient)
        for number in range(1, slices_per_series + 1):
            sample = stroke_slice(rng, size, lesion=number % 2 == 1)
            pixels = _to_uint16(sample.image.T)  # phantoms are (x, y): rows are y
            name = f"{patient}_{number:03d}"
            dicom_slice(pixels, patient, series_uid, study_uid, number, uid_seed).save_as(root / "images" / f"{name}.dcm", enforce_file_format=True)
            if index < num_series:
                picture = label_picture(pixels, sample.mask.T, label_size, filled=False)
                Image.fromarray(picture).save(root / "labels" / f"{name}.jpg", quality=90)
    return root


class SyntheticDicomDataModule(SyntheticDataModule, GridDataModule):
    """The grid-of-sub-images DataModule over a study `writer` generates in `<root or cache_dir/synthetic>/<params-hash>/`."""
