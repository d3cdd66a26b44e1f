"""Callbacks: optional early stopping, a training-throughput meter, the validation history, the
validation overlays and the per-subject test table.

The config tree (`conf/callbacks/default.yaml`) builds early stopping, the overlays and the test
table; `train` adds the throughput meter and the history to every run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from lesionseg.outputs import atomic_write_text
from lesionseg.overlays import OverlaySample, figure_to_rgb, overlay_figure, to_grey_rgb


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


class ValidationOverlays(Callback):
    """Each validation epoch, a figure of `num_overlays` slices (see `lesionseg.overlays`), sent everywhere.

    The slices are the same every epoch, so epochs compare: the first `num_overlays` validation
    subjects that show a lesion (or a predicted one), each at its slice with the largest labelled
    lesion (ties: the largest prediction). The figure goes to `<dirpath>/epoch_NNN.png` and to
    every logger that takes images: TensorBoard (`add_image`) and wandb (`log_image`, plus the
    slices with toggleable ground-truth / prediction mask layers). Reads the prediction that the
    module's `validation_step` returns; on rank zero only.
    """

    def __init__(self, num_overlays: int = 4, dirpath: str | Path | None = None, dpi: int = 100) -> None:
        self.num_overlays = num_overlays
        self.dirpath = Path(dirpath) if dirpath else None
        self.dpi = dpi
        self._best: dict[str, tuple[tuple[int, int], OverlaySample]] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._best = {}

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.num_overlays <= 0 or trainer.sanity_checking or not isinstance(outputs, Mapping) or "prediction" not in outputs:
            return
        target = (batch["mask"] > 0).flatten(1).sum(dim=1).tolist()
        predicted = (outputs["prediction"] > 0).flatten(1).sum(dim=1).tolist()
        for index, subject in enumerate(batch["subject"]):
            rank = (int(target[index]), int(predicted[index]))
            if rank == (0, 0) or (subject not in self._best and len(self._best) >= self.num_overlays):
                continue
            if subject in self._best and self._best[subject][0] >= rank:
                continue
            sample = OverlaySample(
                image=batch["image"][index].detach().float().cpu().numpy(),
                target=batch["mask"][index].detach().cpu().numpy(),
                prediction=outputs["prediction"][index].detach().cpu().numpy(),
                subject=str(subject),
                slice_index=int(batch["slice_index"][index]),
            )
            self._best[subject] = (rank, sample)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._best or trainer.sanity_checking or not trainer.is_global_zero:
            return
        samples = [sample for _, sample in self._best.values()]
        epoch = trainer.current_epoch
        figure = overlay_figure(samples, title=f"validation, epoch {epoch}")
        picture = figure_to_rgb(figure, self.dpi)
        if self.dirpath is not None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(self.dirpath / f"epoch_{epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/overlays", picture, global_step=epoch, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key="val/overlays", images=[picture], caption=[f"epoch {epoch}"])
                self._log_wandb_masks(logger, samples, epoch)

    @staticmethod
    def _log_wandb_masks(logger: WandbLogger, samples: list[OverlaySample], epoch: int) -> None:
        """The slices with ground truth and prediction as wandb mask layers (toggled in the wandb UI)."""
        import wandb

        lesion = {1: "lesion"}
        images = [
            wandb.Image(
                (to_grey_rgb(sample.image) * 255).astype(np.uint8),
                masks={
                    "ground_truth": {"mask_data": (sample.target > 0).astype(np.uint8), "class_labels": lesion},
                    "prediction": {"mask_data": (sample.prediction > 0).astype(np.uint8), "class_labels": lesion},
                },
                caption=sample.caption,
            )
            for sample in samples
        ]
        logger.experiment.log({"val/overlay_masks": images, "epoch": epoch})


class TestSubjectTable(Callback):
    """The test stage's per-subject metrics as `<dirpath>/test_subjects.csv` and the wandb table `test/subjects`.

    The module scores each subject at the end of the test epoch (`test_subject_table`); this writes
    it out on rank zero. `dirpath` defaults to the trainer's `default_root_dir` (the run folder).
    """

    FILENAME = "test_subjects.csv"

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        table = getattr(pl_module, "test_subject_table", None)
        if table is None or not trainer.is_global_zero:
            return
        folder = self.dirpath or Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / self.FILENAME, table.to_csv(index=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("test/subjects", dataframe=table)
