"""Validation overlays a person can read: one figure per epoch, one row per slice.

A researcher looks at these before trusting a Dice number: they show whether the model finds the
lesion, over-segments, or predicts nothing. Each row is one slice (subject and slice index on the
left) in three columns: the image, the image with ground truth and prediction drawn as contours,
and the lesion region enlarged with the slice's Dice. Ground truth is a solid green line, the
prediction a dashed magenta one (distinct without colour too); a legend says which is which.
Drawn with matplotlib's object API (no pyplot state), so it is safe in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle


@dataclass(frozen=True)
class Outline:
    """How one mask is drawn."""

    colour: str
    linestyle: Literal["solid", "dashed"]
    label: str


GROUND_TRUTH = Outline("#00e060", "solid", "ground truth")
PREDICTION = Outline("#ff30d0", "dashed", "prediction")
REGION_COLOUR = "#ffd400"
COLUMNS = ("image", "ground truth vs prediction", "lesion region (enlarged)")
PANEL_INCHES = 2.6
HEADER_INCHES = 0.8
# The enlarged region: the lesion's (and prediction's) bounding box, a margin of half its size
# (at least MIN_MARGIN px) on each side, at least MIN_SIDE px square, inside the image.
MIN_MARGIN = 6
MIN_SIDE = 32


@dataclass
class OverlaySample:
    """One slice: image (C, H, W) float, target and prediction (H, W) class indices (nonzero = lesion)."""

    image: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    subject: str
    slice_index: int

    @property
    def caption(self) -> str:
        return f"{self.subject} slice {self.slice_index}"


def to_grey_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in 0..1: the first channel (or the RGB triple) scaled by its 1st/99th percentiles."""
    picture = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else np.repeat(image[0][..., None], 3, axis=2)
    low, high = np.percentile(picture, (1, 99))
    return np.clip((picture - low) / max(high - low, 1e-6), 0.0, 1.0)


def slice_dice(target: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of one slice's lesion masks, 1 when both are empty."""
    truth, predicted = target > 0, prediction > 0
    total = int(truth.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * int((truth & predicted).sum()) / total


def lesion_region(target: np.ndarray, prediction: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the region to enlarge: around the labelled lesion, else the
    prediction (false positives elsewhere show in the whole-slice column); the whole slice when neither."""
    height, width = target.shape
    rows, cols = np.nonzero(target > 0) if (target > 0).any() else np.nonzero(prediction > 0)
    if len(rows) == 0:
        return 0, height, 0, width
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(bottom - top, right - left)
    side = min(max(side + 2 * max(MIN_MARGIN, side // 2), MIN_SIDE), max(height, width))
    centre_row, centre_col = (top + bottom) // 2, (left + right) // 2
    top = int(np.clip(centre_row - side // 2, 0, max(height - side, 0)))
    left = int(np.clip(centre_col - side // 2, 0, max(width - side, 0)))
    return top, min(top + side, height), left, min(left + side, width)


def _contours(axes: Any, target: np.ndarray, prediction: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
    """Ground truth and prediction outlines (pixel-centre coordinates shifted by `offset` = (row, col))."""
    for mask, outline in ((target > 0, GROUND_TRUTH), (prediction > 0, PREDICTION)):
        if mask.any():
            # Padding keeps outlines closed where a lesion touches the crop's border.
            padded = np.pad(mask.astype(np.float32), 1)
            rows = np.arange(-1, mask.shape[0] + 1) + offset[0]
            cols = np.arange(-1, mask.shape[1] + 1) + offset[1]
            axes.contour(cols, rows, padded, levels=[0.5], colors=[outline.colour], linestyles=outline.linestyle, linewidths=1.6)


def short_name(subject: str, limit: int = 22) -> str:
    """The subject id, its middle elided when longer than `limit` (DICOM UIDs) so the row label fits."""
    return subject if len(subject) <= limit else f"{subject[: limit // 2 - 1]}…{subject[-(limit // 2) :]}"


def figure_pixels(rows: int, dpi: int = 100) -> tuple[int, int]:
    """(width, height) in pixels of the figure for `rows` slices."""
    return round(len(COLUMNS) * PANEL_INCHES * dpi), round((rows * PANEL_INCHES + HEADER_INCHES) * dpi)


def overlay_figure(samples: Sequence[OverlaySample], title: str = "") -> Figure:
    """One row per sample: image | contours on the slice | enlarged lesion region with the slice's Dice."""
    if not samples:
        raise ValueError("overlay_figure needs at least one sample")
    rows = len(samples)
    height = rows * PANEL_INCHES + HEADER_INCHES
    figure = Figure(figsize=(len(COLUMNS) * PANEL_INCHES, height))
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, len(COLUMNS), squeeze=False)
    # The header holds the title and legend (top half) and the column titles (bottom half).
    figure.subplots_adjust(left=0.08, right=0.99, bottom=0.1 / height, top=1.0 - HEADER_INCHES / height, wspace=0.04, hspace=0.12)
    for row, (sample, axes) in enumerate(zip(samples, grid, strict=True)):
        picture = to_grey_rgb(sample.image)
        top, bottom, left, right = lesion_region(sample.target, sample.prediction)
        axes[0].imshow(picture, interpolation="nearest")
        axes[0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=REGION_COLOUR, linewidth=1.2))
        axes[0].set_ylabel(f"{short_name(sample.subject)}\nslice {sample.slice_index}", fontsize=9)
        axes[1].imshow(picture, interpolation="nearest")
        _contours(axes[1], sample.target, sample.prediction)
        axes[1].set_xlim(-0.5, picture.shape[1] - 0.5)
        axes[1].set_ylim(picture.shape[0] - 0.5, -0.5)
        axes[2].imshow(picture[top:bottom, left:right], interpolation="nearest", extent=(left - 0.5, right - 0.5, bottom - 0.5, top - 0.5))
        _contours(axes[2], sample.target[top:bottom, left:right], sample.prediction[top:bottom, left:right], (top, left))
        axes[2].set_xlim(left - 0.5, right - 0.5)
        axes[2].set_ylim(bottom - 0.5, top - 0.5)
        dice = slice_dice(sample.target, sample.prediction)
        axes[2].text(
            0.03,
            0.97,
            f"Dice {dice:.2f}\nlabel {int((sample.target > 0).sum())} px, predicted {int((sample.prediction > 0).sum())} px",
            transform=axes[2].transAxes,
            va="top",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 2},
        )
        for column, panel in enumerate(axes):
            panel.set_xticks([])
            panel.set_yticks([])
            if row == 0:
                panel.set_title(COLUMNS[column], fontsize=10)
    handles = [Line2D([], [], color=outline.colour, linestyle=outline.linestyle, linewidth=2, label=outline.label) for outline in (GROUND_TRUTH, PREDICTION)]
    handles.append(Line2D([], [], color=REGION_COLOUR, linewidth=1.2, label="enlarged region"))
    figure.legend(handles=handles, loc="upper right", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.99, 1.0 - 0.02 / height))
    if title:
        figure.text(0.01, 1.0 - 0.1 / height, title, fontsize=11, va="top", weight="bold")
    return figure


def figure_to_rgb(figure: Figure, dpi: int = 100) -> np.ndarray:
    """The figure rendered as an (H, W, 3) uint8 array (for loggers that take images)."""
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
