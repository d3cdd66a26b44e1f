"""`data=synthetic_dicom`: a stroke study like the few-label DICOM study's, generated once and read as dicom_stroke."""

from __future__ import annotations

import hashlib
from pathlib import Path

import hydra
import numpy as np
import pydicom
import pytest

from lesionseg.data.dicom_stroke import DicomStrokeLayout
from lesionseg.synthetic.dicom import LESION_FRACTION, stroke_slice, write_stroke_study
from lesionseg.training import train

SMALL = {"num_series": 3, "slices_per_series": 2, "num_unlabelled": 1, "size": 256, "label_size": 512}


def digest(root: Path) -> str:
    """Hash of every file's relative path and bytes under `root`."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return hashlib.sha256(b"".join(str(path.relative_to(root)).encode() + path.read_bytes() for path in files)).hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stroke_study(tmp_path_factory.mktemp("study") / "a", seed=5, **SMALL)


def test_generation_is_deterministic_and_in_the_dicom_stroke_layout(study: Path, tmp_path: Path) -> None:
    assert digest(write_stroke_study(tmp_path / "b", seed=5, **SMALL)) == digest(study)
    assert digest(write_stroke_study(tmp_path / "c", seed=6, **SMALL)) != digest(study)
    assert sorted(path.suffix for path in (study / "labels").iterdir()) == [".jpg"] * 6
    dataset = pydicom.dcmread(study / "images" / "STROKE000_001.dcm")
    assert dataset.pixel_array.shape == (256, 256) and dataset.BitsAllocated == 16
    layout = DicomStrokeLayout()
    cases = layout.find(study)
    assert [case.labelled for case in cases] == [True, True, True, False]
    for index, case in enumerate(cases[:3]):
        arrays = layout.load(case)
        assert arrays.image.shape == (2, 1, 256, 256) and arrays.mask is not None
        # Slice 1 shows one stroke (the label read back from the green JPG outline), slice 2 none.
        rng = np.random.default_rng([5, index])
        truth = stroke_slice(rng, 256, lesion=True).mask.T.astype(bool)
        label = arrays.mask[0].astype(bool)
        assert (label & truth).sum() / (label | truth).sum() > 0.9
        assert not arrays.mask[1].any()


@pytest.mark.parametrize("seed", range(4))
def test_every_stroke_survives_the_recipes_1200_px_clean_up(seed: int) -> None:
    areas = [int(stroke_slice(np.random.default_rng([seed, index]), 256, lesion=True).mask.sum()) for index in range(3)]
    low, high = (fraction * 256**2 for fraction in LESION_FRACTION)
    assert all(1200 < low <= area <= high for area in areas)


@pytest.mark.slow
def test_stroke_recipe_trains_on_synthetic_dicom_generated_into_the_cache(train_config, isolated_cache: Path) -> None:
    small = [f"data.writer.{key}={value}" for key, value in SMALL.items()]
    cfg = train_config(
        "experiment=stroke_fewshot",
        "data=synthetic_dicom",
        *small,
        "data.num_folds=2",
        "data.test_fraction=0.34",
        "data.num_workers=0",
        "logger=csv",
        "callbacks.model_summary=null",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.num_sanity_val_steps=0",
    )
    assert cfg.data.grid == 4 and cfg.inference.min_size == 1200
    datamodule = hydra.utils.instantiate(cfg.data)
    assert Path(datamodule.cases()[0].image[0]).is_relative_to(isolated_cache / "synthetic")
    _, summary = train(cfg)
    assert summary["status"] == "ok" and summary["data"] == "synthetic_dicom"
    assert {"dice", "iou"} <= set(summary["test"])
