"""Ensembles of checkpoints: the folds of a cross-validation predicting together.

nnU-Net predicts with all five folds by default and averages their softmax outputs; here the
members' probabilities are averaged after each member's own flip TTA (`Predictor.model_space`).
Members must see the same input: their `data.preprocess`, `data.in_channels`, `data.num_classes` and
`data.grid` must be equal, otherwise averaging would mix models fed different images (one-line
UsageError naming both checkpoints).

`run_members(run_dir)` turns a multirun folder (`outputs/multirun/<date>/<time>/`, one job per fold)
into its members: each job's best checkpoint (`summary.json: best_checkpoint`, the one the test
stage scored), else its `checkpoints/last.ckpt`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lesionseg.config import UsageError

# The config keys that decide what a member's network sees and outputs.
SHARED_KEYS = ("data.preprocess", "data.in_channels", "data.num_classes", "data.grid")


def check_members(names: Sequence[str], configs: Sequence[DictConfig]) -> None:
    """UsageError naming the first two members whose preprocessing (`SHARED_KEYS`) differs."""
    reference = configs[0]
    for name, cfg in zip(names[1:], configs[1:]):
        for key in SHARED_KEYS:
            first, other = _value(reference, key), _value(cfg, key)
            if first != other:
                raise UsageError(f"ensemble members {names[0]} and {name} differ in {key} ({first} vs {other}); members must share their preprocessing")


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def job_folders(run_dir: Path) -> list[Path]:
    """The job folders of a multirun folder (those holding a checkpoint), in job order."""
    if not run_dir.is_dir():
        raise UsageError(f"run_dir={run_dir}: not a folder")
    jobs = [folder for folder in run_dir.iterdir() if folder.is_dir() and (folder / "checkpoints").is_dir()]
    if not jobs:
        raise UsageError(f"run_dir={run_dir}: no job folders with checkpoints/ (expected a multirun folder of lesionseg.train)")
    return sorted(jobs, key=lambda folder: (not folder.name.isdigit(), int(folder.name) if folder.name.isdigit() else 0, folder.name))


def job_checkpoint(job: Path) -> Path:
    """A job's best checkpoint (as recorded in its summary.json), else its last.ckpt."""
    summary = job / "summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    last = job / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UsageError(f"{job}: no checkpoint (neither summary.json's best_checkpoint nor checkpoints/last.ckpt)")
    return last


def run_members(run_dir: Path) -> list[Path]:
    """The checkpoints of every job of a multirun folder: the members of its fold ensemble."""
    return [job_checkpoint(job) for job in job_folders(run_dir)]
