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
from pydicom.pixels import get_decoder

from lesionseg.data.cases import DataError
from lesionseg.data.nifti import one_line
from lesionseg.data.validate import check_dtype, check_voxel_count

# Pillow modes with an intensity meaning: bilevel, greyscale (8/16/32-bit, float), palette (masks:
# indices), RGB(A) and grey+alpha. CMYK, YCbCr, LAB, HSV are refused rather than misread as RGBA.
PICTURE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F")
# DICOM photometric interpretations that are intensities (greyscale) or plain colour.
DICOM_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


def read_tiff(path: Path) -> np.ndarray:
    """The first page of a TIFF as stored: (H, W) or (H, W, C); its shape and type checked before decoding."""
    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.pages:
                raise DataError(f"{path}: unreadable TIFF (no image in it)")
            page = tiff.pages.first
            check_voxel_count(path, page.shape)
            check_dtype(path, np.dtype(page.dtype) if page.dtype is not None else np.dtype("V1"), f"TIFF sample format {page.dtype}")
            return page.asarray()
    except DataError:
        raise
    except Exception as error:  # tifffile raises many types on damaged files
        raise DataError(f"{path}: unreadable TIFF ({one_line(error)})") from error


def read_picture(path: Path, mode: str | None = None) -> np.ndarray:
    """A PNG/JPG as (H, W) or (H, W, C) uint8/uint16; `mode` converts first (e.g. "RGB", "L").

    Pillow, not OpenCV: Pillow raises on a truncated JPG where OpenCV returns a half-grey image, and
    checks every PNG chunk's CRC. The size is checked against `LESIONSEG_MAX_VOXELS` before decoding.
    """
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            check_voxel_count(path, (height, width, len(picture.getbands())))
            if picture.mode not in PICTURE_MODES:
                raise DataError(f"{path}: unsupported colour mode {picture.mode}; save it as greyscale or RGB")
            if picture.format == "PNG":  # every chunk's CRC and the closing IEND, which decoding alone skips
                picture.verify()
        with Image.open(path) as picture:
            picture.load()
            return np.asarray(picture.convert(mode) if mode else picture)
    except DataError:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError on damaged files
        raise DataError(f"{path}: unreadable image ({one_line(error)})") from error


def read_dicom_header(path: Path) -> pydicom.Dataset:
    """A DICOM file's tags without its pixels (fast: used to group slices into series)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, ...
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error


def check_dicom_pixels(path: Path, dataset: pydicom.Dataset) -> None:
    """DataError, before decoding, for pixel data this project cannot read as intensities.

    Refused: colour (palette indices would be read as intensities; RGB/YBR is not a scan), more
    voxels than `LESIONSEG_MAX_VOXELS`, and a compressed transfer syntax whose decoder is not
    installed (the message names the syntax and the packages that decode it).
    """
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise DataError(f"{path}: DICOM holds no pixel data")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in DICOM_PHOTOMETRIC:
        raise DataError(f"{path}: unsupported DICOM photometric interpretation {photometric}; expected a greyscale slice ({', '.join(DICOM_PHOTOMETRIC)})")
    shape = (int(dataset.get("NumberOfFrames", 1) or 1), int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0)), int(dataset.get("SamplesPerPixel", 1)))
    check_voxel_count(path, shape)
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DataError(f"{path}: DICOM transfer syntax {syntax.name} ({syntax}) has no pixel decoder in pydicom") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise DataError(f"{path}: DICOM pixel data in {syntax.name} ({syntax}) needs a decoder that is not installed: {needs}")


def read_dicom_pixels(path: Path) -> np.ndarray:
    """A single-frame DICOM slice as (H, W) float32 with the modality LUT (rescale slope/intercept) applied."""
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, ...
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error
    check_dicom_pixels(path, dataset)
    try:
        pixels = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset)
    except Exception as error:  # pydicom raises on truncated pixel data and missing tags
        raise DataError(f"{path}: unreadable DICOM ({one_line(error)})") from error
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a single-frame greyscale DICOM slice, got pixel shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: DICOM pixels hold NaN or infinite values")
    return pixels.astype(np.float32)
