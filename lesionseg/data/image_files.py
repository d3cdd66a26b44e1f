"""Decode one 2D image file (TIFF, PNG/JPG, DICOM) into an array, or fail naming the file.

Every reader turns a decoder's exception, a truncated file included, into a one-line `DataError`
that starts with the path, so a bad file in a thousand is found at once (NIfTI: `nifti.read_volume`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import tifffile
from PIL import Image

from lesionseg.data.cases import DataError
from lesionseg.data.nifti import one_line


def read_tiff(path: Path) -> np.ndarray:
    """The first page of a TIFF as stored: (H, W) or (H, W, C)."""
    try:
        return tifffile.imread(path)
    except Exception as error:  # tifffile raises many types on damaged files
        raise DataError(f"{path}: unreadable TIFF ({one_line(error)})") from error


def read_picture(path: Path, mode: str | None = None) -> np.ndarray:
    """A PNG/JPG as (H, W) or (H, W, C) uint8/uint16; `mode` converts first (e.g. "RGB", "L").

    Pillow, not OpenCV: Pillow raises on a truncated JPG where OpenCV returns a half-grey image.
    """
    try:
        with Image.open(path) as picture:
            picture.load()
            return np.asarray(picture.convert(mode) if mode else picture)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError on damaged files
        raise DataError(f"{path}: unreadable image ({one_line(error)})") from error


def read_dicom_header(path: Path) -> pydicom.Dataset:
    """A DICOM file's tags without its pixels (fast: used to group slices into series)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, ...
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error


def read_dicom_pixels(path: Path) -> np.ndarray:
    """A single-frame DICOM slice as (H, W) float32 with the modality LUT (rescale slope/intercept) applied."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
    except Exception as error:  # pydicom raises on truncated pixel data and missing tags
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a single-frame greyscale DICOM slice, got pixel shape {pixels.shape}")
    return pixels.astype(np.float32)
