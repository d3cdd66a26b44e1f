"""Synthetic ATLAS: phantom subjects written in the ATLAS R2.0 (and R1.x) on-disk formats.

`data=synthetic` (the project's default) generates, once per parameter set and deterministically
from a seed, a small ATLAS R2.0 tree in `<cache_dir>/synthetic/<params-hash>/` and then reads it with
exactly the `data=atlas` code path (`AtlasLayout`, slice store, loaders). The R1.x writer serves tests
of that layout. Volumes are written (x, y, z) as int16 T1w + uint8 mask NIfTI files at 1 mm.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.nifti import write_volume
from lesionseg.synthetic.cache import SyntheticDataModule, generated
from lesionseg.synthetic.phantom import Phantom, phantom

SUBJECTS_PER_SITE = 10


def _subject_phantom(seed: int, index: int, shape: Sequence[int]) -> Phantom:
    return phantom(tuple(shape), np.random.default_rng([seed, index]))


def write_atlas_r2(root: str | Path, num_training: int, num_testing: int, shape: Sequence[int], seed: int = 0) -> Path:
    """Write an ATLAS R2.0 tree under `root`: labelled `Training/` subjects, unlabelled `Testing/` ones."""
    root = Path(root)
    for index in range(num_training + num_testing):
        training = index < num_training
        site = f"R{index // SUBJECTS_PER_SITE + 1:03d}"
        subject = f"sub-r{site[1:]}s{index:03d}"
        anat = root / ("Training" if training else "Testing") / site / subject / "ses-1" / "anat"
        stem = f"{subject}_ses-1_space-MNI152NLin2009aSym"
        sample = _subject_phantom(seed, index, shape)
        write_volume(anat / f"{stem}_T1w.nii.gz", np.round(sample.image).astype(np.int16))
        if training:
            write_volume(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", sample.mask)
    return root


def write_atlas_r1(root: str | Path, num_subjects: int, shape: Sequence[int], seed: int = 0) -> Path:
    """Write an ATLAS R1.2-style tree `<site>/<subject>/t01/` whose label is split over two
    `*LesionSmooth*` files (one lesion voxel set each half), so readers must take their union."""
    root = Path(root)
    for index in range(num_subjects):
        site, subject = f"Site{index // SUBJECTS_PER_SITE + 1}", f"{index:06d}"
        session = root / site / subject / "t01"
        sample = _subject_phantom(seed, index, shape)
        write_volume(session / f"{subject}_t1w_deface_stx.nii.gz", np.round(sample.image).astype(np.int16))
        half = shape[0] // 2
        first, second = sample.mask.copy(), sample.mask.copy()
        first[half:], second[:half] = 0, 0
        write_volume(session / f"{subject}_LesionSmooth_stx.nii.gz", first)
        write_volume(session / f"{subject}_LesionSmooth_1_stx.nii.gz", second)
    return root


class SyntheticAtlasDataModule(SyntheticDataModule):
    """The ATLAS R2.0 tree `write_atlas_r2` generates, in `<root or cache_dir/synthetic>/<params-hash>/`."""

    def __init__(
        self,
        cache_dir: str,
        root: str | None = None,
        num_training: int = 24,
        num_testing: int = 4,
        volume_shape: Sequence[int] = (96, 112, 40),
        seed: int = 0,
        **kwargs: Any,
    ):
        kwargs.setdefault("layout", AtlasLayout())
        kwargs.setdefault("name", "synthetic")
        writer = functools.partial(write_atlas_r2, num_training=num_training, num_testing=num_testing, shape=tuple(volume_shape), seed=seed)
        super().__init__(writer=writer, cache_dir=cache_dir, root=root, **kwargs)


def synthetic_atlas(parent: str | Path, num_training: int, num_testing: int, shape: Sequence[int], seed: int) -> Path:
    """The synthetic ATLAS R2.0 root `<parent>/<params-hash>` for these parameters, generated on first use."""
    return generated(parent, functools.partial(write_atlas_r2, num_training=num_training, num_testing=num_testing, shape=tuple(shape), seed=seed))
