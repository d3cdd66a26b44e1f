"""`python -m lesionseg.train data=<layout> data.root=<folder>` trains end to end on every real on-disk layout.

Each dataset is written by the project's own writer in exactly the layout it is distributed in, and
trained through the same entry point a researcher uses (tiny: `debug=limit`, one epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import pandas as pd
import pydicom
import pytest

from lesionseg.predict import predict
from lesionseg.synthetic.atlas import write_atlas_r2
from lesionseg.synthetic.dicom import write_synthetic_dicom_stroke
from lesionseg.synthetic.folder import write_synthetic_folder
from lesionseg.synthetic.lgg import write_synthetic_lgg
from lesionseg.training import train

# A real training per data layout: the slow lane.
pytestmark = pytest.mark.slow

LAYOUTS = {
    # ATLAS R2.0 at the real slice size (233x197), X-Net's crop to 224x192, X-Net itself (narrow).
    "atlas": (lambda root: write_atlas_r2(root, 6, 1, (197, 233, 4), seed=1), ("model=xnet", "model.base_channels=8")),
    "lgg": (lambda root: write_synthetic_lgg(root / "kaggle_3m", 6, seed=2, n_slices=4, size=64), ("model=lraspp_mnv3",)),
    "folder": (lambda root: write_synthetic_folder(root, 8, seed=3, size=48, n_slices=3), ("model=unet_small", "model.base_channels=4")),
    "dicom_stroke": (
        lambda root: write_synthetic_dicom_stroke(root, n_subjects=6, seed=4, slices_per_series=2, size=64),
        ("model=segclassifier", "data.grid=2"),
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_end_to_end_on_the_real_layout(layout: str, train_config, tmp_path: Path) -> None:
    write, model = LAYOUTS[layout]
    root = write(tmp_path / layout)
    cfg = train_config(
        f"data={layout}",
        f"data.root={tmp_path / layout}",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.num_folds=2",
        *model,
        "debug=limit",
        "trainer.max_epochs=1",
        "logger=csv",
    )
    assert root.exists()
    _, summary = train(cfg)
    assert summary["status"] == "ok" and summary["data"] == layout and summary["epochs"] == 1
    assert {"dice", "iou", "precision", "recall"} <= set(summary["test"])
    split = json.loads((Path(cfg.paths.output_dir) / "split.json").read_text())
    assert split["train"] and split["val"] and split["test"]
    assert not set(split["train"]) & set(split["val"]) and not set(split["test"]) & set(split["train"] + split["val"])

    # Predicting every case writes masks in each scan's own format and geometry.
    predict([f"ckpt_path={summary['best_checkpoint']}", "cases=all", f"output_dir={tmp_path / 'masks'}"])
    table = pd.read_csv(tmp_path / "masks" / "predictions.csv")
    assert (table["status"] == "ok").all()
    assert set(split["train"] + split["val"] + split["test"]) <= set(table["subject"])  # (+ ATLAS Testing/ subjects)
    for row in table.itertuples():
        if row.source.endswith(".nii.gz"):
            assert nib.load(row.mask).shape == nib.load(row.source).shape
        elif Path(row.mask).is_dir():  # one file per slice: one mask per source slice, same size
            masks = sorted(Path(row.mask).glob("*_mask.png"))
            assert len(masks) == row.slices
            assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == slice_size(Path(row.source))
        else:
            assert cv2.imread(row.mask, cv2.IMREAD_UNCHANGED).shape == slice_size(Path(row.source))


def slice_size(source: Path) -> tuple[int, int]:
    """(H, W) of a 2D source file: TIFF, PNG or DICOM."""
    if source.suffix == ".dcm":
        return tuple(pydicom.dcmread(source).pixel_array.shape)
    return tuple(cv2.imread(str(source), cv2.IMREAD_UNCHANGED).shape[:2])
