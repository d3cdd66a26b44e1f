"""Per-subject 3D metrics under a named challenge convention: the numbers the project reports.

Slice-level figures are for monitoring; papers and challenges score each subject's 3D volume and
average over subjects. `subject_metrics` scores one subject; `SubjectAccumulator` rebuilds subject
volumes from the slices a test loop streams out, in any order; `lesionseg.score` reads mask files.
All three call the same functions, so the test stage, `evaluate` and `score` agree.

Overlap metrics (Dice, IoU, precision, recall) come from MONAI's confusion matrix, the surface
distances (HD95, average symmetric surface distance) from MONAI, in mm from the voxel spacing. The
lesion-wise metrics follow a challenge's own scoring code, chosen by `convention`:

- `atlas`: the ATLAS R2.0 challenge (github.com/npnl/atlas2_grand_challenge, `isles/scoring.py` as
  called by its `evaluation.py` through `settings.py`). Components are labelled with
  `scipy.ndimage.label`'s default structure (faces only: 6-connectivity in 3D) for the lesion count
  *and* for lesion F1; the volume difference is in voxels.
- `isles22`: the ISLES'22 challenge (github.com/ezequieldlrosa/isles22, `utils/eval_utils.py`):
  `cc3d.connected_components(connectivity=26)` for the count and lesion F1 (scipy's full 3x3x3
  structure gives the same components); the volume difference is in ml (voxel volume from the
  spacing, as its notebook computes it: prod(zooms) / 1000).
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_average_surface_distance, compute_confusion_matrix_metric, compute_hausdorff_distance, get_confusion_matrix
from scipy import ndimage
from torch import distributed as dist


@dataclass(frozen=True)
class Convention:
    """How a challenge counts lesions and measures volume."""

    name: str
    connectivity: int  # 6 (faces) or 26 (faces, edges and corners) in 3D
    volume_unit: str  # "voxels" or "ml"
    source: str


CONVENTIONS = {
    "atlas": Convention("atlas", 6, "voxels", "npnl/atlas2_grand_challenge isles/scoring.py"),
    "isles22": Convention("isles22", 26, "ml", "ezequieldlrosa/isles22 utils/eval_utils.py"),
}
DEFAULT_CONVENTION = "atlas"

# Our metric name -> MONAI confusion-matrix metric name.
OVERLAP_METRICS = {"dice": "f1 score", "iou": "threat score", "precision": "precision", "recall": "recall"}
# Value when the metric's denominator is zero. Dice = IoU = 1 when both masks are empty (both
# challenges' `empty_value=1.0`). Precision (no predicted voxel) and recall (no lesion voxel) are 0,
# as scikit-learn's precision_score / recall_score give them (zero_division): the ATLAS code's own
# `precision` / `sensitivity`, which its final settings no longer report.
EMPTY_VALUES = {"dice": 1.0, "iou": 1.0, "precision": 0.0, "recall": 0.0}
# Surface distances in mm. NaN policy: both masks empty -> 0.0 (they agree everywhere); exactly one
# empty -> NaN (no surface to measure to). Means and stds over subjects skip NaN.
SURFACE_METRICS = ("hd95", "asd")
LESION_METRICS = ("volume_difference", "lesion_count_difference", "lesion_f1")
METRIC_NAMES = (*OVERLAP_METRICS, *SURFACE_METRICS, *LESION_METRICS)


def convention_of(name: str) -> Convention:
    """The `Convention` called `name`; ValueError listing the known ones otherwise."""
    if name not in CONVENTIONS:
        raise ValueError(f"convention={name}: use one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def label_lesions(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a 3D mask: 6-connectivity (scipy.ndimage.label's default) or 26."""
    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26 in 3D, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def volume_difference(pred: np.ndarray, target: np.ndarray, convention: Convention, voxel_ml: float = 0.001) -> float:
    """|predicted volume - label volume|: voxels under `atlas`, ml under `isles22`.

    Mirrors ATLAS `volume_difference` as `evaluation.py` calls it (batchwise: per-sample voxel sums;
    its non-batchwise branch sums the prediction twice and is never used) and ISLES'22
    `compute_absolute_volume_difference` (voxel counts times the voxel volume in ml).
    """
    if convention.volume_unit == "voxels":
        return float(abs(int(pred.sum()) - int(target.sum())))
    return float(abs(int(target.sum()) * voxel_ml - int(pred.sum()) * voxel_ml))


def lesion_count_difference(num_pred: int, num_target: int) -> float:
    """|predicted lesions - label lesions|; mirrors ATLAS `simple_lesion_count_difference` and
    ISLES'22 `compute_absolute_lesion_difference` (they differ only in connectivity)."""
    return float(abs(num_pred - num_target))


def lesion_f1(pred_lesions: np.ndarray, num_pred: int, target_lesions: np.ndarray, num_target: int) -> float:
    """Lesion-wise F1 from labelled components; mirrors ATLAS `_lesion_f1_score` and ISLES'22 `compute_lesion_f1_score`.

    A label lesion sharing at least one voxel with the prediction is a true positive, otherwise a
    false negative; a predicted lesion sharing no voxel with the label is a false positive;
    F1 = tp / (tp + (fp + fn) / 2), and 1 (both codes' `empty_value`) when both masks are empty.
    """
    if num_pred == 0 and num_target == 0:
        return 1.0
    true_positives = int(np.count_nonzero(np.unique(target_lesions[pred_lesions > 0])))
    false_negatives = num_target - true_positives
    false_positives = num_pred - int(np.count_nonzero(np.unique(pred_lesions[target_lesions > 0])))
    return true_positives / (true_positives + (false_positives + false_negatives) / 2)


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """MONAI's 95th-percentile Hausdorff distance and average symmetric surface distance, in mm.

    HD95 is MONAI's: the 95th percentile of each direction's boundary-to-boundary distances, the
    larger of the two. ASD pools both directions' distances and takes their mean. Empty masks follow
    the NaN policy of `SURFACE_METRICS`.
    """
    if not pred.any() and not target.any():
        return {"hd95": 0.0, "asd": 0.0}
    if not pred.any() or not target.any():
        return {"hd95": float("nan"), "asd": float("nan")}
    y_pred = torch.from_numpy(pred)[None, None].float()
    y = torch.from_numpy(target)[None, None].float()
    spacing = [float(value) for value in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated internal argument
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
    return {"hd95": float(hd95.item()), "asd": float(asd.item())}


def subject_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    convention: str = DEFAULT_CONVENTION,
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Score one subject's binary 3D prediction against its binary 3D label.

    `spacing` is the voxel size in mm along the array's three axes (1 mm isotropic when None): it
    sets the surface distances and, under `isles22`, the volume unit. Returns `METRIC_NAMES`:
    overlap metrics (empty cases as in `EMPTY_VALUES`), `hd95` and `asd` in mm (NaN policy in
    `SURFACE_METRICS`) and the lesion-wise metrics of the convention (see the module docstring).
    """
    rules = convention_of(convention)
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"subject_metrics needs two 3D volumes of one shape, got {pred.shape} and {target.shape}")
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(value) for value in spacing)
    if len(spacing) != 3:
        raise ValueError(f"spacing needs one voxel size per axis of a 3D volume, got {spacing}")

    # MONAI wants (batch, channel, *spatial) float tensors (boolean ones give wrong counts).
    confusion = get_confusion_matrix(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(target)[None, None].float())
    metrics = {}
    for name, monai_name in OVERLAP_METRICS.items():
        value = compute_confusion_matrix_metric(monai_name, confusion).item()
        metrics[name] = EMPTY_VALUES[name] if np.isnan(value) else value
    metrics.update(surface_distances(pred, target, spacing))

    pred_lesions, num_pred = label_lesions(pred, rules.connectivity)
    target_lesions, num_target = label_lesions(target, rules.connectivity)
    metrics["volume_difference"] = volume_difference(pred, target, rules, float(np.prod(spacing)) / 1000.0)
    metrics["lesion_count_difference"] = lesion_count_difference(num_pred, num_target)
    metrics["lesion_f1"] = lesion_f1(pred_lesions, num_pred, target_lesions, num_target)
    return metrics


def summarize_subjects(per_subject: pd.DataFrame) -> dict[str, float]:
    """Mean of each metric over subjects and `<metric>_std` (sample std, NaN for one subject); NaNs skipped."""
    if per_subject.empty:
        raise ValueError("summarize_subjects needs at least one subject row, got none")
    metrics = per_subject[list(METRIC_NAMES)].astype(float)
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
        target_volume = np.stack([target for _, _, target in ordered if target is not None]) if all(labelled) else None
        return pred_volume, target_volume

    def compute(self, convention: str = DEFAULT_CONVENTION, spacing: Mapping[str, Sequence[float]] | None = None) -> pd.DataFrame:
        """One row per subject (sorted by id): `subject` and the `subject_metrics` columns.

        `spacing` maps a subject to its voxel size along the (Z, H, W) axes of its rebuilt volume
        (slice thickness, row spacing, column spacing) in mm; subjects without an entry get 1 mm.
        """
        rows = []
        for subject, (pred, target) in self.volumes().items():
            if target is None:
                raise ValueError(f"subject {subject!r} has no target: cannot compute metrics")
            rows.append({"subject": subject, **subject_metrics(pred, target, convention, (spacing or {}).get(subject))})
        return pd.DataFrame(rows, columns=["subject", *METRIC_NAMES])
