"""ATLAS (Anatomical Tracings of Lesions After Stroke) on disk: release R2.0 (BIDS) and R1.1/R1.2.

Liew et al., Sci Data 2018 (R1.x) and 2022 (R2.0); the X-Net benchmark (Qi et al., MICCAI 2019)
uses these T1w volumes (197x233x189, 1 mm MNI) as axial 233x197 slices. `AtlasLayout` finds
whichever release `data.root` holds:

- R2.0: `[ATLAS_2/]Training/R0NN/sub-rNNNsNNN/ses-N/anat/*_space-MNI152NLin2009aSym_T1w.nii.gz` with
  `*_label-L_desc-T1lesion_mask.nii.gz` beside it; `Testing/` subjects have no mask (prediction only).
- R1.x: `<site>/<subject>/[t01/]*_t1w[_deface]_stx.nii.gz`; the label is the union of every
  `*LesionSmooth*` file beside it.

Folder debris is ignored in both (macOS `._*` AppleDouble files, `__MACOSX/`, hidden files); a file
or folder name that is not valid UTF-8 is a one-line error (`validate.check_name`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.nifti import axial_slices, read_volume
from lesionseg.data.validate import check_name, ignored, missing_mask

R2_IMAGE_SUFFIX = "_T1w.nii.gz"
R2_MASK_SUFFIX = "_label-L_desc-T1lesion_mask.nii.gz"
R2_SUBJECT_GLOB = "R*/sub-*/ses-*/anat/*" + R2_IMAGE_SUFFIX
R1_IMAGE_GLOBS = ("*/*/*_t1w*_stx.nii.gz", "*/*/*/*_t1w*_stx.nii.gz")
R1_MASK_GLOB = "*LesionSmooth*.nii*"


def _r2_folders(root: Path) -> list[tuple[Path, bool]]:
    """(folder, labelled) pairs to scan for R2.0 subjects: Training (+ Testing) under root or ATLAS_2/."""
    for base in (root, root / "ATLAS_2"):
        if (base / "Training").is_dir():
            return [(base / "Training", True), (base / "Testing", False)]
    return [(root, root.name != "Testing")]


def find_r2(root: Path) -> list[Case]:
    """ATLAS R2.0 cases under `root` (Training labelled, Testing unlabelled); [] when none."""
    found: list[tuple[str, str, Path, bool]] = []
    for folder, labelled in _r2_folders(root):
        if folder.is_dir():
            for image in sorted(check_name(path) for path in folder.glob(R2_SUBJECT_GLOB) if not ignored(path, folder)):
                subject, session = image.parents[2].name, image.parents[1].name
                found.append((subject, session, image, labelled))
    sessions = Counter(subject for subject, _, _, _ in found)
    cases = []
    for subject, session, image, labelled in found:
        subject_id = subject if sessions[subject] == 1 else f"{subject}_{session}"
        if not labelled:
            cases.append(Case(subject_id, (image,), (), {"release": "R2.0", "folder": "Testing"}))
            continue
        mask = image.with_name(image.name[: -len(R2_IMAGE_SUFFIX)] + R2_MASK_SUFFIX)
        if not mask.is_file():
            raise missing_mask(image, mask.name)
        cases.append(Case(subject_id, (image,), (mask,), {"release": "R2.0", "folder": "Training"}))
    return sorted(cases, key=lambda case: case.subject)


def find_r1(root: Path) -> list[Case]:
    """ATLAS R1.1/R1.2 cases under `root` (all labelled); [] when none."""
    images = sorted({check_name(path) for pattern in R1_IMAGE_GLOBS for path in root.glob(pattern) if not ignored(path, root)})
    subject_folders = [image.parent if image.parent.parent.parent == root else image.parent.parent for image in images]
    sessions = Counter(subject_folders)
    cases = []
    for image, subject_folder in zip(images, subject_folders):
        masks = tuple(sorted(check_name(path) for path in image.parent.glob(R1_MASK_GLOB) if not ignored(path)))
        if not masks:
            raise missing_mask(image, f"{R1_MASK_GLOB} beside it")
        subject_id = f"{subject_folder.parent.name}_{subject_folder.name}"
        if sessions[subject_folder] > 1:
            subject_id += f"_{image.parent.name}"
        cases.append(Case(subject_id, (image,), masks, {"release": "R1.x"}))
    return sorted(cases, key=lambda case: case.subject)


class AtlasLayout:
    """ATLAS R2.0 or R1.x, whichever the root holds (R2.0 is looked for first)."""

    name = "ATLAS"
    looks_for = f"ATLAS R2.0 ([ATLAS_2/]Training/{R2_SUBJECT_GLOB}) or ATLAS R1.x (<site>/<subject>/[t01/]*_t1w[_deface]_stx.nii.gz with {R1_MASK_GLOB})"

    def detect(self, root: Path) -> bool:
        return any(next(folder.glob(R2_SUBJECT_GLOB), None) for folder, _ in _r2_folders(root) if folder.is_dir()) or any(
            next(root.glob(pattern), None) for pattern in R1_IMAGE_GLOBS
        )

    def find(self, root: Path) -> list[Case]:
        return find_r2(root) or find_r1(root)

    def load(self, case: Case) -> CaseArrays:
        """Image (Z, 1, 233, 197) and mask (Z, 233, 197) as stored (R1.x: union of its mask files)."""
        voxels, affine = read_volume(case.image[0])
        mask = None
        for path in case.mask:
            label, _ = read_volume(path)
            if label.shape != voxels.shape:
                raise DataError(f"{path}: mask shape {label.shape} differs from image shape {voxels.shape} ({case.image[0]})")
            mask = label if mask is None else np.maximum(mask, label)
        return CaseArrays(
            image=axial_slices(voxels)[:, None],
            mask=None if mask is None else axial_slices(mask),
            affine=affine,
        )
