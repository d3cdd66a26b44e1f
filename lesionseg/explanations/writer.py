"""Saliency maps written in each scan's own geometry and format.

A NIfTI scan gets `<subject>_<method>_saliency.nii.gz`: float32 in [0, 1], the scan's affine and
header, so it overlays the scan in any viewer (slices that were not explained hold 0). A scan made
of 2D pictures gets `<subject>_<method>_saliency.npy` (float32, (H, W) for one picture, (Z, H, W)
for a series) and an 8-bit PNG per explained slice (`..._saliency.png`, 0..255 = 0..1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from lesionseg.data.cases import DataError
from lesionseg.data.nifti import axial_volume
from lesionseg.data.scans import Scan


def write_saliency(scan: Scan, method: str, volume: np.ndarray, explained: Sequence[int], folder: Path) -> list[Path]:
    """Write the (Z, H, W) map of `method` for `scan` (slice geometry of the decoded scan); return the files."""
    stem = f"{scan.case.subject}_{method}_saliency"
    volume = np.clip(volume, 0.0, 1.0).astype(np.float32)
    if scan.is_volume:
        reference = nib.nifti1.load(str(scan.case.image[0]))
        image = nib.Nifti1Image(axial_volume(volume), reference.affine, reference.header)
        image.set_data_dtype(np.float32)
        image.header.set_slope_inter(1.0, 0.0)
        path = folder / f"{stem}.nii.gz"
        nib.save(image, str(path))
        return [path]
    array = folder / f"{stem}.npy"
    np.save(array, volume[0] if len(volume) == 1 else volume)
    paths = [array]
    for z in explained:
        picture = folder / (f"{stem}.png" if len(volume) == 1 else f"{scan.case.subject}_z{z:03d}_{method}_saliency.png")
        if not cv2.imwrite(str(picture), np.round(volume[z] * 255).astype(np.uint8)):
            raise DataError(f"{picture}: could not write the saliency picture")
        paths.append(picture)
    return paths
