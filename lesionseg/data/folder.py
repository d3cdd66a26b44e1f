"""Any dataset exported as two folders of images and masks with matching names.

On disk::

    <root>/
        images/<stem>.png|.jpg|.jpeg|.tif|.tiff|.nii.gz|.nii
        masks/<stem>.png|.jpg|.jpeg|.tif|.tiff|.nii.gz|.nii    (any of these, {0,1} or {0,255})

Each stem is one subject: a 2D picture is a one-slice subject, a NIfTI may be a whole volume (cut
into axial slices as for ATLAS). Image and mask formats may differ (`images/a.tif` with
`masks/a.png`); a 2D picture paired with a NIfTI is refused when its slice is square (which axis is
rows cannot be known: `check_orientation`). A JPEG mask is binarised at >= 128 (`validate.py`).
Every image needs a mask and every mask an image; hidden files and macOS debris are ignored.
Pictures are converted to `channels` (greyscale is repeated to RGB, RGB averaged to luma, alpha
dropped) so a dataset mixing greyscale and RGB exports still gives one input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.image_files import read_picture, read_tiff
from lesionseg.data.nifti import axial_slices, read_volume
from lesionseg.data.validate import check_name, ignored, is_lossy, lossy_mask, missing_mask, printable

SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
LOOKS_FOR = "the folder layout (<root>/images/<stem>.{png,jpg,tif,nii.gz} with <root>/masks/<stem>.<same choice>)"


def split_suffix(path: Path) -> tuple[str, str]:
    """(stem, suffix) of a supported file, `.nii.gz` counted as one suffix; DataError otherwise."""
    lower = path.name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)], suffix
    raise DataError(f"{path}: unsupported file type (use {', '.join(SUFFIXES)})")


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Supported files of `folder` keyed by stem; two files sharing a stem is an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if ignored(path):
            continue
        if path.is_symlink() and not path.exists():
            raise DataError(f"{printable(path)}: broken symbolic link (its target is missing or it links to itself)")
        if not path.is_file():
            continue
        stem, _ = split_suffix(check_name(path))
        if stem in found:
            raise DataError(f"{path}: same stem as {found[stem].name}; keep one file per subject")
        found[stem] = path
    return found


def read_planes(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A file as (Z, H, W) or (Z, H, W, C) planes and its affine (NIfTI only)."""
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES:
        voxels, affine = read_volume(path)
        return axial_slices(voxels), affine
    picture = read_tiff(path) if suffix in TIFF_SUFFIXES else read_picture(path)
    if picture.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D image, got shape {picture.shape}")
    return picture[np.newaxis], None


def to_channels(planes: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """(Z, H, W[, C]) -> (Z, channels, H, W) float32."""
    planes = planes.astype(np.float32)
    if planes.ndim == 3:
        planes = planes[..., np.newaxis]
    if planes.shape[-1] == 4:  # RGBA: the alpha channel carries no intensity
        planes = planes[..., :3]
    have = planes.shape[-1]
    if have == 3 and channels == 1:
        planes = planes @ LUMA_WEIGHTS[:, np.newaxis]
    elif have == 1 and channels == 3:
        planes = np.repeat(planes, 3, axis=-1)
    elif have != channels:
        raise DataError(f"{path}: {have} channels cannot become data.in_channels={channels}")
    return np.ascontiguousarray(planes.transpose(0, 3, 1, 2))


def to_label_planes(planes: np.ndarray, path: Path) -> np.ndarray:
    """(Z, H, W[, C]) mask -> (Z, H, W); a mask saved as RGB must be grey (equal channels)."""
    if planes.ndim == 3:
        return planes
    if planes.shape[-1] == 4:
        planes = planes[..., :3]
    if not (planes == planes[..., :1]).all():
        raise DataError(f"{path}: mask has colour (channels differ); save it as a greyscale or indexed image")
    return planes[..., 0]


def check_orientation(image_path: Path, image: np.ndarray, mask_path: Path, mask: np.ndarray) -> None:
    """DataError when a 2D picture is paired with a NIfTI and their row/column order cannot be known.

    A NIfTI's first axis is x (columns, as ITK and every NIfTI tool write a converted picture), but
    a NIfTI made from a picture's array by `nibabel.Nifti1Image(array)` has rows first: for a square
    slice both read without error and one is transposed. Such a pair is refused; a non-square pair
    whose shapes are swapped is named as transposed. Save the mask in the picture's format instead.
    """
    is_nifti = [split_suffix(path)[1] in NIFTI_SUFFIXES for path in (image_path, mask_path)]
    if is_nifti[0] == is_nifti[1]:
        return
    height, width = image.shape[1:3]
    if len(mask) == 1 and mask.shape[1:3] == (width, height) and height != width:
        raise DataError(f"{mask_path}: mask is the transpose of {image_path.name} ({mask.shape[1:3]} vs {(height, width)}); save it in the image's format")
    if len(image) == 1 and height == width:
        raise DataError(
            f"{mask_path}: a NIfTI paired with a square 2D picture ({image_path.name if is_nifti[1] else mask_path.name}) has an ambiguous row/column order; "
            "save image and mask in the same family (both pictures or both NIfTI)"
        )


@dataclass(frozen=True)
class FolderLayout:
    """`images/` and `masks/` with matching stems: one subject per stem, images as `channels` channels."""

    channels: int = 1
    name: ClassVar[str] = "folder"
    looks_for: ClassVar[str] = LOOKS_FOR

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: the folder layout reads greyscale (1) or RGB (3) images")

    def detect(self, root: Path) -> bool:
        return (Path(root) / "images").is_dir() and (Path(root) / "masks").is_dir()

    def find(self, root: Path) -> list[Case]:
        root = Path(root)
        if not self.detect(root):
            raise DataError(f"{root}: no images/ and masks/ folders; looked for {LOOKS_FOR}")
        images = files_by_stem(root / "images")
        masks = files_by_stem(root / "masks")
        if not images:
            raise DataError(f"{root / 'images'}: no images; looked for {LOOKS_FOR}")
        for stem, mask in masks.items():
            if stem not in images:
                raise DataError(f"{mask}: mask has no image (expected images/{stem}.<suffix>)")
        cases = []
        for stem, image in images.items():
            if stem not in masks:
                raise missing_mask(image, f"masks/{stem}.<suffix>")
            cases.append(Case(subject=stem, image=(image,), mask=(masks[stem],)))
        return cases

    def load(self, case: Case) -> CaseArrays:
        (image_path,), (mask_path,) = case.image, case.mask
        image_planes, affine = read_planes(image_path)
        mask_planes, _ = read_planes(mask_path)
        check_orientation(image_path, image_planes, mask_path, mask_planes)
        return CaseArrays(
            image=to_channels(image_planes, self.channels, image_path),
            mask=lossy_mask(mask_path, to_label_planes(mask_planes, mask_path)) if is_lossy(mask_path) else to_label_planes(mask_planes, mask_path),
            affine=affine,
        )
