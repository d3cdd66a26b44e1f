"""One training run: fit, validate, test with the best checkpoint, write the run folder.

`train(cfg)` takes a composed config (`conf/train.yaml` and its groups) and instantiates every part
(model, data, augmentation, loss, optimizer, scheduler, trainer, loggers, callbacks) from its
`_target_`. The run folder gets the resolved config, the subject split, checkpoints (last + best),
CSV metrics, validation overlays, per-subject test metrics and `summary.json`. The command line
(`python -m lesionseg.train`) lives in `lesionseg.train`, which imports this module only after the
command line passed its checks.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lesionseg.callbacks import ThroughputMonitor, ValidationHistory
from lesionseg.checkpoints import SafeCheckpointIO, verify_checkpoint
from lesionseg.config import (
    register_resolvers,
    resolve_checkpoint,
)
from lesionseg.factory import build_module, build_net
from lesionseg.inspect import dataset_fingerprint
from lesionseg.models.measure import count_parameters
from lesionseg.outputs import atomic_write_text
from lesionseg.summary import (
    git_commit,
    plain_metrics,
    print_results,
    write_summary,
)

log = logging.getLogger("lesionseg.train")
register_resolvers()


def instantiate_list(configs: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks), dropping Nones."""
    if not configs:
        return []
    built = [hydra.utils.instantiate(config) for config in configs.values() if config is not None]
    return [item for item in built if item is not None]


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Loggers from `cfg.logger`; wandb runs are grouped (experiment or sweep) and tagged for comparison.

    Tags name the model, data and fold so a dashboard can filter and compare runs; the group is the
    configured one, else the experiment, else the multirun folder, so a sweep's jobs sit together.
    """
    loggers = []
    for config in (cfg.get("logger") or {}).values():
        if config is None:
            continue
        extra: dict[str, Any] = {}
        if config.get("_target_", "").endswith("WandbLogger"):
            extra["tags"] = [*(config.get("tags") or []), f"model:{cfg.model_name}", f"data:{cfg.data.name}", f"fold:{cfg.data.get('fold')}"]
            extra["group"] = config.get("group") or cfg.get("experiment_name") or sweep_name()
        loggers.append(hydra.utils.instantiate(config, **extra))
    return loggers


def sweep_name() -> str | None:
    """The multirun folder's name (its timestamp) when this job is part of a sweep."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return "sweep-" + Path(HydraConfig.get().sweep.dir).name
    return None


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Fit, test with the best checkpoint, write summary.json; return (optimised metric, summary)."""
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), cfg.get("resume_dir"), output_dir)
    if ckpt_path is not None:
        verify_checkpoint(Path(ckpt_path))  # data, never code: refused before anything else runs
    L.seed_everything(cfg.seed, workers=True)

    augment = hydra.utils.instantiate(cfg.augment) if cfg.get("augment") else None
    datamodule = hydra.utils.instantiate(cfg.data, augment=augment)
    datamodule.prepare_data()
    datamodule.setup("fit")
    atomic_write_text(output_dir / "split.json", json.dumps(datamodule.split, indent=2))
    OmegaConf.save(cfg, output_dir / "resolved_config.yaml", resolve=True)

    net = build_net(cfg.model)
    if cfg.get("compile"):
        net = cast(torch.nn.Module, torch.compile(net))
    module = build_module(cfg, output_dir, net)
    history = ValidationHistory()
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[*instantiate_list(cfg.get("callbacks")), ThroughputMonitor(), history],
        logger=build_loggers(cfg) or False,
        plugins=[SafeCheckpointIO()],  # atomic, hashed checkpoint writes; weights-only, verified reads
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"params": count_parameters(net), "config": OmegaConf.to_container(cfg, resolve=True)})

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_metrics = plain_metrics(trainer.callback_metrics)
    checkpoint = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    test_metrics: dict[str, float | None] = {}
    test_split = None
    if cfg.test:
        # Cross-validation without a held-out test set (X-Net's protocol) scores the validation fold.
        test_split = "test" if datamodule.split.get("test") else "val"
        loader = datamodule.test_dataloader() if test_split == "test" else datamodule.val_dataloader()
        trainer.test(module, dataloaders=loader, ckpt_path=best_path or (ckpt_path if not cfg.train else None), weights_only=True)
        test_metrics = plain_metrics(trainer.callback_metrics, "test/")

    progress = training_progress(trainer, checkpoint, history)
    best_epoch = history.best(cfg.optimized_metric, cfg.optimized_mode)
    best_score = checkpoint.best_model_score if checkpoint is not None else None
    optimized = float(best_score) if best_score is not None else best_epoch.get(cfg.optimized_metric, fit_metrics.get(cfg.optimized_metric))
    summary = {
        "status": "ok",
        "model": cfg.model_name,
        "data": cfg.data.name,
        "experiment": cfg.experiment_name,
        "fold": cfg.data.get("fold"),
        "seed": cfg.seed,
        "params": count_parameters(net),
        "dataset": dataset_fingerprint(datamodule),
        **progress,
        "best_checkpoint": best_path,
        "last_checkpoint": str(Path(checkpoint.dirpath) / "last.ckpt") if checkpoint is not None and checkpoint.dirpath else None,
        "resumed_from": ckpt_path,
        "optimized_metric": cfg.optimized_metric,
        "best_val": {**best_epoch, cfg.optimized_metric: optimized},
        "last_val": {key: value for key, value in fit_metrics.items() if key.startswith("val/")},
        "test_split": test_split,
        "test": {key.removeprefix("test/subject_"): value for key, value in test_metrics.items() if key.startswith("test/subject_")},
        "test_slice": {key: value for key, value in test_metrics.items() if not key.startswith("test/subject_")},
        "throughput_img_s": fit_metrics.get("train/images_per_s"),
        "wall_time_s": time.perf_counter() - started,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "run_dir": str(output_dir),
        "tags": list(cfg.get("tags") or []),
        "precision": str(cfg.trainer.get("precision")),
        "device": "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu",
    }
    if trainer.is_global_zero:
        write_summary(output_dir / "summary.json", summary)
        print_results(summary)
    finish_wandb_run()
    return optimized, summary


def finish_wandb_run() -> None:
    """Close the open wandb run, if any: otherwise the next job of a multirun (same process), even
    after this one crashed, would log into it. A no-op for runs that never imported wandb."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def training_progress(trainer: L.Trainer, checkpoint: Any, history: ValidationHistory) -> dict[str, int]:
    """Completed epochs and optimiser steps; read from last.ckpt (with the validation history)
    when fit ran in spawned processes, which leave this process's trainer and callbacks untouched."""
    epochs, steps = trainer.current_epoch, trainer.global_step
    last = Path(checkpoint.dirpath) / "last.ckpt" if checkpoint is not None and checkpoint.dirpath else None
    if epochs == 0 and last is not None and last.is_file():
        saved = verify_checkpoint(last)
        epochs, steps = saved["epoch"] + 1, saved["global_step"]
        if not history.epochs:
            history.load_state_dict(saved.get("callbacks", {}).get(history.state_key, {}))
    return {"epochs": epochs, "global_step": steps}


def write_failed_summary(cfg: DictConfig, error: BaseException) -> None:
    """In a multirun, leave a trace of the crashed job for `lesionseg.compare` and the user."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "model": cfg.model_name,
        "data": cfg.data.name,
        "experiment": cfg.experiment_name,
        "fold": cfg.data.get("fold"),
        "seed": cfg.seed,
        "run_dir": str(output_dir),
    }
    write_summary(output_dir / "summary.json", summary)
