"""`python -m lesionseg.evaluate`: a checkpoint rebuilds its model and data and reproduces its test numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lesionseg.config import UsageError
from lesionseg.evaluate import evaluate


@pytest.fixture
def trained_run(tiny_run: dict) -> dict:
    """The session's tiny trained run (tests/inference_fixtures.py)."""
    return tiny_run


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_evaluate_reproduces_the_test_stage_from_the_checkpoint(trained_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = evaluate([f"ckpt_path={trained_run['best_checkpoint']}", f"output_dir={out}"])
    assert result["model"] == "unet_small" and result["split"] == "test"
    for name in ("dice", "iou", "precision", "recall"):
        assert result["test"][name] == pytest.approx(trained_run["test"][name], abs=1e-6)
    written = json.loads((out / "evaluation.json").read_text())
    assert not (out / "summary.json").exists()  # compare reads training summaries only
    assert written["params"] == trained_run["params"]
    subjects = pd.read_csv(out / "test_subjects.csv")
    original = pd.read_csv(Path(trained_run["run_dir"]) / "test_subjects.csv")
    assert subjects["subject"].tolist() == original["subject"].tolist()


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_evaluate_on_the_validation_split_with_an_override(trained_run: dict, tmp_path: Path) -> None:
    result = evaluate([f"ckpt_path={trained_run['last_checkpoint']}", "split=val", "inference.tta_flips=[[3]]", f"output_dir={tmp_path / 'val'}"])
    assert result["split"] == "val" and result["overrides"] == ["inference.tta_flips=[[3]]"]
    val_subjects = json.loads((Path(trained_run["run_dir"]) / "split.json").read_text())["val"]
    assert sorted(pd.read_csv(tmp_path / "val" / "test_subjects.csv")["subject"]) == sorted(val_subjects)


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_evaluate_refuses_bad_input(trained_run: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="checkpoint file not found: /nonexistent.ckpt"):
        evaluate(["ckpt_path=/nonexistent.ckpt"])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UsageError, match="carries no lesionseg config"):
        evaluate([f"ckpt_path={foreign}"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("user data")
    with pytest.raises(UsageError, match="exists and is not empty"):
        evaluate([f"ckpt_path={trained_run['best_checkpoint']}", f"output_dir={occupied}"])
    assert (occupied / "mine.txt").read_text() == "user data"
    with pytest.raises(UsageError, match="ckpt_path=<checkpoint file> is required"):
        evaluate(["split=val"])


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_compare_reads_a_real_run_once_even_after_its_checkpoint_was_evaluated(trained_run: dict, tmp_path: Path) -> None:
    from lesionseg.compare import compare

    evaluate([f"ckpt_path={trained_run['best_checkpoint']}"])  # lands in <run>/evaluate/<timestamp>/
    run_dir = Path(trained_run["run_dir"])
    folder, _ = compare([run_dir], tmp_path / "report")
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "dice"] == pytest.approx(trained_run["test"]["dice"], abs=1e-4)
    table = pd.read_csv(folder / "table.csv")
    assert table.loc[0, "n"] == 1


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_run")  # one worker trains the shared run
def test_compare_reads_evaluations_written_outside_their_runs(trained_run: dict, tmp_path: Path) -> None:
    from lesionseg.compare import compare

    evaluate([f"ckpt_path={trained_run['last_checkpoint']}", f"output_dir={tmp_path / 'final' / 'fold0'}"])
    folder, _ = compare([tmp_path / "final"], tmp_path / "report")
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "method"] == "unet_small"
