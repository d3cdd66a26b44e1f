"""NIfTI volumes in and out, and the axial slicing every 3D layout shares.

A volume on disk is indexed (x, y, z); the pipeline wants axial slices (Z, H, W) with H = y rows and
W = x columns, so an ATLAS slice is 233x197 as in X-Net (Qi et al., MICCAI 2019).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.data.cases import DataError


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, for DataError messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a 3D NIfTI file into (x, y, z) float32 voxels and its affine; DataError if unreadable."""
    try:
        image = nib.load(str(path))
        voxels = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: unreadable NIfTI ({one_line(exc)})") from exc
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {voxels.shape}")
    return voxels, image.affine


def write_volume(path: Path, voxels: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write (x, y, z) voxels as NIfTI (1 mm isotropic identity affine unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(voxels, np.eye(4) if affine is None else affine), str(path))


def axial_slices(voxels: np.ndarray) -> np.ndarray:
    """(x, y, z) -> (z, y, x): axial slices with y as rows and x as columns."""
    return np.ascontiguousarray(np.transpose(voxels, (2, 1, 0)))


def axial_volume(slices: np.ndarray) -> np.ndarray:
    """Inverse of `axial_slices`: (z, y, x) -> (x, y, z), e.g. to write a prediction back as NIfTI."""
    return np.ascontiguousarray(np.transpose(slices, (2, 1, 0)))
