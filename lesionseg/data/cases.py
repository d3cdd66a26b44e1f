"""What a dataset is made of: cases (one subject each) found on disk by a layout.

A *case* is one subject (an ATLAS session, an LGG patient folder, a DICOM series, a folder stem)
with the files that hold its image and its mask. Splits are made over cases, never slices, so no
subject leaks across train/val/test. A *layout* knows one on-disk format: whether a root folder
holds it, how to find its cases, and how to decode one case into arrays. Everything after decoding
(preprocessing, the slice store, augmentation, loaders) is shared by every layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


class DataError(ValueError):
    """Bad input data: the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Case:
    """One subject: its id, its image file(s) and mask file(s) in slice order.

    `image` holds one volume file, or one file per slice (LGG TIFFs, DICOM slices) in axial order.
    `mask` mirrors `image`, or is empty when the subject has no label (prediction only); a mask may
    also be several files whose union is the label (ATLAS R1.x `*LesionSmooth*`).
    """

    subject: str
    image: tuple[Path, ...]
    mask: tuple[Path, ...] = ()
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def labelled(self) -> bool:
        return bool(self.mask)


@dataclass
class CaseArrays:
    """A decoded case: image (Z, C, H, W) float32 and mask (Z, H, W) as stored, or None.

    Layouts return masks as stored on disk (e.g. {0, 1} or {0, 255}); the shared pipeline checks
    shapes, NaN/inf and mask values, and binarises, so every layout gets the same checks.
    """

    image: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray | None = None


class Layout(Protocol):
    """One on-disk dataset format."""

    name: str

    def detect(self, root: Path) -> bool:
        """True when `root` looks like this layout."""

    def find(self, root: Path) -> list[Case]:
        """All cases under `root`, sorted by subject id (labelled and unlabelled)."""

    def load(self, case: Case) -> CaseArrays:
        """Decode one case; raise DataError naming the file on unreadable or inconsistent input."""
