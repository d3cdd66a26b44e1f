"""Training on a K x K grid of sub-images instead of whole slices (any layout; `data=dicom_stroke`).

Kalmutskiy & Berikov (2021, seed 003) cut each of their 34 labelled slices into a 4 x 4 grid and
train on the 16 sub-images, augmented one by one (flips, small zoom), instead of random crops.
Only the training items change: validation and test loaders still give whole slices in axial order,
and `grid.predict_in_grid` gives the paper's inference (cut, predict every tile, reassemble).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lesionseg.data.augment import augment_slice
from lesionseg.data.datamodule import LesionDataModule
from lesionseg.data.grid import split_grid
from lesionseg.data.slices import SliceDataset
from lesionseg.data.store import StoredCase


class GridTileDataset(Dataset):
    """The grid x grid tiles of every slice of `slices` (unaugmented), each tile augmented on its own.

    Item `i` is tile `i % grid**2` (row-major) of slice `i // grid**2`, in the batch contract format.
    """

    def __init__(self, slices: SliceDataset, grid: int, augment: Callable[..., dict] | None = None):
        if slices.augment is not None:
            raise ValueError("GridTileDataset augments tiles itself; give it unaugmented slices")
        self.slices = slices
        self.grid = grid
        self.augment = augment

    def __len__(self) -> int:
        return len(self.slices) * self.grid**2

    def __getitem__(self, index: int) -> dict:
        item = self.slices[index // self.grid**2]
        tile = index % self.grid**2
        image = split_grid(item["image"][None], self.grid)[tile].contiguous()
        mask = split_grid(item["mask"][None, None], self.grid)[tile, 0].contiguous()
        if self.augment is not None:
            # albumentations warps uint8 masks (OpenCV has no int64 warp), as the slice dataset does.
            augmented_image, augmented_mask = augment_slice(self.augment, image.numpy(), mask.numpy().astype(np.uint8))
            assert augmented_mask is not None  # a mask went in
            image, mask = torch.from_numpy(augmented_image), torch.from_numpy(augmented_mask.astype(np.int64))
        return {**item, "image": image, "mask": mask}


class GridDataModule(LesionDataModule):
    """`LesionDataModule` whose training items are the tiles of a `grid` x `grid` cut of each slice."""

    def __init__(self, grid: int = 4, **kwargs):
        super().__init__(**kwargs)
        if grid < 1:
            raise ValueError(f"data.grid={grid}: must be >= 1")
        self.grid = grid

    def build_train_dataset(self, cases: Sequence[StoredCase]) -> Dataset:
        slices = SliceDataset(cases, self.train_slices(cases), None, self.in_channels)
        return GridTileDataset(slices, self.grid, self.augment)
