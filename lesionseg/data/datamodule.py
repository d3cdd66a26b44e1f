"""The one DataModule every dataset uses: find cases -> split by subject -> slice store -> augment -> loaders.

A dataset differs only in its `Layout` (how cases are found and decoded) and its config values;
subclasses change how training items are made through `build_train_dataset` (e.g. a grid of
sub-images) and nothing else. Batches follow the project contract: "image" float32 (B, C, H, W),
"mask" int64 (B, H, W), "subject" list[str], "slice_index" int64 (B,). Val/test/predict loaders
give every slice of each subject in axial order, unshuffled and unaugmented, so a LightningModule
can reassemble subjects into 3D volumes for per-subject metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lesionseg.data.cases import Case, DataError, Layout
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.slices import SliceDataset
from lesionseg.data.splits import split_subjects
from lesionseg.data.store import SliceStore, StoredCase

SLICE_SELECTIONS = ("all", "lesion", "ratio")


class LesionDataModule(L.LightningDataModule):
    """Subject-split, slice-store-backed loaders for one on-disk dataset.

    `slices` picks the training slices: "all", "lesion" (only slices with lesion) or "ratio" (every
    lesion slice plus randomly chosen lesion-free slices, `lesion_ratio` lesion slices per empty one);
    val/test always use all slices. `preprocess` holds `Preprocess` fields (crop, target_size,
    resize_mode, normalisation, scale, clip_percentiles).
    """

    def __init__(
        self,
        layout: Layout,
        root: str | None,
        name: str,
        cache_dir: str,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        in_channels: int = 1,
        num_classes: int = 1,
        num_folds: int = 5,
        fold: int = 0,
        test_fraction: float = 0.2,
        split_seed: int = 42,
        kfold_shuffle: bool = True,
        preprocess: Mapping | Preprocess | None = None,
        slices: str = "all",
        lesion_ratio: float | None = None,
        strict_masks: bool = False,
        augment: Callable[..., dict] | None = None,
    ):
        super().__init__()
        if not 0 <= fold < num_folds:
            raise ValueError(f"data.fold={fold}: use 0..{num_folds - 1} (data.num_folds={num_folds})")
        if slices not in SLICE_SELECTIONS:
            raise ValueError(f"data.slices={slices!r}: use one of {', '.join(SLICE_SELECTIONS)}")
        if (slices == "ratio") != (lesion_ratio is not None) or (lesion_ratio is not None and lesion_ratio <= 0):
            raise ValueError(f"data.lesion_ratio={lesion_ratio}: give a positive ratio exactly when data.slices=ratio")
        self.layout = layout
        self.root = root
        self.name = name
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_folds = num_folds
        self.fold = fold
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.kfold_shuffle = kfold_shuffle
        self.preprocess = preprocess if isinstance(preprocess, Preprocess) else Preprocess.from_config(preprocess)
        self.slices = slices
        self.lesion_ratio = lesion_ratio
        self.strict_masks = strict_masks
        self.augment = augment
        self.split: dict[str, list[str]] = {}
        self.stored: dict[str, StoredCase] = {}
        self.predict_stored: list[StoredCase] = []
        self._cases: list[Case] | None = None

    # ---- cases and store -------------------------------------------------------------------
    def cases(self) -> list[Case]:
        """Every case under `root` (labelled and unlabelled); a one-line DataError when there are none."""
        if self._cases is None:
            looked_for = getattr(self.layout, "looks_for", self.layout.name)
            root = Path(self.root).expanduser() if self.root else None
            if root is None:
                raise DataError(f"data.root is not set: pass data.root=<folder of the {self.name} dataset>; looked for {looked_for}")
            if not root.is_dir() or not any(root.iterdir()):
                state = "is missing" if not root.is_dir() else "is empty"
                raise DataError(f"data.root={self.root} {state}; looked for {looked_for}")
            if not self.layout.detect(root):
                raise DataError(f"data.root={root} holds no known layout; looked for {looked_for}")
            self._cases = self.layout.find(root)
        return self._cases

    def labelled_cases(self) -> list[Case]:
        """Cases with a mask: the pool that is split into train/val/test."""
        return [case for case in self.cases() if case.labelled]

    def predict_cases(self) -> list[Case]:
        """Cases without a mask (e.g. ATLAS `Testing/`): available for prediction only."""
        return [case for case in self.cases() if not case.labelled]

    def store(self) -> SliceStore:
        """The slice store of this dataset (its cases are found first, which checks `data.root`)."""
        assert self.root is not None and self.name is not None, "cases() refuses a missing data.root before the store opens"
        return SliceStore(self.cache_dir, self.name, self.root, self.layout, self.preprocess, self.strict_masks, self.num_classes)

    def prepare_data(self) -> None:
        """Decode every labelled case into the slice store once (downloads nothing)."""
        self._store_labelled()

    def _store_labelled(self) -> list[StoredCase]:
        cases = self.labelled_cases()
        if not cases:
            raise DataError(f"data.root={self.root}: no labelled cases found for {self.name}")
        return self.store().build(cases, f"{self.name} slice store")

    def setup(self, stage: str | None = None) -> None:
        """Open the store and split subjects (idempotent); stage "predict" opens the unlabelled cases."""
        if stage == "predict":
            if not self.predict_stored:
                self.predict_stored = self.store().build(self.predict_cases(), f"{self.name} predict store")
                self._check_channels(self.predict_stored)
            return
        if self.split:
            return
        stored = self._store_labelled()
        self._check_channels(stored)
        self.stored = {case.subject: case for case in stored}
        self.split = split_subjects(list(self.stored), self.num_folds, self.fold, self.test_fraction, self.split_seed, self.kfold_shuffle)

    def _check_channels(self, stored: Sequence[StoredCase]) -> None:
        if stored and stored[0].image.shape[1] not in (1, self.in_channels):
            raise ValueError(f"data.in_channels={self.in_channels} but {self.name} images have {stored[0].image.shape[1]} channels")

    # ---- datasets --------------------------------------------------------------------------
    def subjects(self, split: str) -> list[StoredCase]:
        """Stored cases of one split (train/val/test), in subject order."""
        return [self.stored[subject] for subject in self.split[split]]

    def train_slices(self, cases: Sequence[StoredCase]) -> list[tuple[int, int]]:
        """(case position, slice index) pairs of the configured training slice selection."""
        items: list[tuple[int, int]] = []
        rng = np.random.default_rng(self.split_seed)
        for position, case in enumerate(cases):
            lesion = list(case.lesion_slices)
            chosen: Sequence[int]
            if self.slices == "all":
                chosen = range(case.num_slices)
            elif self.slices == "lesion":
                chosen = lesion
            else:
                assert self.lesion_ratio is not None  # checked in __init__: set exactly when slices == "ratio"
                empty = np.setdiff1d(np.arange(case.num_slices), lesion)
                count = min(len(empty), int(round(len(lesion) / self.lesion_ratio)))
                chosen = sorted([*lesion, *rng.choice(empty, size=count, replace=False).tolist()])
            items.extend((position, int(z)) for z in chosen)
        return items

    def build_train_dataset(self, cases: Sequence[StoredCase]) -> Dataset:
        """The training items: selected slices, augmented. Override to train on other items."""
        return SliceDataset(cases, self.train_slices(cases), self.augment, self.in_channels)

    # ---- loaders ---------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.build_train_dataset(self.subjects("train")), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(SliceDataset.all_slices(self.subjects("val"), self.in_channels), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(SliceDataset.all_slices(self.subjects("test"), self.in_channels), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(SliceDataset.all_slices(self.predict_stored, self.in_channels), shuffle=False)
