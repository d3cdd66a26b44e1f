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
import torch
from omegaconf import DictConfig, OmegaConf

from lesionseg.config import UsageError, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import DataError
from lesionseg.summary import count_parameters, print_results, write_summary
from lesionseg.train import build_module

SPLITS = ("test", "val")


def parse_arguments(arguments: Sequence[str]) -> tuple[str, str, Path | None, list[str]]:
    """(checkpoint, split, output folder, remaining config overrides) from `key=value` words."""
    overrides = []
    ckpt_path, split, output_dir = None, "test", None
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if not separator:
            raise UsageError(f"expected key=value, got '{argument}'")
        if key == "ckpt_path":
            ckpt_path = value
        elif key == "split":
            split = value
        elif key == "output_dir":
            output_dir = Path(value)
        else:
            overrides.append(argument)
    if not ckpt_path:
        raise UsageError("ckpt_path=<checkpoint file> is required")
    if split not in SPLITS:
        raise UsageError(f"split={split}: use one of {', '.join(SPLITS)}")
    return ckpt_path, split, output_dir, overrides


def load_checkpoint(path: Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint and the run config it carries; UsageError naming the file otherwise."""
    if not path.is_file():
        raise UsageError(f"ckpt_path: checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UsageError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if "lesionseg_config" not in checkpoint:
        raise UsageError(f"{path}: checkpoint carries no lesionseg config (was it written by lesionseg.train?)")
    return checkpoint, OmegaConf.create(checkpoint["lesionseg_config"])


def new_output_dir(checkpoint_path: Path, requested: Path | None) -> Path:
    """A folder that does not exist yet: never write into a user's existing folder."""
    folder = requested or checkpoint_path.resolve().parent.parent / "evaluate" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"output_dir {folder} exists and is not empty; choose another")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def evaluate(arguments: Sequence[str]) -> dict[str, Any]:
    """Test a checkpoint on a split; write summary.json and test_subjects.csv; return the summary."""
    started = time.perf_counter()
    ckpt_text, split, requested_dir, overrides = parse_arguments(arguments)
    checkpoint_path = Path(ckpt_text).expanduser()
    checkpoint, cfg = load_checkpoint(checkpoint_path)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as error:
        raise UsageError(f"bad override in {' '.join(overrides)}: {error}") from error
    output_dir = new_output_dir(checkpoint_path, requested_dir)
    cfg.paths.output_dir = str(output_dir)

    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "fit")
    if not datamodule.split.get(split):
        raise UsageError(f"{checkpoint_path}: the {split} split of data {cfg.data.name} holds no subjects; use split=val")
    net = hydra.utils.instantiate(cfg.model)
    module = build_module(cfg, net, output_dir)
    module.load_state_dict(checkpoint["state_dict"])
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
        "params": count_parameters(net),
        "checkpoint": str(checkpoint_path),
        "overrides": list(overrides),
        "test": dict(module.test_subject_summary),
        "test_slice": {key: float(value) for key, value in metrics.items() if not key.startswith("test/subject_")},
        "wall_time_s": time.perf_counter() - started,
        "run_dir": str(output_dir),
    }
    write_summary(output_dir / "summary.json", summary)
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
