"""Torch datasets over the slice store: one item is one axial slice in the batch contract format.

An item is `{"image": (C, H, W) float32, "mask": (H, W) int64, "subject": str, "slice_index": int}`
(no "mask" for unlabelled cases). Reading a slice is a memory-mapped array lookup, never a NIfTI decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionseg.data.augment import augment_slice
from lesionseg.data.store import StoredCase


class SliceDataset(Dataset):
    """Slices `(case position, slice index)` of stored cases, optionally augmented jointly with masks.

    `channels` repeats a single stored channel that many times (e.g. 3 for ImageNet-shaped encoders).
    """

    def __init__(
        self,
        cases: Sequence[StoredCase],
        items: Sequence[tuple[int, int]],
        augment: Callable[..., dict] | None = None,
        channels: int | None = None,
    ):
        self.cases = list(cases)
        self.items = list(items)
        self.augment = augment
        self.channels = channels

    @classmethod
    def all_slices(cls, cases: Sequence[StoredCase], channels: int | None = None) -> SliceDataset:
        """Every slice of every case, subject by subject in axial order, unaugmented."""
        return cls(cases, [(i, z) for i, case in enumerate(cases) for z in range(case.num_slices)], None, channels)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        position, slice_index = self.items[index]
        case = self.cases[position]
        image = case.image[slice_index].astype(np.float32)
        mask = None if case.mask is None else np.array(case.mask[slice_index])
        if self.augment is not None:
            image, mask = augment_slice(self.augment, image, mask)
        if self.channels is not None and image.shape[0] == 1 < self.channels:
            image = np.repeat(image, self.channels, axis=0)
        item = {"image": torch.from_numpy(image), "subject": case.subject, "slice_index": slice_index}
        if mask is not None:
            item["mask"] = torch.from_numpy(mask.astype(np.int64))
        return item
