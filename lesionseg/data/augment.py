"""Joint image/mask augmentation of one stored slice with an albumentations pipeline.

The pipelines themselves come from `conf/augment/*.yaml` (an `albumentations.Compose`, or null);
this module only adapts the store's channels-first slices to albumentations' channels-last arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def augment_slice(augment: Any, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply `augment` to a (C, H, W) float32 image and its (H, W) mask together.

    albumentations' Compose seeds itself from the OS; re-seeding it from NumPy's global generator on
    every call puts augmentation under `seed_everything` and Lightning's per-worker seeds, so runs
    repeat exactly and loader workers still draw different augmentations.
    """
    augment.set_random_seed(int(np.random.randint(2**31)))
    channels_last = np.ascontiguousarray(image.transpose(1, 2, 0))
    if mask is None:
        result = augment(image=channels_last)
        return np.ascontiguousarray(result["image"].transpose(2, 0, 1)), None
    result = augment(image=channels_last, mask=np.ascontiguousarray(mask))
    return np.ascontiguousarray(result["image"].transpose(2, 0, 1)), np.ascontiguousarray(result["mask"])
