"""Stroke DICOM slices labelled by lesion outlines drawn in colour on picture copies of the slices.

The setting of Kalmutskiy & Berikov (2021, seed 003): DICOM slices, of which a few (34 in the paper)
have a JPG copy with the stroke outlined in green; masks come from "green mask, resize, floodfill"
(`colour_masks`), and the segmenter trains on a 4 x 4 grid of sub-images (`grid_datamodule`).

On disk (sub-folders allowed; an image and its label share their path relative to `images/` and
`labels/`, up to the suffix)::

    <root>/
        images/<name>.dcm                  single-frame greyscale DICOM (MR or CT)
        labels/<name>.jpg|.jpeg|.png       the slice rendered as a picture (any size), lesion drawn in
                                           `label_colour` (outlined or filled); optional per slice

Subject: one DICOM series, identified by (PatientID, SeriesInstanceUID); its slices are ordered by
InstanceNumber. A file without those tags is a subject of its own (one slice). A series' labelled
slices form its case; a series without any label is an unlabelled case (prediction only); slices
of a partly labelled series that have no label are left out (their mask is unknown, not empty).
A label without its DICOM slice is an error. Slices of one series must share their size. Two series
of one patient are two subjects (as the DESIGN asks); `Case.meta["patient"]` keeps the PatientID for
a split that must group them.

DICOM as hospitals store it (`read_dicom`, `read_dicom_frames`, `dicom_scan_cases`, used by this layout
and by `predict input=<folder>`): compressed transfer syntaxes (JPEG-LS, JPEG lossless/extended 12-bit,
JPEG 2000, RLE) are decoded by pydicom's plugins (pylibjpeg with libjpeg/openjpeg, pyjpegls), a missing
decoder is a one-line error naming the syntax and the package; a file without the File Meta header is
read as pydicom's `force=True` allows when it holds an image (Rows, Columns, pixel data), with the
transfer syntax pydicom found it encoded in; a multi-frame image is a stack of slices in frame order
(classic or enhanced: positions, spacing and rescale from its functional groups); the slices of one
series in one folder are one volume, sorted along the slice normal by ImagePositionPatient (by
InstanceNumber without it), with its geometry kept (`DicomPlane`, `series_affine`). Colour images (e.g.
ultrasound) and data sets without pixel data stay one-line errors.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.colour_masks import LabelColour, extract_colour_mask
from lesionseg.data.image_files import check_dicom_pixels, read_picture
from lesionseg.data.nifti import one_line

LABEL_SUFFIXES = (".png", ".jpg", ".jpeg")
LOOKS_FOR = "the dicom_stroke layout (<root>/images/<name>.dcm with colour-drawn labels <root>/labels/<name>.{png,jpg})"


def _key(path: Path, folder: Path) -> str:
    """Path relative to `folder` without suffix: what pairs an image with its label."""
    return path.relative_to(folder).with_suffix("").as_posix()


def _subject_id(header: Dataset, path: Path, root: Path) -> tuple[str, dict[str, str]]:
    """Subject id and meta of one slice: its series, or the file itself without series tags."""
    patient = str(header.get("PatientID", "") or "").strip()
    series = str(header.get("SeriesInstanceUID", "") or "").strip()
    if not (patient and series):
        return _key(path, root / "images"), {}
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{patient}_{series}"), {"patient": patient, "series": series}


@dataclass(frozen=True)
class DicomStrokeLayout:
    """DICOM slices + colour-drawn label pictures, one subject per DICOM series."""

    label_colour: LabelColour = field(default_factory=LabelColour)
    name: ClassVar[str] = "dicom_stroke"
    looks_for: ClassVar[str] = LOOKS_FOR

    def detect(self, root: Path) -> bool:
        return (Path(root) / "images").is_dir() and any((Path(root) / "images").rglob("*.dcm"))

    def find(self, root: Path) -> list[Case]:
        root = Path(root)
        images_folder, labels_folder = root / "images", root / "labels"
        if not self.detect(root):
            raise DataError(f"{root}: no DICOM slices under images/; looked for {LOOKS_FOR}")
        labels = self._labels(labels_folder) if labels_folder.is_dir() else {}
        slices: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        metas: dict[str, dict[str, str]] = {}
        for path in sorted(images_folder.rglob("*.dcm")):
            header = read_dicom(path, stop_before_pixels=True)
            subject, metas[subject] = _subject_id(header, path, root)
            slices[subject].append((int(header.get("InstanceNumber", 0) or 0), path))
        image_keys = {_key(path, images_folder) for series in slices.values() for _, path in series}
        for key, label in labels.items():
            if key not in image_keys:
                raise DataError(f"{label}: label has no DICOM slice (expected images/{key}.dcm)")
        cases = []
        for subject in sorted(slices):
            ordered = [path for _, path in sorted(slices[subject])]
            labelled = [path for path in ordered if _key(path, images_folder) in labels]
            cases.append(
                Case(
                    subject=subject,
                    image=tuple(labelled or ordered),
                    mask=tuple(labels[_key(path, images_folder)] for path in labelled),
                    meta=metas[subject],
                )
            )
        return cases

    @staticmethod
    def _labels(folder: Path) -> dict[str, Path]:
        labels: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in LABEL_SUFFIXES:
                raise DataError(f"{path}: unsupported label file (use {', '.join(LABEL_SUFFIXES)})")
            key = _key(path, folder)
            if key in labels:
                raise DataError(f"{path}: same name as {labels[key].name}; keep one label per slice")
            labels[key] = path
        return labels

    def load(self, case: Case) -> CaseArrays:
        slices = [read_dicom_slice(path) for path in case.image]
        for path, pixels in zip(case.image, slices):
            if pixels.shape != slices[0].shape:
                first = f"{case.image[0].name} {slices[0].shape}"
                raise DataError(f"{path}: slice shape {pixels.shape} differs from {first} in the same series")
        image = np.stack(slices)[:, np.newaxis]
        if not case.labelled:
            return CaseArrays(image=image, mask=None)
        mask = np.stack([self.label_mask(path, slices[0].shape) for path in case.mask])
        if not mask.any():  # a lesion-free slice has an empty label; a series of them hints at the wrong colour
            where = case.mask[0] if len(case.mask) == 1 else f"{case.mask[0].parent} ({len(case.mask)} labels of {case.subject})"
            warnings.warn(f"{where}: nothing drawn in {self.label_colour.hue!r}; the mask is empty", stacklevel=2)
        return CaseArrays(image=image, mask=mask)

    def label_mask(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        """The uint8 {0, 1} mask of one label picture on the DICOM grid `size` (H, W)."""
        return extract_colour_mask(read_picture(path, mode="RGB"), size, self.label_colour)


# ---- DICOM as hospitals store it --------------------------------------------------------------
DICOM_SUFFIX = ".dcm"


def is_dicom_file(path: Path) -> bool:
    """A `.dcm` file, or any file with the DICOM Part 10 preamble ("DICM" at byte 128)."""
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM data set; without the File Meta header, read as pydicom's `force=True` allows if it holds an image.

    A forced read must find Rows and Columns (and pixel data, unless `stop_before_pixels`); its transfer
    syntax is then the encoding pydicom found (implicit or explicit VR, little or big endian).
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except Exception as error:  # pydicom raises EOFError, ValueError, ... on damaged files
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        is_image = "Rows" in dataset and "Columns" in dataset and (stop_before_pixels or "PixelData" in dataset)
    except Exception as error:  # a forced read of something else fails anywhere
        raise DataError(f"{path}: not a DICOM file ({one_line(error)})") from error
    if not is_image:
        raise DataError(f"{path}: not a DICOM image (no File Meta header, and no Rows, Columns and pixel data)")
    implicit, little_endian = dataset.original_encoding
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    return dataset


@dataclass(frozen=True)
class DicomPlane:
    """Where one frame lies (patient coordinates, LPS mm): None where the data set does not say.

    `spacing` is DICOM's PixelSpacing: (between rows, between columns).
    """

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    spacing: tuple[float, float] | None
    thickness: float | None

    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        return np.cross(self.orientation[:3], self.orientation[3:])


def _frame_value(dataset: Dataset, frame: int, sequence: str, attribute: str):
    """`attribute` of an (enhanced) frame: per-frame functional group, then shared group, then top level."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in dataset and frame < len(dataset.PerFrameFunctionalGroupsSequence):
        groups.append(dataset.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in dataset and len(dataset.SharedFunctionalGroupsSequence):
        groups.append(dataset.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and len(group[sequence].value) and attribute in group[sequence][0]:
            return group[sequence][0][attribute].value
    return dataset.get(attribute)


def _floats(value, count: int) -> tuple | None:
    if value is None or len(value) != count:
        return None
    return tuple(float(item) for item in value)


def dicom_planes(dataset: Dataset) -> list[DicomPlane]:
    """The plane of every frame of `dataset` (one for a single-frame image)."""
    planes = []
    for frame in range(int(dataset.get("NumberOfFrames", 1) or 1)):
        thickness = _frame_value(dataset, frame, "PixelMeasuresSequence", "SliceThickness")
        planes.append(
            DicomPlane(
                position=_floats(_frame_value(dataset, frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(_frame_value(dataset, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                spacing=_floats(_frame_value(dataset, frame, "PixelMeasuresSequence", "PixelSpacing"), 2),
                thickness=None if thickness in (None, "") else float(thickness),
            )
        )
    return planes


def read_dicom_frames(path: Path) -> tuple[np.ndarray, list[DicomPlane]]:
    """Every frame of a greyscale DICOM image as (N, H, W) float32 with the modality LUT applied, and their planes.

    Enhanced multi-frame images rescale each frame by its Pixel Value Transformation; other images
    through pydicom's modality LUT (slope/intercept or a LUT sequence).
    """
    dataset = read_dicom(path)
    check_dicom_pixels(path, dataset)
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        stored = dataset.pixel_array.reshape(frames, int(dataset.Rows), int(dataset.Columns))
        if "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset:
            slopes = [float(_frame_value(dataset, f, "PixelValueTransformationSequence", "RescaleSlope") or 1.0) for f in range(frames)]
            intercepts = [float(_frame_value(dataset, f, "PixelValueTransformationSequence", "RescaleIntercept") or 0.0) for f in range(frames)]
            pixels = stored * np.array(slopes)[:, None, None] + np.array(intercepts)[:, None, None]
        else:
            pixels = pydicom.pixels.apply_modality_lut(stored, dataset)
    except Exception as error:  # pydicom raises on truncated pixel data and missing tags
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: DICOM pixels hold NaN or infinite values")
    return pixels.astype(np.float32), dicom_planes(dataset)


def read_dicom_slice(path: Path) -> np.ndarray:
    """A single-frame DICOM slice as (H, W) float32 (this layout pairs one label picture with one slice)."""
    frames, _ = read_dicom_frames(path)
    if len(frames) != 1:
        raise DataError(f"{path}: {len(frames)} frames; a label picture pairs with a single-frame slice (predict reads multi-frame images)")
    return frames[0]


def _slice_order(paths: Sequence[Path], headers: dict[Path, Dataset]) -> list[Path]:
    """Slices of one series along the slice normal by ImagePositionPatient, else by InstanceNumber, then name."""
    planes = {path: dicom_planes(headers[path])[0] for path in paths}
    first = planes[paths[0]]
    normal = first.normal()
    if normal is not None and all(plane.position is not None for plane in planes.values()):
        along = {path: float(np.dot(normal, np.asarray(plane.position))) for path, plane in planes.items()}
        ordered = sorted(paths, key=lambda path: (along[path], path.name))
        for previous, path in zip(ordered, ordered[1:]):
            if abs(along[path] - along[previous]) < 1e-3:
                raise DataError(f"{path}: same ImagePositionPatient as {previous.name} in one series (two acquisitions?); keep one")
        return ordered
    return sorted(paths, key=lambda path: (int(headers[path].get("InstanceNumber", 0) or 0), path.name))


def series_affine(planes: Sequence[DicomPlane]) -> np.ndarray | None:
    """The 4 x 4 NIfTI (RAS) affine of a stack of planes as (column, row, slice) voxels.

    None when the planes do not form one regular grid: a position, orientation or spacing missing, or
    slices not equally spaced along one line (frames stored out of order, variable spacing).
    """
    first = planes[0]
    positions = [plane.position for plane in planes]
    if first.orientation is None or first.spacing is None or any(position is None for position in positions):
        return None
    row_step, column_step = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = np.array(first.orientation[:3]) * column_step
    lps[:3, 1] = np.array(first.orientation[3:]) * row_step
    points = np.array(positions, dtype=float)
    if len(planes) > 1:
        lps[:3, 2] = (points[-1] - points[0]) / (len(planes) - 1)
        expected = points[0] + np.arange(len(planes))[:, None] * lps[:3, 2]
        if not lps[:3, 2].any() or np.abs(points - expected).max() > 0.01 * max(float(np.linalg.norm(lps[:3, 2])), 1e-3):
            return None
    else:
        lps[:3, 2] = np.cross(first.orientation[:3], first.orientation[3:]) * (first.thickness or 1.0)
    lps[:3, 3] = points[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_dicom_volume(case: Case) -> CaseArrays:
    """A scan of DICOM files (a series of slices in order, or one multi-frame file) as (Z, 1, H, W) and its affine."""
    stacks: list[np.ndarray] = []
    planes: list[DicomPlane] = []
    for path in case.image:
        frames, frame_planes = read_dicom_frames(path)
        if stacks and frames.shape[1:] != stacks[0].shape[1:]:
            raise DataError(f"{path}: slice shape {frames.shape[1:]} differs from {case.image[0].name} {stacks[0].shape[1:]} in the same series")
        stacks.append(frames)
        planes.extend(frame_planes)
    return CaseArrays(image=np.concatenate(stacks)[:, np.newaxis], mask=None, affine=series_affine(planes))


def dicom_scan_cases(files: Sequence[Path], root: Path) -> list[Case]:
    """The scans among DICOM `files` found under `root`: each series of single-frame files in one folder
    is one case (slices in spatial order), every other file (multi-frame, or alone in its series) one case;
    DICOM SEG objects (predictions) are skipped.

    A one-file case's subject is its path below `root` without the suffix (`/` -> `_`), as for other
    scan files; a series' subject is its folder's path below `root` (the folder's name for `root`
    itself), plus `_<SeriesNumber>` when the folder holds several series.
    """
    headers = {path: read_dicom(path, stop_before_pixels=True) for path in files}
    headers = {path: header for path, header in headers.items() if header.get("Modality") != "SEG"}  # this tool's own output
    groups: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for path, header in headers.items():
        series = str(header.get("SeriesInstanceUID", "") or "")
        alone = not series or int(header.get("NumberOfFrames", 1) or 1) > 1
        groups[(path.parent, str(path) if alone else series)].append(path)
    series_per_folder = Counter(folder for (folder, _), paths in groups.items() if len(paths) > 1)
    base = root if root.is_dir() else root.parent
    cases = []
    for (folder, series), paths in groups.items():
        if len(paths) == 1:
            relative = str(paths[0].relative_to(base))
            subject = (relative[: -len(DICOM_SUFFIX)] if relative.lower().endswith(DICOM_SUFFIX) else relative).replace(os.sep, "_")
            cases.append(Case(subject, (paths[0],), (), {"series": series}))
            continue
        relative_folder = folder.relative_to(base)
        subject = "_".join(relative_folder.parts) or base.name
        if series_per_folder[folder] > 1:
            subject += f"_{headers[paths[0]].get('SeriesNumber', '') or series[-8:]}"
        cases.append(Case(subject, tuple(_slice_order(paths, headers)), (), {"series": series}))
    return sorted(cases, key=lambda case: case.subject)
