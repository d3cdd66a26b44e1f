"""Joint image/mask augmentation of one stored slice with an albumentations pipeline.

The pipelines themselves come from `conf/augment/*.yaml` (an `albumentations.Compose`, or null);
this module only adapts the store's channels-first slices to albumentations' channels-last arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def augment_slice(
    augment: Callable[..., dict], image: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply `augment` to a (C, H, W) float32 image and its (H, W) mask together."""
    channels_last = np.ascontiguousarray(image.transpose(1, 2, 0))
    if mask is None:
        result = augment(image=channels_last)
        return np.ascontiguousarray(result["image"].transpose(2, 0, 1)), None
    result = augment(image=channels_last, mask=np.ascontiguousarray(mask))
    return np.ascontiguousarray(result["image"].transpose(2, 0, 1)), np.ascontiguousarray(result["mask"])
