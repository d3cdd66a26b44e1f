"""Reproducibility and faults: same config + seed gives the same numbers; a killed run resumes.

Runs are tiny (8 phantom subjects of 64x64x16 voxels, a U-Net with 4 base channels, a few batches): the
file takes about 20 s of CPU besides one Python start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lesionseg.training import train

# Repeated real trainings (and a killed one): the slow lane.
pytestmark = pytest.mark.slow

TINY_RUN = (
    "data.num_training=8",
    "data.num_testing=0",
    "data.volume_shape=[64,64,16]",
    "data.num_workers=0",
    "model.base_channels=4",
    "optimizer.lr=3e-3",
    "logger=csv",
    "callbacks.model_summary=null",
    "trainer.num_sanity_val_steps=0",
)
SHORT_FIT = (
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
)


def fit_twice(train_config, tmp_path: Path, *overrides: str) -> list[dict]:
    """Two runs of the same composed config into two folders; their summaries."""
    summaries = []
    for name in ("first", "second"):
        cfg = train_config(*TINY_RUN, *SHORT_FIT, *overrides)
        cfg.paths.output_dir = str(tmp_path / name)
        summaries.append(train(cfg)[1])
    return summaries


def test_same_seed_gives_identical_metrics_without_augmentation(train_config, tmp_path) -> None:
    first, second = fit_twice(train_config, tmp_path, "augment=none")
    assert first["test"] and first["last_val"]
    assert first["test"] == second["test"]
    assert first["best_val"] == second["best_val"]
    assert first["last_val"] == second["last_val"]


def test_same_seed_gives_identical_metrics_with_the_default_augmentation(train_config, tmp_path) -> None:
    first, second = fit_twice(train_config, tmp_path, "augment=default")
    assert first["test"] == second["test"]
    assert first["best_val"] == second["best_val"]
    assert first["last_val"] == second["last_val"]


class OutputWatcher:
    """Collects a child process' output in a thread so the test can wait for a progress-bar line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self._process.stdout.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    def tail(self) -> str:
        return self.text[-3000:]


def epochs_in_csv(run_dir: Path) -> list[int]:
    """The epochs with a logged training-loss row in a run's metrics.csv."""
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return sorted(metrics.dropna(subset=["train/loss_epoch"])["epoch"].astype(int).tolist())


def test_run_killed_mid_epoch_resumes_to_the_configured_epochs(train_config, tmp_path) -> None:
    max_epochs = 2
    # 64 one-slice batches per epoch: a long enough epoch 1 to be killed in.
    fit = (
        "augment=none",
        "data.batch_size=1",
        f"trainer.max_epochs={max_epochs}",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    )
    outputs = tmp_path / "outputs"
    env = {**os.environ, "LESIONSEG_OUTPUTS": str(outputs)}
    # A TQDM bar prints "Epoch N" as each epoch starts (the Rich one draws nothing into a pipe).
    tqdm_bar = "callbacks.progress_bar._target_=lightning.pytorch.callbacks.TQDMProgressBar"
    process = subprocess.Popen(
        [sys.executable, "-m", "lesionseg.train", *TINY_RUN, *fit, tqdm_bar],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    watcher = OutputWatcher(process)
    deadline = time.monotonic() + 240
    last = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list(outputs.glob("*/*/checkpoints/last.ckpt"))
        if found and "Epoch 1" in watcher.text:
            last = found[0]
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert last is not None, f"never saw last.ckpt and epoch 1 start (exit {process.returncode}):\n{watcher.tail()}"
    killed_dir = last.parent.parent
    assert not (killed_dir / "summary.json").exists(), "the run finished before it was killed"
    saved_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert saved_epoch + 1 < max_epochs

    resumed = {}
    for name, resume in {
        "last": ("ckpt_path=last", f"resume_dir={killed_dir}"),
        "path": (f"ckpt_path={last}",),
    }.items():
        cfg = train_config(*TINY_RUN, *fit, *resume)
        cfg.paths.output_dir = str(tmp_path / f"resumed_{name}")
        _, summary = train(cfg)
        assert summary["epochs"] == max_epochs
        assert summary["resumed_from"] == str(last)
        assert epochs_in_csv(tmp_path / f"resumed_{name}") == list(range(saved_epoch + 1, max_epochs))
        resumed[name] = summary
    assert resumed["last"]["last_val"] == resumed["path"]["last_val"]
    assert resumed["last"]["test"] == resumed["path"]["test"]
