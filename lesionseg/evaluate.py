"""`python -m lesionseg.evaluate ckpt_path=<ckpt> [split=test|val] [data.root=...] [key=value ...]`.

A checkpoint written by `lesionseg.train` carries its resolved config, so this rebuilds the exact
model and data pipeline, applies the given overrides (another dataset root, fold, TTA or
post-processing under `inference.*`), and reports per-subject 3D metrics averaged over subjects,
with a per-subject CSV. Results go to a new folder (`output_dir=`, default
`<run folder>/evaluate/<timestamp>/`); nothing existing is overwritten.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L

from lesionseg.checkpoints import load_checkpoint, merged_config, new_output_dir, parse_key_values, restore_module
from lesionseg.config import UsageError, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import DataError
from lesionseg.models.measure import count_parameters
from lesionseg.summary import print_results, write_summary

SPLITS = ("test", "val")


def parse_arguments(arguments: Sequence[str]) -> tuple[str, str, Path | None, list[str]]:
    """(checkpoint, split, output folder, remaining config overrides) from `key=value` words."""
    own, overrides = parse_key_values(arguments, ("ckpt_path", "split", "output_dir"))
    if not own.get("ckpt_path"):
        raise UsageError("ckpt_path=<checkpoint file> is required")
    split = own.get("split", "test")
    if split not in SPLITS:
        raise UsageError(f"split={split}: use one of {', '.join(SPLITS)}")
    output_dir = Path(own["output_dir"]) if own.get("output_dir") else None
    return own["ckpt_path"], split, output_dir, overrides


def evaluate(arguments: Sequence[str]) -> dict[str, Any]:
    """Test a checkpoint on a split; write evaluation.json and test_subjects.csv; return the summary."""
    started = time.perf_counter()
    ckpt_text, split, requested_dir, overrides = parse_arguments(arguments)
    checkpoint_path = Path(ckpt_text).expanduser()
    checkpoint, cfg = load_checkpoint(checkpoint_path)
    cfg = merged_config(cfg, overrides)
    output_dir = new_output_dir(checkpoint_path, requested_dir, "evaluate")
    cfg.paths.output_dir = str(output_dir)

    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "fit")
    if not datamodule.split.get(split):
        raise UsageError(f"{checkpoint_path}: the {split} split of data {cfg.data.name} holds no subjects; use split=val")
    module = restore_module(checkpoint, cfg, output_dir)
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(output_dir),
    )
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    metrics = trainer.test(module, dataloaders=loader)[0]
    summary = {
        "status": "ok",
        "model": cfg.model_name,
        "experiment": cfg.get("experiment_name"),
        "data": cfg.data.get("name"),
        "fold": cfg.data.get("fold"),
        "split": split,
        "seed": cfg.get("seed"),
        "params": count_parameters(module.net),
        "checkpoint": str(checkpoint_path),
        "overrides": list(overrides),
        "test": dict(module.test_subject_summary),
        "test_slice": {key: float(value) for key, value in metrics.items() if not key.startswith("test/subject_")},
        "wall_time_s": time.perf_counter() - started,
        "run_dir": str(output_dir),
    }
    write_summary(output_dir / "evaluation.json", summary)
    print_results(summary)
    return summary


def main() -> None:
    register_resolvers()
    try:
        evaluate(sys.argv[1:])
    except (UsageError, DataError, FileNotFoundError) as error:
        exit_on_usage_error(str(error))


if __name__ == "__main__":
    main()
