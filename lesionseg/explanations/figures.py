"""Overlay figures a person reads: one row per explained slice, one column per method.

The first column is the image with the predicted lesion contour (red) and, when labels are known,
the ground-truth contour (green, dashed); each method's column shows its heat map over the image
with both contours and a colour bar (0..1). Rows are the slices with the largest predicted lesion
area; a scan explained on the probability fallback says so in its title.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PREDICTION_COLOUR, TRUTH_COLOUR = "#ff3030", "#30ff60"


def _contours(axis, prediction: np.ndarray, truth: np.ndarray | None) -> None:
    if prediction.any():
        axis.contour(prediction > 0, levels=[0.5], colors=PREDICTION_COLOUR, linewidths=1.2)
    if truth is not None and truth.any():
        axis.contour(truth > 0, levels=[0.5], colors=TRUTH_COLOUR, linewidths=1.2, linestyles="dashed")


def overlay_figure(
    title: str,
    images: np.ndarray,
    predictions: np.ndarray,
    truths: np.ndarray | None,
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str],
    path: Path,
) -> Path:
    """Save the figure of (N, H, W) `images`, masks and per-method `maps` to `path` (PNG)."""
    methods = list(maps)
    rows, columns = len(images), 1 + len(methods)
    height, width = images.shape[-2:]
    panel = 2.6
    figure = Figure(figsize=(columns * panel * max(width / height, 0.6) + 0.6, rows * panel + 0.9), dpi=110)
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        image = images[row]
        low, high = np.percentile(image, (1, 99.5))
        truth = None if truths is None else truths[row]
        axis = axes[row, 0]
        axis.imshow(image, cmap="gray", vmin=low, vmax=high)
        _contours(axis, predictions[row], truth)
        axis.set_ylabel(row_labels[row], fontsize=8)
        if row == 0:
            axis.set_title("image", fontsize=9)
        for column, method in enumerate(methods, start=1):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=low, vmax=high)
            heat = axis.imshow(maps[method][row], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            _contours(axis, predictions[row], truth)
            figure.colorbar(heat, ax=axis, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            if row == 0:
                axis.set_title(method, fontsize=9)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [Line2D([], [], color=PREDICTION_COLOUR, label="predicted lesion")]
    if truths is not None:
        handles.append(Line2D([], [], color=TRUTH_COLOUR, linestyle="dashed", label="ground truth"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.04, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
