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

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.image_files import read_tiff
from lesionseg.data.validate import check_name, ignored, missing_mask

SLICE_NAME = re.compile(r"^(?P<prefix>.+)_(?P<number>\d+)\.tif$")
MASK_SUFFIX = "_mask"
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
        patients = (self._patient(check_name(path)) for path in sorted(folder.iterdir()) if path.is_dir() and not ignored(path))
        cases = [case for case in patients if case is not None]
        if not cases:
            raise DataError(f"{root}: no LGG patients found; looked for {LOOKS_FOR}")
        return cases

    @staticmethod
    def _patient(patient: Path) -> Case | None:
        """The patient's case (slices in numeric order), or None for a folder without TIFFs."""
        numbered: list[tuple[int, Path, Path]] = []
        for path in (check_name(path) for path in patient.glob("*.tif") if not ignored(path)):
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
        images: list[np.ndarray] = []
        masks: list[np.ndarray] = []
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
