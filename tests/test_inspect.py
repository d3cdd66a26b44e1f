"""`python -m lesionseg.inspect`: dataset report (JSON + PNG) and integrity findings, written into a new folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from lesionseg.inspect import main
from lesionseg.synthetic.atlas import write_atlas_r2

SHAPE = (24, 28, 4)


def anat(root: Path, index: int) -> tuple[Path, Path]:
    """(T1w, mask) files of training subject `index` of a synthetic ATLAS R2.0 tree."""
    folder = root / "Training" / "R001" / f"sub-r001s{index:03d}" / "ses-1" / "anat"
    return next(folder.glob("*_T1w.nii.gz")), next(folder.glob("*_mask.nii.gz"))


def rewrite(path: Path, voxels: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    image = nib.load(str(path))
    data = np.asarray(image.dataobj) if voxels is None else voxels
    nib.save(nib.Nifti1Image(data.astype(image.get_data_dtype()), image.affine if affine is None else affine), str(path))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 labelled + 1 unlabelled subjects; 1: 2 mm voxels, 2: flipped x axis, 3: a copy of 0, 4: a mask in the background."""
    root = write_atlas_r2(tmp_path_factory.mktemp("inspect") / "ATLAS_2", num_training=8, num_testing=1, shape=SHAPE, seed=7)
    for path in anat(root, 1):
        rewrite(path, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    for path in anat(root, 2):
        rewrite(path, affine=np.diag([-1.0, 1.0, 1.0, 1.0]))
    for source, target in zip(anat(root, 0), anat(root, 3)):
        shutil.copy(source, target)
    outside = np.zeros(SHAPE, np.uint8)
    outside[:3, :3, :] = 1  # a corner: background in every phantom
    rewrite(anat(root, 4)[1], voxels=outside)
    return root


def run(*arguments: str, monkeypatch: pytest.MonkeyPatch) -> None:
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["lesionseg-inspect", *arguments])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def test_report_plots_and_planted_findings(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "report"
    run("data=atlas", f"data.root={planted}", f"output_dir={output}", monkeypatch=monkeypatch)
    report = json.loads((output / "dataset_report.json").read_text())
    assert (report["cases"], report["labelled"], report["unlabelled"], report["subjects"]) == (9, 8, 1, 9)
    assert report["sites"] == {"R001": 9} and report["label_values"] == [0, 1] and report["orientations"] == {"RAS": 8, "LAS": 1}
    assert report["shapes"] == {"28x24 (1 ch)": 9} and report["spacing_mm"]["median"] == [1.0, 1.0, 1.0]
    channel = report["intensity_percentiles"]["channel 0"]
    assert 0 < channel["p1"] < channel["p50"] < channel["p99"]
    cases = {case["subject"]: case for case in report["per_case"]}
    masks = {index: np.asarray(nib.load(str(anat(planted, index)[1])).dataobj) > 0 for index in (0, 1)}
    assert cases["sub-r001s000"]["lesion_voxels"] == masks[0].sum() and cases["sub-r001s000"]["lesion_ml"] == pytest.approx(masks[0].sum() / 1000)
    assert cases["sub-r001s001"]["lesion_ml"] == pytest.approx(masks[1].sum() * 8 / 1000)  # 2 mm voxels
    assert report["per_subject"]["sub-r001s004"] == {"cases": ["sub-r001s004"], "lesion_ml": 0.036, "lesion_voxels": 36, "lesion_count": 1}
    found = {(finding["check"], finding["subject"]) for finding in report["findings"]}
    assert found == {
        ("spacing outlier", "sub-r001s001"),
        ("orientation outlier", "sub-r001s002"),
        ("duplicate subject", "sub-r001s003"),
        ("mask outside the brain", "sub-r001s004"),
    }
    assert report["fingerprint"]["cases"] == 9 and len(report["fingerprint"]["files_sha256"]) == 16
    with Image.open(output / "dataset_report.png") as page:
        assert page.size[0] > 400 and page.size[1] > 300
    printed = capsys.readouterr().out
    assert "spacing outlier: sub-r001s001" in printed and str(output) in printed


def test_never_overwrites_and_bad_input_is_one_line(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run("data=atlas", f"data.root={planted}", f"output_dir={taken}", monkeypatch=monkeypatch)
    assert exit_info.value.code == 2 and (taken / "notes.txt").read_text() == "mine" and not (taken / "dataset_report.json").exists()
    assert "taken exists and is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run("data=atlas", f"data.root={tmp_path / 'nowhere'}", monkeypatch=monkeypatch)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "nowhere is missing" in error and "\n" not in error
