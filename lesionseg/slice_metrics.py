"""Pixel-level slice metrics logged while training: Dice (F1), IoU, precision, recall, specificity, accuracy.

All six are ratios of one confusion count per class (true/false positives/negatives), which
torchmetrics' stat scores compute in a single pass over the masks. `SliceMetrics` keeps those
counts as its (summed, DDP-synced) state and derives the six scores with torchmetrics' conventions:
a score whose denominator is zero is 0; with K > 1 classes each score is the macro average over
the classes present in the prediction or the target, and accuracy per class is tp / (tp + fn).
Six separate torchmetrics objects give the same numbers (tests/test_recipes_released.py checks
it) but each re-counts the masks and re-validates its inputs (`torch.unique`) on every step: in
the training step that cost more than the rest of the framework together (`python -m lesionseg.bench
overhead`). The inputs here are the module's own class-index masks, so validation is skipped.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_stat_scores, multiclass_stat_scores

SCORES = ("dice", "iou", "precision", "recall", "specificity", "accuracy")


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (torchmetrics' zero_division=0)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))


def scores_from_counts(tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """The six scores of per-class counts (shape (K,); K = 1 is the binary lesion mask)."""
    tp, fp, tn, fn = (count.double() for count in (tp, fp, tn, fn))
    per_class = {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + tn + fn) if len(tp) == 1 else ratio(tp, tp + fn),
    }
    if len(tp) == 1:
        return {name: value[0].float() for name, value in per_class.items()}
    present = (tp + fp + fn > 0).double()  # macro average over the classes seen in prediction or target
    return {name: ratio((value * present).sum(), present.sum()).float() for name, value in per_class.items()}


class SliceMetrics(Metric):
    """The six pixel-level scores of class-index masks (B, H, W), from one confusion count per update.

    `forward` returns the batch's scores and accumulates; `compute` returns the scores of
    everything accumulated since the last `reset`, as a dict keyed by `SCORES`.
    """

    full_state_update = False
    tp: torch.Tensor
    fp: torch.Tensor
    tn: torch.Tensor
    fn: torch.Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if self.num_classes == 1:
            counts = binary_stat_scores(prediction, target, validate_args=False)[None]
        else:
            counts = multiclass_stat_scores(prediction, target, self.num_classes, average=None, validate_args=False)
        self.tp += counts[:, 0]
        self.fp += counts[:, 1]
        self.tn += counts[:, 2]
        self.fn += counts[:, 3]

    def compute(self) -> dict[str, torch.Tensor]:
        return scores_from_counts(self.tp, self.fp, self.tn, self.fn)
