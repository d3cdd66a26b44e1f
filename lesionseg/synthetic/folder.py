"""Synthetic subjects in the folder layout (`images/` + `masks/`, see `lesionseg.data.folder`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lesionseg.data.nifti import write_volume
from lesionseg.synthetic.phantom import phantom


def write_synthetic_folder(root: Path, n_subjects: int, seed: int = 0, size: int = 64, n_slices: int = 6) -> Path:
    """Write phantom subjects in the folder layout under `root` (returns `root`).

    Even-numbered subjects are 2D: an 8-bit greyscale PNG with a 0/255 PNG mask; odd-numbered ones
    are volumes: a float32 `.nii.gz` of `n_slices` axial slices with a {0, 1} uint8 `.nii.gz` mask.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_subjects):
        stem = f"case_{index:03d}"
        if index % 2 == 0:
            case = phantom((size, size), rng)
            grey = np.clip(case.image.T * (255.0 / case.image.max()), 0, 255).astype(np.uint8)
            Image.fromarray(grey).save(root / "images" / f"{stem}.png")
            Image.fromarray(case.mask.T * np.uint8(255)).save(root / "masks" / f"{stem}.png")
        else:
            case = phantom((size, size, n_slices), rng)
            write_volume(root / "images" / f"{stem}.nii.gz", case.image)
            write_volume(root / "masks" / f"{stem}.nii.gz", case.mask)
    return root
