"""Segmentation losses for (B, K, H, W) logits against (B, H, W) class-index targets.

Each loss is a MONAI or torch loss adapted to the project's contract: K = 1 means a binary lesion
mask scored through a sigmoid, K > 1 a softmax over classes. The adaptation (target shape and
one-hot encoding, activation choice, background handling) lives in `SegmentationLoss` so every loss
config only states what the paper states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn


def activation_options(num_classes: int) -> dict[str, Any]:
    """MONAI loss flags for the contract: sigmoid on one lesion channel, else softmax + one-hot targets.

    Background is scored only in the binary case, where it is the single channel's complement.
    """
    binary = num_classes == 1
    return {"include_background": binary, "to_onehot_y": not binary, "sigmoid": binary, "softmax": not binary}


class SegmentationLoss(nn.Module):
    """Base adapter: reshapes targets for the wrapped criterion and calls it on raw logits."""

    def __init__(self, num_classes: int, criterion: nn.Module) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.criterion = criterion

    @property
    def binary(self) -> bool:
        return self.num_classes == 1

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.unsqueeze(1)
        return self.criterion(logits.float(), target.float() if self.binary else target.long())


class DiceCE(SegmentationLoss):
    """Soft Dice + cross-entropy (BCE when binary), MONAI's DiceCELoss.

    `batch=True` pools the Dice over the whole batch, as X-Net's Keras `dice_coef` does on the
    flattened batch: per-slice Dice on the many lesion-free slices of a brain volume is unstable.
    """

    def __init__(
        self,
        num_classes: int,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        batch: bool = True,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__(
            num_classes,
            DiceCELoss(
                **activation_options(num_classes),
                batch=batch,
                smooth_nr=smooth,
                smooth_dr=smooth,
                lambda_dice=lambda_dice,
                lambda_ce=lambda_ce,
            ),
        )


class Dice(SegmentationLoss):
    """Soft Dice alone (Buda et al.'s brain-segmentation U-Net trains on it)."""

    def __init__(self, num_classes: int, batch: bool = True, smooth: float = 1.0) -> None:
        super().__init__(
            num_classes,
            DiceLoss(
                **activation_options(num_classes),
                batch=batch,
                smooth_nr=smooth,
                smooth_dr=smooth,
            ),
        )


class WeightedCE(SegmentationLoss):
    """Class-weighted cross-entropy: BCE with `pos_weight` when binary, weighted CE otherwise.

    `weights` is one value (the lesion weight) for a binary task, or one value per class.
    """

    def __init__(self, num_classes: int, weights: Sequence[float] | float = 1.0) -> None:
        values = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if num_classes == 1:
            if values.numel() != 1:
                raise ValueError(f"binary WeightedCE takes one lesion weight, got {list(values.tolist())}")
            criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=values)
        else:
            if values.numel() != num_classes:
                raise ValueError(f"WeightedCE needs {num_classes} class weights, got {values.numel()}")
            criterion = nn.CrossEntropyLoss(weight=values)
        super().__init__(num_classes, criterion)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return self.criterion(logits.float(), target.unsqueeze(1).float())
        return self.criterion(logits.float(), target.long())


class Focal(SegmentationLoss):
    """Focal loss (Lin et al. 2017) for the heavy lesion/background imbalance, MONAI's FocalLoss."""

    def __init__(self, num_classes: int, gamma: float = 2.0, alpha: float | None = 0.25) -> None:
        binary = num_classes == 1
        super().__init__(
            num_classes,
            FocalLoss(
                include_background=binary,
                to_onehot_y=not binary,
                gamma=gamma,
                alpha=alpha,
                use_softmax=not binary,
            ),
        )
