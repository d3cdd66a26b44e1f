"""The checks every layout's decoded case goes through before it reaches the slice store.

One module so that ATLAS, LGG, DICOM and image folders reject bad input the same way: a one-line
`DataError` naming the file and the problem, or (for masks that only need binarising) a note the
caller turns into a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError

BINARY_MASK_VALUES = ({0, 1}, {0, 255})
DEFAULT_MAX_VOXELS = 2**31
LOSSY_SUFFIXES = (".jpg", ".jpeg")
# Masks saved in a lossy format (JPEG) are binarised at half of 8-bit white: JPEG exporters write
# 0/255 masks, and their compression noise (values 1..~40 around edges, ~215..254 inside) is not lesion.
LOSSY_MASK_THRESHOLD = 128
# Folder debris from other systems: macOS AppleDouble files (._name), Finder and Windows metadata.
IGNORED_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX")


def ignored(path: Path, root: Path | None = None) -> bool:
    """True for debris that is never data: hidden files (`.name`, incl. macOS `._name`) and `__MACOSX/`.

    With `root`, every folder between `root` and `path` counts too.
    """
    parts = path.relative_to(root).parts if root is not None and path.is_relative_to(root) else (path.name,)
    return any(part.startswith(".") or part in IGNORED_NAMES for part in parts)


def printable(path: Path | str) -> str:
    """A path as text that can always be printed: undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_name(path: Path) -> Path:
    """`path`, or a one-line DataError when its name is not valid UTF-8 (it could not be printed,
    logged or stored as a subject id reliably)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{printable(path)}: file or folder name is not valid UTF-8; rename it") from None
    return path


def max_voxels() -> int:
    """The largest voxel count a scan may declare (env `LESIONSEG_MAX_VOXELS`, default 2^31)."""
    try:
        return int(os.environ.get("LESIONSEG_MAX_VOXELS", DEFAULT_MAX_VOXELS))
    except ValueError:
        raise DataError(f"LESIONSEG_MAX_VOXELS={os.environ['LESIONSEG_MAX_VOXELS']!r} is not an integer") from None


def check_voxel_count(path: Path, shape: Sequence[int]) -> None:
    """DataError when a header declares a negative size or more voxels than `max_voxels()`, before allocating."""
    if any(int(size) < 0 for size in shape):
        raise DataError(f"{path}: implausible header: negative size in shape {tuple(shape)}")
    count = int(np.prod([int(size) for size in shape], dtype=object))
    if count > max_voxels():
        shown, limit = tuple(int(size) for size in shape), max_voxels()
        raise DataError(f"{path}: implausible header: shape {shown} declares {count:,} voxels, over the limit {limit:,} (env LESIONSEG_MAX_VOXELS)")


def check_dtype(path: Path, dtype: np.dtype, name: str | None = None) -> None:
    """DataError naming the type unless `dtype` is a real number type (bool, integers, float16/32/64).

    Complex, RGB/RGBA records, strings and float128 have no intensity a scan could mean here.
    """
    supported = dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8)
    if not supported:
        raise DataError(f"{path}: unsupported data type {name or dtype} ({dtype}); supported: integers, float16/32/64")


def missing_mask(image: Path, expected: str) -> DataError:
    """The error a layout raises for an image that should have a mask and has none."""
    return DataError(f"{image}: no lesion mask found (expected {expected})")


def _file(paths: tuple[Path, ...]) -> Path | str:
    return paths[0] if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} files)"


def checked(case: Case, arrays: CaseArrays, strict_masks: bool = False, num_classes: int = 1) -> tuple[CaseArrays, str | None]:
    """Validate a decoded case; return it with its mask as uint8 labels, and a mask note.

    Raises DataError on NaN/inf voxels, an image that is not (Z, C, H, W), or a mask whose shape
    differs from the image. Binary data (`num_classes` 1): mask values outside {0, 1} and {0, 255}
    are an error with `strict_masks`, else binarised `> 0` with a note naming the file; the mask
    becomes {0, 1} (layouts binarise masks read from JPEG first: `lossy_mask`). Multi-class data (`num_classes` K > 1): the mask holds class indices, and a
    value outside 0..K-1 is always an error (guessing a class would corrupt the labels).
    """
    image, mask = arrays.image, arrays.mask
    if image.ndim != 4:
        raise DataError(f"{_file(case.image)}: image must decode to (Z, C, H, W), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError(f"{_file(case.image)}: image holds NaN or infinite voxels")
    if mask is None:
        if case.labelled:
            raise DataError(f"{_file(case.mask)}: mask could not be decoded")
        return CaseArrays(image=image, mask=None, affine=arrays.affine), None
    expected = (image.shape[0], *image.shape[2:])
    if mask.shape != expected:
        raise DataError(f"{_file(case.mask)}: mask shape {mask.shape} differs from image shape {expected} ({_file(case.image)})")
    if not np.isfinite(mask).all():
        raise DataError(f"{_file(case.mask)}: mask holds NaN or infinite voxels")
    values = set(np.unique(mask).tolist())
    if num_classes > 1:
        unexpected = sorted(values - set(range(num_classes)))
        if unexpected:
            raise DataError(f"{_file(case.mask)}: mask values {unexpected[:6]} are not class indices 0..{num_classes - 1} (data.num_classes={num_classes})")
        return CaseArrays(image=image, mask=mask.astype(np.uint8), affine=arrays.affine), None
    note = None
    if not any(values <= allowed for allowed in BINARY_MASK_VALUES):
        shown = sorted(values)[:6]
        more = "..." if len(values) > 6 else ""
        note = f"{_file(case.mask)}: mask values {shown}{more} are not in {{0, 1}} or {{0, 255}}"
        if strict_masks:
            raise DataError(f"{note} (strict_masks=true)")
    return CaseArrays(image=image, mask=(mask > 0).astype(np.uint8), affine=arrays.affine), note


def is_lossy(path: Path) -> bool:
    """True for a file in a lossy format (JPEG), whose mask values carry compression noise."""
    return path.name.lower().endswith(LOSSY_SUFFIXES)


def lossy_mask(path: Path, planes: np.ndarray) -> np.ndarray:
    """A binary mask read from a lossy file (JPEG) as {0, 1}: foreground is >= 128 (LOSSY_MASK_THRESHOLD).

    A JPEG mask whose brightest voxel is below the threshold but not 0 is refused: a 0/1 mask saved
    as JPEG cannot be told from its compression noise.
    """
    peak = int(planes.max(initial=0))
    if 0 < peak < LOSSY_MASK_THRESHOLD:
        raise DataError(f"{path}: JPEG mask peaks at {peak}, below {LOSSY_MASK_THRESHOLD}: a 0/1 mask saved lossily is lost; save it as PNG")
    return (planes >= LOSSY_MASK_THRESHOLD).astype(np.uint8)
