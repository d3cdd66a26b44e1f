"""DDP under Hydra, simulated on CPU (`trainer=ddp_sim`: 2 processes, gloo).

DDP inside Hydra is the most reported breakage of Lightning + Hydra projects (plain `ddp` re-launches
the script on rank 1, which re-runs a whole sweep). Each job must give exactly one run folder, one
checkpoint set and one summary, with metrics synced across ranks: the test subjects' per-subject
table covers every test subject although each rank saw only part of the slices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# Spawns DDP processes that train: the slow lane.
pytestmark = pytest.mark.slow

TINY_DDP = (
    "trainer=ddp_sim",
    "data.num_training=10",
    "data.num_testing=0",
    "data.volume_shape=[64,64,16]",
    "data.num_workers=0",
    "data.batch_size=4",
    "model.base_channels=4",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
)


def run_train(arguments: list[str], outputs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LESIONSEG_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lesionseg.train", *arguments], capture_output=True, text=True, env=env, timeout=600)


def check_job_folder(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs"] == 1
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2, checkpoints
    split = json.loads((run / "split.json").read_text())
    subjects = pd.read_csv(run / "test_subjects.csv")
    assert sorted(subjects["subject"]) == sorted(split["test"])
    assert summary["test"]["dice"] is not None


def test_ddp_sim_single_run_and_multirun(tmp_path: Path) -> None:
    single = run_train(list(TINY_DDP), tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    runs = [path.parent for path in (tmp_path / "single").rglob("summary.json")]
    assert len(runs) == 1
    check_job_folder(runs[0])

    multi = run_train(["-m", *TINY_DDP, "seed=1,2"], tmp_path / "multi")
    assert multi.returncode == 0, multi.stderr[-3000:]
    jobs = sorted(path.parent for path in (tmp_path / "multi").rglob("summary.json"))
    assert [job.name for job in jobs] == ["0", "1"]
    for job in jobs:
        check_job_folder(job)
    assert len(list((tmp_path / "multi").rglob("multirun.yaml"))) == 1
