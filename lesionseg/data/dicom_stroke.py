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
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydicom.dataset import Dataset

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.colour_masks import LabelColour, extract_colour_mask
from lesionseg.data.image_files import read_dicom_header, read_dicom_pixels, read_picture

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
            header = read_dicom_header(path)
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
        slices = [read_dicom_pixels(path) for path in case.image]
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
