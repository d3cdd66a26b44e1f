"""The one LightningModule that trains, validates and tests every architecture.

`SegmentationModule` wraps any `nn.Module` that follows the model contract (logits `(B, K, H, W)`,
or a dict with `seg` and `cls` logits for models with a lesion classifier). K = 1 is a binary
lesion mask (sigmoid, threshold), K > 1 a softmax over classes (argmax). Slice-level pixel metrics
(`lesionseg.slice_metrics`, from torchmetrics' stat scores) are logged for monitoring; the test stage also reassembles every subject's slices into its volume
and reports per-subject 3D metrics averaged over subjects, which are the numbers to quote.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import lightning as L
import pandas as pd
import torch
from torch import nn

from lesionseg.data.grid import predict_in_grid
from lesionseg.evaluation import SubjectAccumulator, summarize_subjects
from lesionseg.inference.cleanup import clean_mask
from lesionseg.inference.settings import InferenceSettings
from lesionseg.inference.tta import flip_tta
from lesionseg.optim import build_optimizer
from lesionseg.slice_metrics import SliceMetrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def split_output(output: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Segmentation logits and optional classification logits from any model's output."""
    if isinstance(output, Mapping):
        return output["seg"], output.get("cls")
    return output, None


class SegmentationModule(L.LightningModule):
    """Binary or multi-class 2D segmentation, with an optional lesion-classification head.

    The optimizer and scheduler arrive as partial callables (Hydra `_partial_: true`) and are
    completed here with the parameters. `run_config` (the resolved Hydra config) is stored in
    every checkpoint so `lesionseg.evaluate` can rebuild the exact model and data pipeline.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 1,
        cls_loss_weight: float = 1.0,
        cls_pos_weight: float | None = None,
        channels_last: bool = False,
        inference: InferenceSettings | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.inference = inference or InferenceSettings()
        self.cls_loss_weight = cls_loss_weight
        pos_weight = None if cls_pos_weight is None else torch.tensor([cls_pos_weight])
        self.cls_loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        self.channels_last = channels_last
        self.run_config = run_config
        # Macro average over classes when K > 1; the per-subject 3D metrics of the test stage score the foreground.
        self.metrics = nn.ModuleDict({f"{stage}_": SliceMetrics(num_classes) for stage in ("train", "val", "test")})
        self.test_subjects = SubjectAccumulator()
        self.test_subject_table: pd.DataFrame | None = None
        self.test_subject_summary: dict[str, float] = {}

    # ---------------------------------------------------------------- forward and prediction
    def forward(self, image: torch.Tensor) -> torch.Tensor | Mapping[str, torch.Tensor]:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def probabilities(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities: sigmoid for a binary mask, softmax otherwise."""
        return torch.sigmoid(seg_logits) if self.num_classes == 1 else torch.softmax(seg_logits, dim=1)

    def predict_mask(self, seg_logits: torch.Tensor, refine: bool = False, cls_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Class-index mask (B, H, W): sigmoid > `inference.threshold` when binary, argmax otherwise.

        `refine` (test and predict only): with `inference.cls_gate` set and a classifier output
        given, empty every slice whose lesion probability is below the gate (the few-label stroke
        study's classifier gating). Component clean-up needs the whole subject: `clean_mask` runs on
        each reassembled volume (`on_test_epoch_end`, `lesionseg.inference.Predictor`).
        """
        if self.num_classes > 1:
            mask = seg_logits.argmax(dim=1)
        else:
            mask = (torch.sigmoid(seg_logits[:, 0].float()) > self.inference.threshold).long()
        gate = self.inference.cls_gate
        if refine and gate is not None and cls_logits is not None:
            lesion_probability = torch.sigmoid(cls_logits.float()).reshape(len(mask), -1).amax(dim=1)
            mask = mask * (lesion_probability >= gate).to(mask.dtype)[:, None, None]
        return mask

    def whole_slice_output(self, image: torch.Tensor) -> torch.Tensor | Mapping[str, torch.Tensor]:
        """Model output for whole slices; a model trained on a KxK grid predicts tile by tile."""
        grid = self.inference.grid
        return predict_in_grid(self, image, grid) if grid > 1 else self(image)

    def inference_logits(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Segmentation logits with the configured flip TTA, and the classifier logits if any."""
        seg_logits, cls_logits = split_output(self.whole_slice_output(image))
        if self.inference.tta_flips:
            seg_logits = flip_tta(lambda x: split_output(self.whole_slice_output(x))[0], image, self.inference.tta_flips, seg_logits)
        return seg_logits, cls_logits

    # ---------------------------------------------------------------- steps
    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = batch["image"], batch["mask"]
        inference = stage == "test"
        if inference:
            seg_logits, cls_logits = self.inference_logits(image)
            loss = self.loss(seg_logits, mask)
        else:
            output = self(image) if stage == "train" else self.whole_slice_output(image)
            seg_logits, cls_logits = split_output(output)
            deep = output.get("deep_supervision") if isinstance(output, Mapping) else None
            # A set-prediction loss (lesionseg.mask_set_loss) reads the model's whole training output, not only `seg`.
            loss_input = output if getattr(self.loss, "consumes_model_output", False) else seg_logits
            loss = self.deep_supervision_loss(seg_logits, deep, mask) if deep is not None else self.loss(loss_input, mask)
        if cls_logits is not None:
            has_lesion = (mask > 0).flatten(1).any(dim=1, keepdim=True).to(cls_logits.dtype)
            cls_loss = self.cls_loss(cls_logits.float(), has_lesion.float())
            self.log(f"{stage}/cls_loss", cls_loss, on_step=False, on_epoch=True, batch_size=len(image), sync_dist=True)
            loss = loss + self.cls_loss_weight * cls_loss
        prediction = self.predict_mask(seg_logits, refine=inference, cls_logits=cls_logits)
        on_step = stage == "train"
        # Training logs each batch's scores too (`train/dice_step`, from the metric's forward, which
        # also accumulates) beside the epoch's (`train/dice_epoch`, logged by `log_epoch_metrics`).
        if on_step:
            batch_scores = self.stage_metrics(stage)(prediction, mask)
            self.log_dict({f"train/{name}_step": value for name, value in batch_scores.items()}, on_step=True, on_epoch=False, batch_size=len(image))
        else:
            self.stage_metrics(stage).update(prediction, mask)
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(image), sync_dist=True)
        return loss, prediction, seg_logits

    def deep_supervision_loss(self, seg_logits: torch.Tensor, auxiliary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """nnU-Net's deep supervision: the main head's loss plus the (B, N, K, H, W) auxiliary heads'.

        Weights are 1, 1/2, 1/4, ... from the full-resolution main head down, normalised to sum to 1
        (MONAI DynUNet upsamples every auxiliary head to the full resolution).
        """
        outputs = torch.cat([seg_logits[:, None], auxiliary], dim=1)
        weights = torch.tensor([0.5**index for index in range(outputs.shape[1])])
        weights = weights / weights.sum()
        return sum(weight * self.loss(outputs[:, index], mask) for index, weight in enumerate(weights.tolist()))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._shared_step(batch, "train")
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        _, prediction, _ = self._shared_step(batch, "val")
        return {"prediction": prediction}  # for callbacks (lesionseg.callbacks.ValidationOverlays)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        _, prediction, _ = self._shared_step(batch, "test")
        self.test_subjects.add(batch["subject"], batch["slice_index"], prediction > 0, batch["mask"] > 0)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        seg_logits, cls_logits = self.inference_logits(batch["image"])
        output = {
            "subject": batch["subject"],
            "slice_index": batch["slice_index"],
            "probabilities": self.probabilities(seg_logits),
            "mask": self.predict_mask(seg_logits, refine=True, cls_logits=cls_logits),
        }
        if cls_logits is not None:
            output["cls_probability"] = torch.sigmoid(cls_logits)
        return output

    # ---------------------------------------------------------------- epoch ends
    def stage_metrics(self, stage: str) -> SliceMetrics:
        """The slice metrics of `stage` (train, val or test)."""
        return cast(SliceMetrics, self.metrics[f"{stage}_"])

    def log_epoch_metrics(self, stage: str) -> None:
        """The epoch's slice metrics (synced across ranks by torchmetrics), then a fresh count for the next epoch.

        Named `train/<metric>_epoch` beside the per-step `train/<metric>_step`, `val/<metric>` and `test/<metric>`.
        """
        metrics = self.stage_metrics(stage)
        if stage == "train" and self._trainer is not None:
            # Collective calls must come in the same order on every rank. Before this hook, the progress
            # bar (rank 0 only) has already synced the epoch's `sync_dist` values; reading them here makes
            # the other ranks sync them too (rank 0 reads its cached result), so the metric sync below
            # pairs up across ranks instead of deadlocking (trainer=ddp_sim).
            _ = self.trainer.progress_bar_metrics
        suffix = "_epoch" if stage == "train" else ""
        self.log_dict({f"{stage}/{name}{suffix}": value for name, value in metrics.compute().items()}, prog_bar=stage == "val")
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_subjects = SubjectAccumulator()

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")
        self.test_subjects = self.cleaned_subjects(self.test_subjects.gathered())
        table = self.test_subjects.compute()
        self.test_subject_table = table
        self.test_subject_summary = summarize_subjects(table)
        for name, value in self.test_subject_summary.items():
            self.log(f"test/subject_{name}", value, rank_zero_only=True)

    def cleaned_subjects(self, subjects: SubjectAccumulator) -> SubjectAccumulator:
        """The subjects' masks after `inference` clean-up, applied to each reassembled volume (binary masks)."""
        if not self.inference.cleans_up or self.num_classes > 1:
            return subjects
        cleaned = SubjectAccumulator()
        for subject, (pred, target) in subjects.volumes().items():
            volume = torch.from_numpy(clean_mask(pred, self.inference))
            cleaned.add([subject] * len(volume), torch.arange(len(volume)), volume, None if target is None else torch.from_numpy(target))
        return cleaned

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_factory, self)  # with the config's param_groups, if any
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["lesionseg_config"] = self.run_config
