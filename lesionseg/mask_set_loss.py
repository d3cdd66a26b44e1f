"""Set-prediction loss of query-based mask models (Mask2Former, Cheng et al. CVPR 2022; Mask DINO, Li et al.
CVPR 2023), for `lesionseg.models.maskdino.MaskDINO`'s training output.

The (B, H, W) class-index target becomes one ground-truth segment per class present in the slice
(semantic segmentation as Mask2Former does it; a binary task has the segments background and lesion, so a
slice without lesion still has its background segment). Each prediction set (final layer, every earlier
decoder layer, the selected encoder tokens) is matched one-to-one to the segments by the Hungarian
algorithm (`scipy.optimize.linear_sum_assignment`) on class + mask BCE + Dice costs computed on random
points; matched queries learn their segment's class and mask (BCE and Dice on importance-sampled points:
mostly where the prediction is uncertain), every other query the no-object class. Denoising queries
reconstruct their known segment without matching. An image without any segment trains its queries to
no-object alone; a batch without any matched mask gives a zero mask loss, never a crash.

At validation and test time the model returns plain logits: the loss then scores them with soft Dice +
cross-entropy (`lesionseg.losses.DiceCE`), so `val/loss` stays comparable between epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from lesionseg.losses import DiceCE
from lesionseg.models.maskdino import Prediction, Segments

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values (N, P) of maps (N, h, w) at normalised (x, y) points (N, P, 2) in [0, 1]."""
    sampled = F.grid_sample(maps[:, None].float(), 2 * points[:, :, None].float() - 1, mode="bilinear", align_corners=False)
    return sampled[:, 0, :, 0]


def uncertain_points(mask_logits: torch.Tensor, count: int, oversample_ratio: float, importance_ratio: float) -> torch.Tensor:
    """Mask2Former's importance sampling (N, count, 2): the most uncertain (|logit| smallest) of
    `oversample_ratio * count` random points make up `importance_ratio` of them, the rest are uniform."""
    number = len(mask_logits)
    candidates = torch.rand(number, int(count * oversample_ratio), 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates).abs()
    chosen = uncertainty.topk(int(importance_ratio * count), dim=1).indices
    important = torch.gather(candidates, 1, chosen[..., None].expand(-1, -1, 2))
    uniform = torch.rand(number, count - important.shape[1], 2, device=mask_logits.device)
    return torch.cat((important, uniform), dim=1)


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE (Q, n) between every predicted mask's point logits (Q, P) and every target's labels (n, P)."""
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (Q, n) between every predicted mask (Q, P) and every target (n, P), smooth 1."""
    probabilities = logits.sigmoid()
    numerator = 2 * probabilities @ targets.T
    denominator = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def semantic_segments(target: torch.Tensor, num_classes: int, frame: tuple[int, int]) -> Segments:
    """One segment per class present in each (H, W) target, masks zero-padded (bottom, right) to `frame`.

    Binary targets (num_classes 1) have segment classes 0 = background, 1 = lesion (any value > 0).
    """
    classes = 2 if num_classes == 1 else num_classes
    target = (target > 0).long() if num_classes == 1 else target.long()
    padding = (0, frame[1] - target.shape[-1], 0, frame[0] - target.shape[-2])
    labels, masks = [], []
    for image_target in target:
        present = torch.unique(image_target)
        present = present[(present >= 0) & (present < classes)]
        labels.append(present)
        masks.append(F.pad((image_target[None] == present[:, None, None]).float(), padding))
    return Segments(labels, masks)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to segments minimising class + mask BCE + Dice costs on points."""

    def __init__(self, class_weight: float, mask_weight: float, dice_weight: float, num_points: int) -> None:
        super().__init__()
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, prediction: Prediction, segments: Segments) -> Indices:
        """Per image, (query indices, segment indices) of the matched pairs (empty without segments)."""
        indices = []
        for class_logits, mask_logits, labels, masks in zip(prediction.class_logits, prediction.mask_logits, segments.labels, segments.masks):
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            points = torch.rand(1, self.num_points, 2, device=mask_logits.device)
            predicted = point_sample(mask_logits, points.expand(len(mask_logits), -1, -1))
            wanted = point_sample(masks, points.expand(len(masks), -1, -1))
            cost = (
                -self.class_weight * class_logits.float().softmax(-1)[:, labels]
                + self.mask_weight * pairwise_sigmoid_ce(predicted, wanted)
                + self.dice_weight * pairwise_dice(predicted, wanted)
            )
            rows, columns = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(columns, dtype=torch.long)))
        return indices


class MaskSetLoss(nn.Module):
    """Mask DINO's segmentation losses (its box losses dropped: no boxes): matching, class CE with a
    down-weighted no-object class, point-sampled mask BCE and Dice, on every prediction set and the
    denoising queries; normalised by the number of segments. Weights are Mask DINO's (class 4, mask 5,
    Dice 5, no-object 0.1) and Mask2Former's 112 x 112 points (conf/loss/mask_set.yaml samples fewer:
    our slices are far smaller than the paper's 1024-pixel crops).

    `consumes_model_output`: the module hands this loss the model's whole training output, not only `seg`.
    """

    consumes_model_output: ClassVar[bool] = True
    class_weights: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 4.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        denoising: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.segment_classes = 2 if num_classes == 1 else num_classes
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.denoising = denoising
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        class_weights = torch.ones(self.segment_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.logits_loss = DiceCE(num_classes)

    def forward(self, output: torch.Tensor | Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
        """The set loss of a training output; Dice + CE of plain (B, K, H, W) logits (eval mode)."""
        if isinstance(output, torch.Tensor):
            return self.logits_loss(output, target)
        *earlier, final = output["predictions"]
        height, width = final.mask_logits.shape[-2:]
        stride = output["mask_stride"]
        segments = semantic_segments(target, self.num_classes, (height * stride, width * stride))
        num_masks = segments_per_process(sum(len(labels) for labels in segments.labels), final.class_logits.device)
        total = final.class_logits.new_zeros((), dtype=torch.float32)
        for prediction in (final, *earlier, output["interm"]):
            total = total + self.prediction_loss(prediction, segments, self.matcher(prediction, segments), num_masks)
        denoised = output["denoise"](segments) if self.denoising else None
        if denoised is not None:
            indices = denoising_indices(segments, denoised.groups, denoised.size)
            for prediction in denoised.predictions:
                total = total + self.prediction_loss(prediction, segments, indices, num_masks * denoised.groups)
        return total

    def prediction_loss(self, prediction: Prediction, segments: Segments, indices: Indices, num_masks: float) -> torch.Tensor:
        """Weighted class CE over all queries plus mask BCE and Dice over the matched ones."""
        class_logits, mask_logits = prediction.class_logits.float(), prediction.mask_logits
        device = class_logits.device
        batch_index = torch.cat([torch.full_like(queries, image) for image, (queries, _) in enumerate(indices)]).to(device)
        query_index = torch.cat([queries for queries, _ in indices]).to(device)
        classes = torch.full(class_logits.shape[:2], self.segment_classes, dtype=torch.long, device=device)
        classes[batch_index, query_index] = torch.cat([labels[matched.to(labels.device)] for labels, (_, matched) in zip(segments.labels, indices)]).to(device)
        class_loss = F.cross_entropy(class_logits.transpose(1, 2), classes, weight=self.class_weights)
        if len(query_index) == 0:
            return self.class_weight * class_loss + mask_logits.sum() * 0.0
        predicted = mask_logits[batch_index, query_index]
        wanted = torch.cat([masks[matched.to(masks.device)] for masks, (_, matched) in zip(segments.masks, indices)]).to(device)
        with torch.no_grad():
            points = uncertain_points(predicted, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
        point_logits = point_sample(predicted, points)
        point_labels = point_sample(wanted, points)
        mask_loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1).sum() / num_masks
        probabilities = point_logits.sigmoid()
        dice = 1 - (2 * (probabilities * point_labels).sum(-1) + 1) / (probabilities.sum(-1) + point_labels.sum(-1) + 1)
        return self.class_weight * class_loss + self.mask_weight * mask_loss + self.dice_weight * dice.sum() / num_masks


def segments_per_process(count: int, device: torch.device) -> float:
    """The loss normaliser: segments per process averaged over all processes (Mask2Former), at least 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        total = torch.tensor(float(count), device=device)
        torch.distributed.all_reduce(total)
        return max(total.item() / torch.distributed.get_world_size(), 1.0)
    return max(float(count), 1.0)


def denoising_indices(segments: Segments, groups: int, size: int) -> Indices:
    """Denoising query g * size + j reconstructs segment j of its image, in every group g."""
    indices = []
    for labels in segments.labels:
        targets = torch.arange(len(labels)).repeat(groups)
        queries = (torch.arange(groups)[:, None] * size + torch.arange(len(labels))[None, :]).flatten()
        indices.append((queries, targets))
    return indices
