"""Validation overlays: image | ground truth | prediction, as PNG files and logger images.

A researcher looks at these before trusting a Dice number: they show whether the model finds the
lesion, over-segments, or predicts nothing. Ground truth is drawn in green, prediction in red.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, WandbLogger
from PIL import Image

GROUND_TRUTH_RGB = np.array([0, 220, 0], dtype=np.float32)
PREDICTION_RGB = np.array([230, 30, 30], dtype=np.float32)


@dataclass
class OverlaySample:
    """One slice: image (C, H, W) float, target and prediction (H, W) class indices."""

    image: np.ndarray
    target: np.ndarray
    prediction: np.ndarray
    caption: str


def to_grey_rgb(image: np.ndarray) -> np.ndarray:
    """First channel (or the RGB triple) scaled to 0..255 by its 1st/99th percentiles."""
    picture = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else np.repeat(image[0][..., None], 3, axis=2)
    low, high = np.percentile(picture, (1, 99))
    scaled = np.clip((picture - low) / max(high - low, 1e-6), 0.0, 1.0)
    return (scaled * 255.0).astype(np.float32)


def blend(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = rgb.copy()
    selected = mask > 0
    out[selected] = (1 - alpha) * out[selected] + alpha * colour
    return out


def render(sample: OverlaySample) -> np.ndarray:
    """(H, 3W, 3) uint8 strip: image, image + ground truth, image + prediction."""
    rgb = to_grey_rgb(sample.image)
    strip = np.concatenate([rgb, blend(rgb, sample.target, GROUND_TRUTH_RGB), blend(rgb, sample.prediction, PREDICTION_RGB)], axis=1)
    return strip.astype(np.uint8)


def save_overlay_grid(samples: Sequence[OverlaySample], path: Path) -> Path:
    """Stack the strips of every sample (padded to a common width) into one PNG."""
    strips = [render(sample) for sample in samples]
    width = max(strip.shape[1] for strip in strips)
    padded = [np.pad(strip, ((0, 2), (0, width - strip.shape[1]), (0, 0))) for strip in strips]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)
    return path


def log_overlays(samples: Sequence[OverlaySample], folder: Path | None, epoch: int, loggers: Sequence[Logger]) -> None:
    """Write `overlays/epoch_NNN.png` and send the slices to loggers that take images (wandb)."""
    if folder is not None:
        save_overlay_grid(samples, folder / f"epoch_{epoch:03d}.png")
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            images = [
                wandb.Image(
                    to_grey_rgb(sample.image).astype(np.uint8),
                    masks={
                        "ground_truth": {"mask_data": sample.target.astype(np.uint8), "class_labels": {1: "lesion"}},
                        "prediction": {"mask_data": sample.prediction.astype(np.uint8), "class_labels": {1: "lesion"}},
                    },
                    caption=sample.caption,
                )
                for sample in samples
            ]
            logger.experiment.log({"val/overlays": images, "epoch": epoch})
