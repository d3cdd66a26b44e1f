"""Per-subject 3D metrics: the numbers the project reports.

Slice-level figures are for monitoring; papers (and the ATLAS R2.0 challenge) score each subject's
3D volume and average over subjects. `subject_metrics` scores one subject; `SubjectAccumulator`
rebuilds subject volumes from the slices a test/predict loop streams out, in any order.

Overlap metrics (Dice, IoU, precision, recall) come from MONAI's confusion matrix. The lesion-wise
metrics follow the ATLAS R2.0 challenge scoring code (github.com/npnl/atlas2_grand_challenge,
`isles/scoring.py`) with `scipy.ndimage.label`'s default connectivity (faces only, 6-connectivity
in 3D) for every lesion count; the challenge uses it for the count difference but 26-connectivity
(cc3d) for lesion F1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix
from scipy import ndimage
from torch import distributed as dist

# Our metric name -> MONAI confusion-matrix metric name.
OVERLAP_METRICS = {"dice": "f1 score", "iou": "threat score", "precision": "precision", "recall": "recall"}
# Value when the metric's denominator is zero. Dice = IoU = 1 when both masks are empty. Precision
# (no predicted voxel) and recall (no lesion voxel) are 0, as in the ATLAS challenge code, which
# uses scikit-learn's precision_score / recall_score (zero_division counts as 0).
EMPTY_VALUES = {"dice": 1.0, "iou": 1.0, "precision": 0.0, "recall": 0.0}
METRIC_NAMES = (*OVERLAP_METRICS, "volume_difference", "lesion_count_difference", "lesion_f1")


def subject_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Score one subject's binary 3D prediction against its binary 3D label.

    Returns `dice`, `iou`, `precision`, `recall` (empty cases as in `EMPTY_VALUES`) and the ATLAS
    R2.0 metrics: `volume_difference` (absolute difference of voxel counts),
    `lesion_count_difference` (absolute difference of connected-lesion counts) and `lesion_f1`.
    Lesion F1 as in the ATLAS code: a label lesion touching the prediction in at least one voxel is
    a true positive, otherwise a false negative; a predicted lesion touching no label voxel is a
    false positive; F1 = tp / (tp + (fp + fn) / 2), and 1 when both masks are empty.
    """
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"subject_metrics needs two 3D volumes of one shape, got {pred.shape} and {target.shape}")

    # MONAI wants (batch, channel, *spatial) float tensors (boolean ones give wrong counts).
    confusion = get_confusion_matrix(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(target)[None, None].float())
    metrics = {}
    for name, monai_name in OVERLAP_METRICS.items():
        value = compute_confusion_matrix_metric(monai_name, confusion).item()
        metrics[name] = EMPTY_VALUES[name] if np.isnan(value) else value

    pred_lesions, num_pred_lesions = ndimage.label(pred)
    target_lesions, num_target_lesions = ndimage.label(target)
    metrics["volume_difference"] = float(abs(int(pred.sum()) - int(target.sum())))
    metrics["lesion_count_difference"] = float(abs(num_pred_lesions - num_target_lesions))
    metrics["lesion_f1"] = _lesion_f1(pred_lesions, num_pred_lesions, target_lesions, num_target_lesions)
    return metrics


def _lesion_f1(pred_lesions: np.ndarray, num_pred: int, target_lesions: np.ndarray, num_target: int) -> float:
    """Lesion-wise F1 from labelled components (see `subject_metrics`)."""
    if num_pred == 0 and num_target == 0:
        return 1.0
    detected = np.unique(target_lesions[pred_lesions > 0])
    true_positives = int(np.count_nonzero(detected))
    false_negatives = num_target - true_positives
    touching = np.unique(pred_lesions[target_lesions > 0])
    false_positives = num_pred - int(np.count_nonzero(touching))
    return true_positives / (true_positives + (false_positives + false_negatives) / 2)


def summarize_subjects(per_subject: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over subjects, and `<metric>_std` (sample std, NaN for one subject)."""
    if per_subject.empty:
        raise ValueError("summarize_subjects needs at least one subject row, got none")
    metrics = per_subject[list(METRIC_NAMES)]
    means = metrics.mean()
    stds = metrics.std(ddof=1)
    return {
        **{name: float(means[name]) for name in METRIC_NAMES},
        **{f"{name}_std": float(stds[name]) for name in METRIC_NAMES},
    }


class SubjectAccumulator:
    """Collects slice predictions per subject and scores the rebuilt 3D volumes.

    Slices may arrive in any order and across batches; they are kept as boolean numpy arrays.
    In a multi-rank run each rank fills its own accumulator and `gathered()` joins them.
    """

    summary = staticmethod(summarize_subjects)

    def __init__(self) -> None:
        self._slices: dict[str, list[tuple[int, np.ndarray, np.ndarray | None]]] = defaultdict(list)

    def add(
        self,
        subjects: Sequence[str],
        slice_index: torch.Tensor,
        pred: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> None:
        """Store a batch: `pred` (B, H, W) bool or 0/1, `target` (B, H, W) or None; nonzero = lesion."""
        if pred.ndim != 3 or (target is not None and target.shape != pred.shape):
            target_shape = None if target is None else tuple(target.shape)
            raise ValueError(f"add() needs pred and target of shape (B, H, W), got {tuple(pred.shape)} and {target_shape}")
        if not len(subjects) == len(slice_index) == len(pred):
            raise ValueError(
                f"add() needs one subject and slice index per prediction, got {len(subjects)} subjects, "
                f"{len(slice_index)} slice indices, {len(pred)} predictions"
            )
        pred_slices = pred.detach().cpu().numpy().astype(bool)
        target_slices = None if target is None else target.detach().cpu().numpy().astype(bool)
        for item, (subject, index) in enumerate(zip(subjects, slice_index.tolist(), strict=True)):
            target_slice = None if target_slices is None else target_slices[item]
            self._slices[subject].append((int(index), pred_slices[item], target_slice))

    @classmethod
    def merged(cls, accumulators: Iterable[SubjectAccumulator]) -> SubjectAccumulator:
        """One accumulator with the slices of all `accumulators`.

        A slice index that an earlier accumulator already holds for the subject is skipped: a
        distributed test sampler pads ranks with repeated slices. Repeats within one accumulator
        are kept, so `volumes()` still reports them.
        """
        merged = cls()
        for accumulator in accumulators:
            for subject, slices in accumulator._slices.items():
                held = {index for index, _, _ in merged._slices[subject]}
                merged._slices[subject].extend(item for item in slices if item[0] not in held)
        return merged

    def gathered(self) -> SubjectAccumulator:
        """Every rank's slices, on every rank; itself when the run is not distributed."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        accumulators: list[SubjectAccumulator | None] = [None] * dist.get_world_size()
        dist.all_gather_object(accumulators, self)
        return self.merged(accumulator for accumulator in accumulators if accumulator is not None)

    def volumes(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Each subject's (pred, target) volumes (Z, H, W) stacked by slice index; target None if unlabelled."""
        return {subject: self._stack(subject, slices) for subject, slices in sorted(self._slices.items())}

    @staticmethod
    def _stack(subject: str, slices: list[tuple[int, np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        """Order one subject's slices by index, checking that indices 0..Z-1 each appear once."""
        ordered = sorted(slices, key=lambda item: item[0])
        counts = Counter(index for index, _, _ in ordered)
        duplicated = [index for index, count in counts.items() if count > 1]
        if duplicated:
            raise ValueError(f"subject {subject!r}: slice index {duplicated} added more than once")
        missing = sorted(set(range(max(counts) + 1)) - set(counts))
        if missing:
            raise ValueError(f"subject {subject!r}: slice index {missing} missing ({len(counts)} slices added)")
        shapes = sorted({pred.shape for _, pred, _ in ordered})
        if len(shapes) > 1:
            raise ValueError(f"subject {subject!r}: slices of different shapes {shapes}")
        labelled = [target is not None for _, _, target in ordered]
        if any(labelled) and not all(labelled):
            raise ValueError(f"subject {subject!r}: some slices have a target and some do not")
        pred_volume = np.stack([pred for _, pred, _ in ordered])
        target_volume = np.stack([target for _, _, target in ordered]) if all(labelled) else None
        return pred_volume, target_volume

    def compute(self) -> pd.DataFrame:
        """One row per subject (sorted by id): `subject` and the `subject_metrics` columns."""
        rows = []
        for subject, (pred, target) in self.volumes().items():
            if target is None:
                raise ValueError(f"subject {subject!r} has no target: cannot compute metrics")
            rows.append({"subject": subject, **subject_metrics(pred, target)})
        return pd.DataFrame(rows, columns=["subject", *METRIC_NAMES])
