"""`python -m lesionseg.compare`: the methods table from a folder of run summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

from lesionseg.compare import main

UNET_FOLDS = [  # dice, iou, precision, recall, images/s
    (0.70, 0.50, 0.80, 0.60, 40.0),
    (0.80, 0.60, 0.85, 0.70, 42.0),
    (0.90, 0.70, 0.90, 0.80, 44.0),
]
XNET_FOLDS = [
    (0.60, 0.40, 0.70, 0.50, 100.0),
    (0.65, 0.45, 0.70, 0.55, 110.0),
    (0.70, 0.50, 0.70, 0.60, 120.0),
]


def write_summary(folder: Path, **summary: object) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))


def ok_summary(model: str, experiment: str | None, fold: int, params: int, values: tuple[float, ...]) -> dict:
    dice, iou, precision, recall, throughput = values
    return {
        "status": "ok",
        "model": model,
        "data": "synthetic",
        "experiment": experiment,
        "fold": fold,
        "seed": 42,
        "params": params,
        "throughput_img_s": throughput,
        "test": {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "dice_std": 0.1},
    }


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """2 methods x 3 folds, one crashed job and one run without a test phase."""
    root = tmp_path / "multirun"
    methods = [("unet_small", None, 1_946_129, UNET_FOLDS), ("xnet", "xnet_atlas", 310_000, XNET_FOLDS)]
    job = 0
    for model, experiment, params, folds in methods:
        for fold, values in enumerate(folds):
            write_summary(root / str(job) / "nested", **ok_summary(model, experiment, fold, params, values))
            job += 1
    write_summary(
        root / "6",
        status="failed",
        error="RuntimeError: out of memory\nTraceback ...",
        model="unet_small",
        data="synthetic",
        fold=3,
        seed=42,
    )
    untested = ok_summary("xnet", "xnet_atlas", 3, 310_000, XNET_FOLDS[0])
    write_summary(root / "7", **{**untested, "test": {}})
    return root


def test_table_averages_folds_and_lists_failed_runs_apart(multirun: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(multirun)]) == 0
    report = multirun / "compare"

    table = pd.read_csv(report / "table.csv")
    assert list(table["method"]) == ["unet_small", "xnet (xnet_atlas)"]  # best Dice first
    assert list(table["n"]) == [3, 3]
    unet, xnet = table.to_dict("records")
    assert unet["dice_mean"] == pytest.approx(0.80) and unet["dice_std"] == pytest.approx(0.10)
    assert unet["precision_mean"] == pytest.approx(0.85) and unet["precision_std"] == pytest.approx(0.05)
    assert unet["throughput_img_s_mean"] == pytest.approx(42.0) and unet["throughput_img_s_std"] == pytest.approx(2.0)
    assert unet["params"] == 1_946_129
    assert xnet["dice_mean"] == pytest.approx(0.65) and xnet["dice_std"] == pytest.approx(0.05)
    assert xnet["precision_std"] == pytest.approx(0.0)
    assert xnet["recall_mean"] == pytest.approx(0.55)

    markdown = (report / "table.md").read_text(encoding="utf-8")
    assert "| Method | Data | n | Dice | IoU | Precision | Recall | #Params | Images/s |" in markdown
    unet_row = "| unet_small | synthetic | 3 | 0.800 ± 0.100 | 0.600 ± 0.100 | 0.850 ± 0.050 | 0.700 ± 0.100 | 1.95M |"
    xnet_row = "| xnet (xnet_atlas) | synthetic | 3 | 0.650 ± 0.050 | 0.450 ± 0.050 | 0.700 ± 0.000 | 0.550 ± 0.050 | 310K |"
    assert f"{unet_row} 42.0 ± 2.0 |" in markdown
    assert f"{xnet_row} 110.0 ± 10.0 |" in markdown
    not_averaged = markdown.split("Not averaged")[1]
    assert f"| unet_small | synthetic | 3 | RuntimeError: out of memory | {multirun / '6'} |" in not_averaged
    assert f"| xnet (xnet_atlas) | synthetic | 3 | no test metrics | {multirun / '7'} |" in not_averaged
    assert "Traceback" not in markdown
    assert markdown in capsys.readouterr().out

    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 8 and (runs["status"] == "failed").sum() == 1
    image = imread(report / "dice_per_fold.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_existing_report_is_kept_and_a_new_one_goes_to_a_timestamped_subfolder(multirun: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    assert main([str(multirun / "0"), str(multirun / "1"), "--out", str(out)]) == 0
    assert (out / "notes.md").read_text() == "mine"
    [subfolder] = [path for path in out.iterdir() if path.is_dir()]
    assert subfolder.name[:8].isdigit()
    assert sorted(path.name for path in subfolder.iterdir()) == [
        "dice_per_fold.png",
        "runs.csv",
        "table.csv",
        "table.md",
    ]
    assert pd.read_csv(subfolder / "table.csv")["n"].tolist() == [2]


def test_folder_without_summaries_is_a_one_line_error(multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(multirun), str(empty)]) == 2
    error = capsys.readouterr().err
    assert error == f"lesionseg.compare: error: {empty}: no summary.json or evaluation.json found below this folder\n"
    assert not (multirun / "compare").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "unreadable summary"),
        ("[1, 2]", "not a run summary (needs 'status' and 'model')"),
        ('{"status": "ok", "model": "unet", "fold": 0, "test": {"dice": "high"}}', "is not a number"),
    ],
)
def test_bad_summary_is_a_one_line_error_naming_the_file(text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(text)
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"lesionseg.compare: error: {tmp_path / 'run' / 'summary.json'}: ")
    assert problem in error
    assert error.count("\n") == 1
