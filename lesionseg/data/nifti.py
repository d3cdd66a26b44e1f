"""NIfTI volumes in and out, and the axial slicing every 3D layout shares.

A volume on disk is indexed (x, y, z); the pipeline wants axial slices (Z, H, W) with H = y rows and
W = x columns, so an ATLAS slice is 233x197 as in X-Net (Qi et al., MICCAI 2019).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from lesionseg.data.cases import DataError
from lesionseg.data.validate import check_dtype, check_voxel_count

HEADER_SIZES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
# Bytes a file may hold beyond its header's voxels (NIfTI extensions sit before the voxels; a little
# padding after them is common); more is refused as a decompression bomb or a mislabelled file.
TRAILING_SLACK = 1 << 20
CHUNK = 1 << 22


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, for DataError messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _header(path: Path, start: bytes) -> nib.Nifti1Header:
    """The header of a NIfTI-1/2 stream from its first bytes, checked before any voxel is read.

    nibabel silently repairs a zeroed `sizeof_hdr`; here it must be 348 or 540 (either byte order).
    """
    if len(start) < 4:
        raise DataError(f"{path}: unreadable NIfTI (file holds {len(start)} bytes, no header)")
    size = next((value for order in "<>" if (value := int(np.frombuffer(start[:4], f"{order}i4")[0])) in HEADER_SIZES), None)
    if size is None:
        raise DataError(f"{path}: implausible NIfTI header (sizeof_hdr={int(np.frombuffer(start[:4], '<i4')[0])}, expected 348 or 540)")
    if len(start) < size:
        raise DataError(f"{path}: truncated NIfTI header ({len(start)} of {size} bytes)")
    header_class = HEADER_SIZES[size].header_class
    try:
        header = header_class.from_fileobj(io.BytesIO(start[:size]), check=False)
        dtype, label = header.get_data_dtype(), header.get_value_label("datatype")
        shape = header.get_data_shape()
    except Exception as exc:  # nibabel raises HeaderDataError for unknown datatype codes or dims
        raise DataError(f"{path}: implausible NIfTI header ({one_line(exc)})") from exc
    check_dtype(path, dtype, label)
    check_voxel_count(path, shape)
    scaling = [float(header["scl_slope"]), float(header["scl_inter"])]
    if any(np.isinf(value) for value in scaling):  # NaN means "unscaled" (NIfTI-1); infinity means damage
        raise DataError(f"{path}: implausible NIfTI header (scl_slope, scl_inter = {scaling[0]}, {scaling[1]})")
    return header


def _declared_bytes(header: nib.Nifti1Header) -> int:
    return int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize


def read_bytes(path: Path) -> bytes:
    """The whole NIfTI stream of `path`, verified: header plausible, length as declared, gzip CRC and size.

    A `.gz` file is decompressed to its end through Python's gzip reader, which checks the CRC-32 and
    the stored length; nibabel alone stops reading after the voxels and never looks at either.
    """
    try:
        with open(path, "rb") as file:
            magic = file.read(2)
            file.seek(0)
            stream = gzip.GzipFile(fileobj=file) if magic == b"\x1f\x8b" else file
            start = stream.read(540)
            header = _header(path, start)
            declared = _declared_bytes(header)
            chunks = [start]
            total = len(start)
            while chunk := stream.read(CHUNK):
                chunks.append(chunk)
                total += len(chunk)
                if total > declared + TRAILING_SLACK:
                    raise DataError(f"{path}: NIfTI holds more than its header declares ({declared} bytes): refused as damaged or a decompression bomb")
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # BadGzipFile (CRC, length) is an OSError
        raise DataError(f"{path}: unreadable NIfTI ({one_line(exc)})") from exc
    if total < declared:
        raise DataError(f"{path}: truncated NIfTI: {total} bytes, its header declares {declared}")
    return b"".join(chunks)


def read_image(path: Path) -> nib.Nifti1Image:
    """The verified NIfTI image of `path` (header and voxels in memory); DataError naming the file otherwise."""
    raw = read_bytes(path)
    size = int(np.frombuffer(raw[:4], "<i4")[0])
    image_class = HEADER_SIZES.get(size) or HEADER_SIZES[int(np.frombuffer(raw[:4], ">i4")[0])]
    try:
        return image_class.from_bytes(raw)
    except Exception as exc:  # nibabel raises many types on inconsistent headers
        raise DataError(f"{path}: unreadable NIfTI ({one_line(exc)})") from exc


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a 3D NIfTI file into (x, y, z) float32 voxels and its affine; DataError if unreadable.

    The file is verified first (`read_bytes`); values beyond float32 after the header's scaling are
    refused (they would become infinities).
    """
    image = read_image(path)
    try:
        data = np.asarray(image.dataobj)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{path}: unreadable NIfTI ({one_line(exc)})") from exc
    if data.dtype.kind == "f" and data.dtype.itemsize > 4:
        finite = data[np.isfinite(data)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(np.float32).max):
            raise DataError(f"{path}: voxel values reach {float(np.abs(finite).max()):.3g}, beyond float32")
    voxels = data.astype(np.float32, copy=False)
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
