"""Callbacks the config tree builds: optional early stopping and a training-throughput meter."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping


def optional_early_stopping(monitor: str, mode: str, patience: int | None, min_delta: float = 0.0) -> EarlyStopping | None:
    """Early stopping when `patience` is set, else None (off by default; experiments turn it on)."""
    if patience is None:
        return None
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta)


class ThroughputMonitor(Callback):
    """Training images per second over the optimisation steps (data loading excluded).

    The first `warmup_steps` batches are skipped: they pay for allocator warm-up and, with
    `compile=true`, for compilation, which would hide the steady-state speed.
    """

    def __init__(self, warmup_steps: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self.images = 0
        self.seconds = 0.0
        self._seen = 0
        self._start = 0.0

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._seen += 1
        if self._seen > self.warmup_steps:
            self.seconds += time.perf_counter() - self._start
            self.images += len(batch["image"]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images_per_second is not None:
            pl_module.log("train/images_per_s", self.images_per_second)
