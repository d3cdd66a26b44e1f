"""Scans to predict on, and their predicted masks written back in each scan's own format and geometry.

A *scan* is a case without the need for a mask: a file (or a dataset layout's case) that is decoded
into (Z, C, H, W) slices exactly as in training. Two sources:

- `input_scans(path)`: a file or a folder of files, each file one scan: NIfTI volumes
  (`.nii`/`.nii.gz`, cut into axial slices as for ATLAS), 2D pictures (PNG/JPG/TIFF) and DICOM images
  (`.dcm` or with the DICM preamble; the slices of one series in one folder are one scan, a multi-frame
  file is one: `dicom_stroke.dicom_scan_cases`). Files whose stem ends in `_mask` (LGG's masks, and this tool's own outputs) are skipped.
- `layout_scans(cases, layout)`: the cases a dataset layout found under `data.root` (e.g. ATLAS
  R2.0 `Testing/` subjects, which have no mask).

`write_prediction` puts the mask where a researcher looks for it, in the geometry of the source:
a NIfTI scan gets `<subject>_mask.nii.gz` with the source's affine and header (so it overlays the scan
in any viewer); a scan made of 2D files gets one `<stem>_mask.png` (0/255, or class indices) per
slice, and a DICOM scan also a DICOM SEG `<subject>_seg.dcm` referencing it (`dicom_seg`). Every file
is written under a temporary name and renamed, so no half-written mask is left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import cv2
import nibabel as nib
import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError, Layout
from lesionseg.data.dicom_seg import write_dicom_seg
from lesionseg.data.dicom_stroke import dicom_scan_cases, is_dicom_file, read_dicom_volume
from lesionseg.data.folder import (
    NIFTI_SUFFIXES,
    SUFFIXES,
    read_planes,
    split_suffix,
    to_channels,
)
from lesionseg.data.nifti import axial_volume
from lesionseg.outputs import atomic_save

DICOM_SUFFIX = ".dcm"
MASK_STEM_SUFFIX = "_mask"


@dataclass(frozen=True)
class Scan:
    """One scan: its case (subject id, source files in slice order) and how to decode it."""

    case: Case
    decode: Callable[[], CaseArrays]

    @property
    def is_volume(self) -> bool:
        """True when the scan is one NIfTI volume, or one per channel (nnU-Net raw): the mask is written as NIfTI in the first one's geometry."""
        return bool(self.case.image) and all(path.name.lower().endswith(NIFTI_SUFFIXES) for path in self.case.image)


def _scan_suffix(path: Path) -> str | None:
    """The supported suffix of a scan file, or None for files that are not scans."""
    if path.name.lower().endswith(DICOM_SUFFIX):
        return DICOM_SUFFIX
    try:
        return split_suffix(path)[1]
    except DataError:
        return None


def _decode_file(path: Path, channels: int) -> CaseArrays:
    """One scan file as (Z, channels, H, W) float32 (a NIfTI keeps its affine)."""
    planes, affine = read_planes(path)
    return CaseArrays(image=to_channels(planes, channels, path), mask=None, affine=affine)


def input_scans(path: Path, channels: int) -> list[Scan]:
    """Every scan file at `path` (a file, or a folder searched recursively), sorted by subject id.

    The subject id is the file's path below the folder without its suffix, `/` replaced by `_`.
    """
    path = path.expanduser()
    if not path.exists():
        raise DataError(f"{path}: input not found")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    scans = []
    dicom_files = [file for file in files if is_dicom_file(file)]  # a series in one folder is one scan (dicom_stroke.dicom_scan_cases)
    scans += [Scan(case, partial(read_dicom_volume, case)) for case in dicom_scan_cases(dicom_files, path)]
    for file in sorted(set(files) - set(dicom_files)):
        suffix = _scan_suffix(file)
        if suffix is None:
            if path.is_file():
                raise DataError(f"{file}: unsupported file type (use {', '.join((*SUFFIXES, DICOM_SUFFIX))})")
            continue
        relative = file.relative_to(path) if path.is_dir() else Path(file.name)
        subject = str(relative)[: -len(suffix)].replace(os.sep, "_")
        if subject.endswith(MASK_STEM_SUFFIX):
            continue
        scans.append(Scan(Case(subject, (file,)), partial(_decode_file, file, channels)))
    if not scans:
        raise DataError(f"{path}: no scans found (looked for {', '.join((*SUFFIXES, DICOM_SUFFIX))} files)")
    return sorted(scans, key=lambda scan: scan.case.subject)


def layout_scans(cases: list[Case], layout: Layout) -> list[Scan]:
    """Scans for the cases a dataset layout found; decoding goes through the layout itself."""
    return [Scan(case, partial(layout.load, case)) for case in cases]


def nifti_header_of(source: Path) -> nib.Nifti1Image:
    """The source scan's image object for its affine and header only (nibabel reads voxels lazily, and the
    scan's voxels were already decoded and verified when it was predicted): no second decompression."""
    return cast(nib.Nifti1Image, nib.load(str(source)))


def _write_nifti_mask(source: Path, mask: np.ndarray, path: Path) -> None:
    """(Z, H, W) axial mask -> NIfTI with the source's affine and header, uint8."""
    reference = nifti_header_of(source)
    volume = axial_volume(mask.astype(np.uint8))
    image = nib.Nifti1Image(volume, reference.affine, reference.header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    atomic_save(path, lambda temporary: nib.save(image, str(temporary)))


def _write_png(mask: np.ndarray, path: Path, binary: bool) -> None:
    """A (H, W) mask as PNG: 0/255 when binary, class indices otherwise."""
    picture = (mask > 0).astype(np.uint8) * 255 if binary else mask.astype(np.uint8)

    def save(temporary: Path) -> None:
        if not cv2.imwrite(str(temporary), picture):
            raise DataError(f"{path}: could not write the mask")

    atomic_save(path, save)


def voxel_volume_ml(scan: Scan) -> float | None:
    """Volume of one voxel in millilitres (NIfTI scans; None for 2D pictures without spacing)."""
    if not scan.is_volume:
        return None
    zooms = nifti_header_of(scan.case.image[0]).header.get_zooms()[:3]
    return float(np.prod(zooms)) / 1000.0


def write_prediction(scan: Scan, mask: np.ndarray, folder: Path, binary: bool = True) -> list[Path]:
    """Write the (Z, H, W) mask of `scan` (decoded slice geometry) into `folder`; return the files."""
    subject = scan.case.subject
    if scan.is_volume:
        path = folder / f"{subject}{MASK_STEM_SUFFIX}.nii.gz"
        _write_nifti_mask(scan.case.image[0], mask, path)
        return [path]
    if len(scan.case.image) == 1:  # one picture: one slice (or a multi-page file written page by page)
        names = [f"{subject}{MASK_STEM_SUFFIX}.png"] if len(mask) == 1 else [f"{subject}_{z:03d}{MASK_STEM_SUFFIX}.png" for z in range(len(mask))]
        paths = [folder / name for name in names]
    else:  # one file per slice (LGG TIFFs, DICOM slices): one mask per source file, in a subject folder
        if len(scan.case.image) != len(mask):
            raise DataError(f"{scan.case.image[0]}: {len(scan.case.image)} slice files but {len(mask)} predicted slices")
        (folder / subject).mkdir(parents=True, exist_ok=True)
        paths = [folder / subject / f"{split_stem(source)}{MASK_STEM_SUFFIX}.png" for source in scan.case.image]
    for plane, path in zip(mask, paths):
        _write_png(plane, path, binary)
    if all(is_dicom_file(source) for source in scan.case.image):  # and a DICOM SEG beside the PNGs, for PACS viewers
        write_dicom_seg(scan.case.image, mask, paths[0].parent / f"{subject}_seg.dcm", binary)
    return paths


def write_probabilities(scan: Scan, probabilities: np.ndarray, folder: Path) -> Path:
    """Save (Z, K, H, W) class probabilities as `<subject>_probabilities.npz` (float16, nnU-Net's habit)."""
    path = folder / f"{scan.case.subject}_probabilities.npz"
    atomic_save(path, lambda temporary: np.savez_compressed(temporary, probabilities=probabilities.astype(np.float16)))
    return path


def write_volume_map(scan: Scan, values: np.ndarray, folder: Path, name: str) -> Path:
    """Save a (Z, H, W) float map of a NIfTI scan as `<subject>_<name>.nii.gz` (float32, the scan's affine and header)."""
    path = folder / f"{scan.case.subject}_{name}.nii.gz"
    reference = nifti_header_of(scan.case.image[0])
    image = nib.Nifti1Image(axial_volume(values.astype(np.float32)), reference.affine, reference.header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    atomic_save(path, lambda temporary: nib.save(image, str(temporary)))
    return path


def split_stem(path: Path) -> str:
    """A file's name without its scan suffix (`.nii.gz` and `.dcm` included)."""
    suffix = _scan_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name  # DICOM files named by UID: 1.2.840....5
