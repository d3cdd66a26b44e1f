"""`python -m lesionseg.evaluate ckpt_path=<ckpt> [split=test|val] [data.root=...] [key=value ...]`.

A Hydra app (`conf/evaluate.yaml`). The checkpoint's stored config is the run
(`lesionseg.app_config`): the exact model and data pipeline, with only what the command line names
changed (another dataset root or `data=<option>`, fold, `inference.*` TTA or clean-up). Reports
per-subject 3D metrics averaged over subjects, with a per-subject CSV, into a new folder
(`output_dir=`, default `<run folder>/evaluate/<timestamp>/`); nothing existing is overwritten.

One checkpoint is tested by Lightning's test loop, exactly as the training run's test stage.
Several (`ckpt_path=[a,b,...]`, or `run_dir=<multirun folder>`) are evaluated as one ensemble: the
members' mean probabilities on every stored slice of the split (`lesionseg.inference.predictor`),
finished and scored per subject with the same functions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from lesionseg.app_config import app_overrides, check_keys, checked_main, compose_app, in_sweep
from lesionseg.callbacks import TestSubjectTable
from lesionseg.checkpoints import new_output_dir
from lesionseg.config import CONF_DIR, UsageError, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import DataError
from lesionseg.evaluation import SubjectAccumulator, summarize_subjects
from lesionseg.factory import load_module
from lesionseg.inference.predictor import Predictor
from lesionseg.inference.settings import InferenceSettings
from lesionseg.models.measure import count_parameters
from lesionseg.outputs import atomic_write
from lesionseg.predict import anchor_checkpoint, chosen_postprocessing, member_configs, member_paths
from lesionseg.summary import print_results, write_summary

log = logging.getLogger("lesionseg.evaluate")
SPLITS = ("test", "val")
OWN_KEYS = ("ckpt_path", "run_dir", "split", "output_dir", "task_name")


def split_loader(datamodule: Any, split: str) -> Any:
    return datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()


def test_one(path: Path, cfg: DictConfig, datamodule: Any, split: str, output_dir: Path) -> tuple[dict[str, float], dict[str, float], int]:
    """Lightning's test loop with one checkpoint: (per-subject means, slice metrics, parameters)."""
    module, _ = load_module(path, cfg)
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(output_dir),
        callbacks=[TestSubjectTable(output_dir)],  # writes test_subjects.csv
    )
    metrics = trainer.test(module, dataloaders=split_loader(datamodule, split))[0]
    slice_metrics = {key: float(value) for key, value in metrics.items() if not key.startswith("test/subject_")}
    return dict(module.test_subject_summary), slice_metrics, count_parameters(module.net)


def test_ensemble(predictor: Predictor, datamodule: Any, split: str, output_dir: Path) -> dict[str, float]:
    """The ensemble's per-subject metrics on the stored slices of a split (the test stage's input)."""
    accumulator = SubjectAccumulator()
    for stored in datamodule.subjects(split):
        image = np.asarray(stored.image, dtype=np.float32)
        if image.shape[1] == 1 < predictor.in_channels:
            image = np.repeat(image, predictor.in_channels, axis=1)
        probabilities, cls_probability = predictor.model_space(image)
        mask = predictor.finish(probabilities, cls_probability)
        slices = torch.arange(len(mask))
        accumulator.add([stored.subject] * len(mask), slices, torch.from_numpy(mask > 0), torch.from_numpy(np.asarray(stored.mask) > 0))
    table = accumulator.compute()
    atomic_write(output_dir / "test_subjects.csv", lambda file: table.to_csv(file, index=False))
    return summarize_subjects(table)


def run(app: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Evaluate a checkpoint (or an ensemble) on a split; write evaluation.json and test_subjects.csv."""
    started = time.perf_counter()
    split = app.get("split") or "test"
    if split not in SPLITS:
        raise UsageError(f"split={split}: use one of {', '.join(SPLITS)}")
    paths = member_paths(app)
    configs = member_configs(paths, app, overrides)
    cfg = configs[0]
    requested = Path(app.output_dir).expanduser() if app.get("output_dir") else None
    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "fit")
    if not datamodule.split.get(split):
        raise UsageError(f"{paths[0]}: the {split} split of data {cfg.data.name} holds no subjects; use split=val")
    output_dir = new_output_dir(anchor_checkpoint(app, paths), requested, "evaluate")
    slice_metrics: dict[str, float] = {}
    settings, chosen = chosen_postprocessing(app, InferenceSettings.from_config(cfg), overrides)
    if len(paths) == 1 and not app.get("run_dir"):
        subject_summary, slice_metrics, params = test_one(paths[0], cfg, datamodule, split, output_dir)
    else:
        predictor = Predictor.from_checkpoints(paths, configs, settings, "auto")
        subject_summary = test_ensemble(predictor, datamodule, split, output_dir)
        params = sum(count_parameters(member.net) for member in predictor.members)
    summary = {
        "status": "ok",
        "model": cfg.get("model_name"),
        "experiment": cfg.get("experiment_name"),
        "data": cfg.data.get("name"),
        "fold": cfg.data.get("fold"),
        "split": split,
        "seed": cfg.get("seed"),
        "params": params,
        "checkpoint": str(paths[0]),
        "checkpoints": [str(path) for path in paths],
        "overrides": [override for override in overrides if override.split("=")[0] not in OWN_KEYS],
        "inference": settings.as_dict(),
        "postprocessing_from": None if chosen is None else str(Path(app.run_dir) / "postprocessing.json"),
        "test": subject_summary,
        "test_slice": slice_metrics,
        "wall_time_s": time.perf_counter() - started,
        "run_dir": str(output_dir),
    }
    write_summary(output_dir / "evaluation.json", summary)
    print_results(summary)
    return summary


def evaluate(arguments: list[str]) -> dict[str, Any]:
    """The Python form of the command line: `evaluate(["ckpt_path=...", "split=val"])`."""
    register_resolvers()
    check_keys(arguments, "evaluate", OWN_KEYS)
    return run(compose_app("evaluate", arguments), list(arguments))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def app(cfg: DictConfig) -> int:
    """Hydra app: one evaluation (one job of a sweep); a bad input is one line, exit code 2."""
    try:
        run(cfg, app_overrides())
    except (UsageError, DataError, FileNotFoundError) as error:
        if in_sweep():
            log.error("job failed: %s", error)
            return 2
        exit_on_usage_error(str(error))
    return 0


def main() -> None:
    """Check the command line (group options, unknown keys) before Hydra, then run the app."""
    checked_main(app, "evaluate", OWN_KEYS)


if __name__ == "__main__":
    main()
