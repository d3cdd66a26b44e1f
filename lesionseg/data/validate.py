"""The checks every layout's decoded case goes through before it reaches the slice store.

One module so that ATLAS, LGG, DICOM and image folders reject bad input the same way: a one-line
`DataError` naming the file and the problem, or (for masks that only need binarising) a note the
caller turns into a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError

BINARY_MASK_VALUES = ({0, 1}, {0, 255})


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
    becomes {0, 1}. Multi-class data (`num_classes` K > 1): the mask holds class indices, and a
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
