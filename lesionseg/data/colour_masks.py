"""Lesion masks recovered from labels drawn in colour on a copy of the slice.

Kalmutskiy & Berikov (2021, seed 003) received their 34 stroke labels as JPG copies of the DICOM
slices with the lesion outlined in green, and turned them into masks by "green mask, resize,
floodfill". Here: keep the pixels whose hue is near the label colour and that carry enough colour
(the greyscale slice underneath carries none, so it never matches), close small gaps that JPEG
compression tears in a thin outline, fill every closed outline, and resize to the DICOM grid.
Filling happens before resizing so a 1-pixel outline cannot break when shrunk. The mask reaches
the outer edge of the drawn line (and of JPEG's colour bleed around it, about one pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Hue in degrees (0-360) of the colours an annotation tool usually offers.
NAMED_HUES: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "magenta": 300.0,
}


@dataclass(frozen=True)
class LabelColour:
    """Which pixels of a label image belong to the drawing.

    `hue` is a name from NAMED_HUES or degrees (0-360); a pixel matches when its hue is within
    `hue_tolerance` degrees (circular, so red works) and its chroma, max(R, G, B) - min(R, G, B) as a
    fraction of 255, is at least `min_chroma`. Chroma rather than HSV saturation: a greyscale slice
    has none at any brightness, while a JPG-blurred green line on bright tissue keeps a useful
    amount (saturation there drops with the brightness of the tissue underneath).
    """

    hue: str | float = "green"
    hue_tolerance: float = 30.0
    min_chroma: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.hue, str) and self.hue not in NAMED_HUES:
            raise ValueError(f"unknown label colour {self.hue!r}; use one of {sorted(NAMED_HUES)} or degrees")

    @property
    def hue_degrees(self) -> float:
        return NAMED_HUES[self.hue] if isinstance(self.hue, str) else float(self.hue) % 360.0

    def match(self, label_rgb: np.ndarray) -> np.ndarray:
        """Boolean (H, W): pixels of an 8-bit RGB image drawn in this colour."""
        if label_rgb.ndim != 3 or label_rgb.shape[2] != 3:
            raise ValueError(f"a colour label needs 3 colour channels, got shape {label_rgb.shape}")
        hsv = cv2.cvtColor(label_rgb, cv2.COLOR_RGB2HSV)
        # OpenCV stores 8-bit hue as degrees / 2 (0-179).
        hue_distance = np.abs(hsv[..., 0].astype(np.float32) * 2.0 - self.hue_degrees)
        hue_distance = np.minimum(hue_distance, 360.0 - hue_distance)
        chroma = label_rgb.max(axis=2).astype(np.float32) - label_rgb.min(axis=2)
        return (hue_distance <= self.hue_tolerance) & (chroma >= self.min_chroma * 255.0)


def fill_outlines(drawn: np.ndarray) -> np.ndarray:
    """uint8 {0, 1}: every closed outline in a boolean drawing filled, after closing 1-pixel gaps."""
    closed = cv2.morphologyEx(drawn.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(closed)
    cv2.drawContours(filled, contours, -1, color=1, thickness=cv2.FILLED)
    return filled


def extract_colour_mask(label_rgb: np.ndarray, size: tuple[int, int], colour: LabelColour = LabelColour()) -> np.ndarray:
    """uint8 {0, 1} mask of shape `size` (H, W) from an RGB label image with outlines in `colour`."""
    filled = fill_outlines(colour.match(label_rgb))
    height, width = size
    if filled.shape == (height, width):
        return filled
    shrinking = height * width < filled.size
    resized = cv2.resize(
        filled.astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    return (resized >= 0.5).astype(np.uint8)
