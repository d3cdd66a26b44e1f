"""The Kaggle LGG MRI segmentation set (Buda et al. 2019, "kaggle_3m") as cases.

On disk (as downloaded from kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation)::

    <root>/                        (or <root>/kaggle_3m/)
        data.csv                   per-patient genomic clusters (not needed for segmentation)
        TCGA_CS_4941_19960909/     one folder per patient: the subject
            TCGA_CS_4941_19960909_1.tif        RGB uint8 256x256: pre-contrast, FLAIR, post-contrast
            TCGA_CS_4941_19960909_1_mask.tif   uint8 {0, 255} FLAIR abnormality
            ...
            TCGA_CS_4941_19960909_10.tif       slices ordered by the number, numerically (2 before 10)

Used by the LR-ASPP (seed 001) and U-Net/ResUNet/UNeXt (seed 004) LGG experiments.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.image_files import read_tiff
from lesionseg.data.nifti import axial_slices
from lesionseg.data.phantom import phantom
from lesionseg.data.validate import missing_mask

SLICE_NAME = re.compile(r"^(?P<prefix>.+)_(?P<number>\d+)\.tif$")
MASK_SUFFIX = "_mask"
# Lesion intensity per channel (white matter = 110): pre-contrast dark, FLAIR bright, post-contrast mid.
LGG_LESION_INTENSITIES = (60.0, 170.0, 95.0)
LOOKS_FOR = "the LGG kaggle_3m layout (<root>[/kaggle_3m]/<patient>/<patient>_<N>.tif with <patient>_<N>_mask.tif)"


class LggLayout:
    """Kaggle LGG MRI (kaggle_3m): one patient folder per subject, one RGB TIFF + mask per slice."""

    name = "lgg"
    looks_for = LOOKS_FOR

    @staticmethod
    def dataset_folder(root: Path) -> Path:
        """`root` itself, or its `kaggle_3m/` when `root` is the folder the download unpacks to."""
        nested = Path(root) / "kaggle_3m"
        return nested if nested.is_dir() else Path(root)

    def detect(self, root: Path) -> bool:
        folder = self.dataset_folder(root)
        return folder.is_dir() and any(folder.glob(f"*/*{MASK_SUFFIX}.tif"))

    def find(self, root: Path) -> list[Case]:
        folder = self.dataset_folder(root)
        if not folder.is_dir():
            raise DataError(f"{root}: not a folder; looked for {LOOKS_FOR}")
        patients = (self._patient(path) for path in sorted(folder.iterdir()) if path.is_dir())
        cases = [case for case in patients if case is not None]
        if not cases:
            raise DataError(f"{root}: no LGG patients found; looked for {LOOKS_FOR}")
        return cases

    @staticmethod
    def _patient(patient: Path) -> Case | None:
        """The patient's case (slices in numeric order), or None for a folder without TIFFs."""
        numbered: list[tuple[int, Path, Path]] = []
        for path in patient.glob("*.tif"):
            if path.stem.endswith(MASK_SUFFIX):
                if not path.with_name(path.stem.removesuffix(MASK_SUFFIX) + ".tif").is_file():
                    raise DataError(f"{path}: mask has no image")
                continue
            match = SLICE_NAME.match(path.name)
            if match is None:
                raise DataError(f"{path}: not an LGG slice name (expected <patient>_<N>.tif)")
            mask = path.with_name(f"{path.stem}{MASK_SUFFIX}.tif")
            if not mask.is_file():
                raise missing_mask(path, mask.name)
            numbered.append((int(match["number"]), path, mask))
        if not numbered:
            return None
        numbered.sort()
        return Case(
            subject=patient.name,
            image=tuple(image for _, image, _ in numbered),
            mask=tuple(mask for _, _, mask in numbered),
        )

    def load(self, case: Case) -> CaseArrays:
        images, masks = [], []
        for image_path, mask_path in zip(case.image, case.mask, strict=True):
            image = read_tiff(image_path)
            if image.ndim != 3 or image.shape[2] != 3:
                raise DataError(f"{image_path}: expected an RGB slice (H, W, 3), got shape {image.shape}")
            mask = read_tiff(mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{mask_path}: mask shape {mask.shape} differs from image shape {image.shape[:2]}")
            if images and image.shape != images[0].shape:
                raise DataError(f"{image_path}: slice shape {image.shape} differs from the patient's first slice")
            images.append(image)
            masks.append(mask)
        return CaseArrays(image=np.stack(images).transpose(0, 3, 1, 2).astype(np.float32), mask=np.stack(masks))


def write_synthetic_lgg(root: Path, n_subjects: int, seed: int = 0, n_slices: int = 12, size: int = 256) -> Path:
    """Write phantom patients in the kaggle_3m layout under `root` (returns `root`).

    Each patient is one 3D phantom cut into `n_slices` axial RGB TIFFs (pre-contrast, FLAIR,
    post-contrast: one anatomy, the lesion dark, bright and mid-grey) with 0/255 mask TIFFs, numbered
    from 1 so that lexical and numeric order differ from 10 slices on, plus the root `data.csv`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_subjects):
        patient = f"TCGA_{chr(65 + index // 26 % 26)}{chr(65 + index % 26)}_{1000 + index}"
        folder = root / f"{patient}_{19960909 + index}"
        folder.mkdir(exist_ok=True)
        anatomy_seed = int(rng.integers(2**32))
        channels = [phantom((size, size, n_slices), np.random.default_rng(anatomy_seed), lesion_intensity=intensity) for intensity in LGG_LESION_INTENSITIES]
        rgb = np.stack([axial_slices(channel.image) for channel in channels], axis=-1)
        rgb = np.clip(rgb * (255.0 / rgb.max()), 0, 255).astype(np.uint8)
        masks = axial_slices(channels[0].mask) * np.uint8(255)
        for number in range(1, n_slices + 1):
            tifffile.imwrite(folder / f"{folder.name}_{number}.tif", rgb[number - 1], photometric="rgb")
            tifffile.imwrite(folder / f"{folder.name}_{number}_mask.tif", masks[number - 1])
        rows.append({"Patient": patient, "RNASeqCluster": int(rng.integers(1, 5)), "death01": int(rng.integers(0, 2))})
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root
