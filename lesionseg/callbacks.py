"""Callbacks: optional early stopping, a training-throughput meter, and the validation history.

The config tree builds early stopping; `train` adds the other two to every run.
"""

from __future__ import annotations

import math
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


class ValidationHistory(Callback):
    """Every validation epoch's `val/*` metrics, so summary.json can report the best epoch in full.

    The history is part of the callback's state, so it travels in every checkpoint: a resumed run
    keeps the epochs before the interruption, and a run whose fit ran in spawned processes
    (`ddp_spawn`) reads it back from `last.ckpt`. Lightning runs checkpoint callbacks last, so a
    checkpoint written at the end of a validation already holds that epoch.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        self.epochs.append({"epoch": trainer.current_epoch, **metrics})

    def best(self, metric: str, mode: str) -> dict[str, float]:
        """The recorded epoch with the best `metric` (first of ties), or {} when none has it."""
        scored = [epoch for epoch in self.epochs if math.isfinite(epoch.get(metric, math.nan))]
        if not scored:
            return {}
        choose = max if mode == "max" else min
        return choose(scored, key=lambda epoch: epoch[metric])

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
