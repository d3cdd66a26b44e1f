"""Tiny on-disk datasets for the data tests: ATLAS R2.0 and R1.2 trees of phantom subjects.

Volumes are 24x28x6 voxels (slices 28x24) so a whole tree is written and stored in well under a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.datamodule import LesionDataModule
from lesionseg.synthetic.atlas import write_atlas_r1, write_atlas_r2

TINY_SHAPE = (24, 28, 6)
NUM_TRAINING, NUM_TESTING = 8, 2


@pytest.fixture(scope="session")
def pristine_r2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_atlas_r2(tmp_path_factory.mktemp("r2") / "ATLAS_2", NUM_TRAINING, NUM_TESTING, TINY_SHAPE, seed=1)


@pytest.fixture
def r2_root(pristine_r2: Path, tmp_path: Path) -> Path:
    """A private copy of an ATLAS R2.0 tree: 8 labelled Training/ and 2 unlabelled Testing/ subjects."""
    return Path(shutil.copytree(pristine_r2, tmp_path / "ATLAS_2"))


@pytest.fixture
def r1_root(tmp_path: Path) -> Path:
    """An ATLAS R1.2-style tree of 5 subjects, each label split over two LesionSmooth files."""
    return write_atlas_r1(tmp_path / "ATLAS_R1.2", 5, TINY_SHAPE, seed=2)


def atlas_module(root: Path, cache_dir: Path, **overrides) -> LesionDataModule:
    """A DataModule over `root` with test-friendly defaults (no workers, 2 folds, no preprocessing)."""
    options = dict(
        layout=AtlasLayout(),
        root=str(root),
        name="atlas",
        cache_dir=str(cache_dir),
        batch_size=4,
        num_workers=0,
        num_folds=2,
        test_fraction=0.25,
        preprocess={"normalisation": "constant", "scale": 100.0},
    )
    return LesionDataModule(**{**options, **overrides})


def store_files(cache_dir: Path) -> dict[Path, int]:
    """Every file under the store with its mtime (ns): what a rebuild would change."""
    return {path: path.stat().st_mtime_ns for path in (cache_dir / "store").rglob("*") if path.is_file()}
