"""`python -m lesionseg.predict`: masks for new scans, in each scan's own geometry and format."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lesionseg.config import UsageError
from lesionseg.data.cases import DataError
from lesionseg.data.preprocess import Preprocess
from lesionseg.predict import predict


@pytest.fixture
def trained_run(tiny_run: dict) -> dict:
    """The session's tiny trained run (tests/inference_fixtures.py)."""
    return tiny_run


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_restore_undoes_crop_pad_and_resize() -> None:
    rng = np.random.default_rng(0)
    mask = (rng.random((3, 233, 197)) > 0.5).astype(np.uint8)
    image = mask[:, None].astype(np.float32)
    xnet = Preprocess(crop=((5, 229), (2, 194)))
    _, stored = xnet(image, mask)
    assert stored.shape == (3, 224, 192)
    restored = xnet.restore(stored, (233, 197))
    assert restored.shape == mask.shape
    assert (restored[:, 5:229, 2:194] == mask[:, 5:229, 2:194]).all()
    assert restored[:, :5].sum() == 0 and restored[:, :, 194:].sum() == 0
    for target in ((256, 256), (200, 180)):  # padding and centre-cropping are undone exactly
        padded = Preprocess(target_size=target, resize_mode="pad")
        _, stored = padded(image, mask)
        back = padded.restore(stored, (233, 197))
        inside = (slice(None), slice((233 - min(233, target[0])) // 2, None), slice((197 - min(197, target[1])) // 2, None))
        assert back.shape == mask.shape
        if target == (256, 256):
            assert (back == mask).all()
        else:
            assert (back[inside][:, : target[0], : target[1]] == mask[inside][:, : target[0], : target[1]]).all()
    blocks = np.kron(rng.random((3, 4, 4)) > 0.5, np.ones((64, 64), dtype=bool)).astype(np.uint8)
    resized = Preprocess(target_size=(128, 128), resize_mode="resize")
    _, small = resized(blocks[:, None].astype(np.float32), blocks)
    assert (resized.restore(small, (256, 256)) == blocks).all()
    probabilities = resized.restore(np.full((3, 1, 128, 128), 0.25, np.float32), (256, 256), cv2.INTER_LINEAR)
    assert probabilities.shape == (3, 1, 256, 256) and np.allclose(probabilities, 0.25)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_predicts_unlabelled_testing_subjects_as_nifti_in_the_scan_geometry(trained_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    summary = predict([f"ckpt_path={trained_run['best_checkpoint']}", f"output_dir={out}", "save_probabilities=true"])
    assert summary["scans"] == 2 and summary["failed"] == 0
    table = pd.read_csv(out / "predictions.csv")
    assert table["status"].tolist() == ["ok", "ok"]
    for row in table.itertuples():
        source = nib.load(row.source)
        assert "/Testing/" in row.source
        written = nib.load(row.mask)
        assert written.shape == source.shape
        assert np.allclose(written.affine, source.affine)
        voxels = np.asarray(written.dataobj)
        assert voxels.dtype == np.uint8 and set(np.unique(voxels)) <= {0, 1}
        assert row.lesion_voxels == int(voxels.sum())
        assert row.lesion_ml == pytest.approx(row.lesion_voxels / 1000.0)
        probabilities = np.load(out / f"{row.subject}_probabilities.npz")["probabilities"]
        assert probabilities.shape == (source.shape[2], 1, source.shape[1], source.shape[0])
        assert ((probabilities[:, 0] > 0.5) == (np.transpose(voxels, (2, 1, 0)) > 0)).mean() > 0.999
    assert json.loads((out / "predict.json").read_text())["model"] == "unet_small"


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_predicts_2d_pictures_and_reports_a_bad_file_without_losing_the_others(trained_run: dict, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    source = nib.load(next(Path(os.environ["LESIONSEG_CACHE"]).rglob("*_T1w.nii.gz")))
    plane = np.clip(np.asarray(source.dataobj)[:, :, 8].T, 0, 255).astype(np.uint8)
    cv2.imwrite(str(scans / "slice.png"), plane[:50, :60])  # an odd size: the model pads and crops back
    (scans / "broken.nii.gz").write_bytes(gzip.compress(b"\x00" * 100)[:40])
    (scans / "slice_mask.png").write_bytes(b"skipped: a mask, not a scan")
    out = tmp_path / "out"
    summary = predict([f"ckpt_path={trained_run['best_checkpoint']}", f"input={scans}", f"output_dir={out}"])
    assert summary["scans"] == 2 and summary["failed"] == 1
    table = pd.read_csv(out / "predictions.csv").set_index("subject")
    assert table.loc["broken", "status"].startswith(f"failed: {scans / 'broken.nii.gz'}: ") and "NIfTI" in table.loc["broken", "status"]
    assert table.loc["slice", "status"] == "ok"
    written = cv2.imread(str(out / "slice_mask.png"), cv2.IMREAD_UNCHANGED)
    assert written.shape == (50, 60) and set(np.unique(written)) <= {0, 255}


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_bad_requests_fail_with_one_line_and_leave_folders_alone(trained_run: dict, tmp_path: Path) -> None:
    ckpt = f"ckpt_path={trained_run['best_checkpoint']}"
    with pytest.raises(DataError, match="input not found"):
        predict([ckpt, f"input={tmp_path / 'nowhere'}"])
    with pytest.raises(UsageError, match="required"):
        predict(["input=x"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.nii.gz").write_text("user data")
    with pytest.raises(UsageError, match="exists and is not empty"):
        predict([ckpt, f"output_dir={occupied}"])
    assert [p.name for p in occupied.iterdir()] == ["mine.nii.gz"]
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lesionseg.predict", ckpt, f"input={tmp_path / 'bad.nii.gz'}", f"output_dir={tmp_path / 'cli'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith(f"error: {tmp_path / 'bad.nii.gz'}: ") and "NIfTI" in errors[0]
    assert errors[-1].startswith("error: 1 of 1 scans failed")
