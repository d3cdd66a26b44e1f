"""Per-volume preprocessing applied once, when a case enters the slice store.

Defaults reproduce X-Net (Qi et al., MICCAI 2019, released code): 233x197 ATLAS slices cropped to
224x192 (rows 5:229, cols 2:194) and intensities divided by 100. Other papers' choices are options:
per-volume max or brain z-score normalisation, percentile clipping, pad or resize to a target size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

Normalisation = Literal["constant", "max", "zscore", "none"]
ResizeMode = Literal["pad", "resize"]


@dataclass(frozen=True)
class Preprocess:
    """How a decoded volume (Z, C, H, W) becomes stored slices.

    crop: ((row_start, row_stop), (col_start, col_stop)) applied first to every slice, or None.
    target_size: (H, W) after cropping, reached by `resize_mode` ("pad": zero-pad or centre-crop,
        "resize": bilinear image / nearest mask), or None to keep the size.
    normalisation: "constant" (divide by `scale`), "max" (per-volume max), "zscore" (per volume, over
        nonzero brain voxels; background stays 0), "none".
    clip_percentiles: (low, high) percentiles of the nonzero voxels to clip to before normalising.
    """

    crop: tuple[tuple[int, int], tuple[int, int]] | None = None
    target_size: tuple[int, int] | None = None
    resize_mode: ResizeMode = "pad"
    normalisation: Normalisation = "constant"
    scale: float = 100.0
    clip_percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in ("constant", "max", "zscore", "none"):
            raise ValueError(f"preprocess.normalisation={self.normalisation!r}: use constant, max, zscore or none")
        if self.resize_mode not in ("pad", "resize"):
            raise ValueError(f"preprocess.resize_mode={self.resize_mode!r}: use pad or resize")
        if self.normalisation == "constant" and not self.scale > 0:
            raise ValueError(f"preprocess.scale={self.scale}: must be > 0")
        if self.clip_percentiles is not None and not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ValueError(f"preprocess.clip_percentiles={self.clip_percentiles}: need 0 <= low < high <= 100")

    @classmethod
    def from_config(cls, options: Mapping | None) -> Preprocess:
        """Build from the `data.preprocess` mapping (lists become tuples; unknown keys are an error)."""
        options = dict(options or {})
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"data.preprocess: unknown keys {sorted(unknown)}; known: {known}")

        def as_tuple(value):  # nested lists from YAML (or OmegaConf ListConfig) -> hashable tuples
            is_list = isinstance(value, Sequence) and not isinstance(value, str)
            return tuple(as_tuple(v) for v in value) if is_list else value

        return cls(**{key: as_tuple(value) for key, value in options.items()})

    def fingerprint(self) -> dict:
        """The parameters that key the slice store."""
        return asdict(self)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(Z, C, H, W) float image and (Z, H, W) uint8 mask -> preprocessed float32 image and mask."""
        image = self._normalise(image.astype(np.float32, copy=False))
        if self.crop is not None:
            (r0, r1), (c0, c1) = self.crop
            if r1 > image.shape[2] or c1 > image.shape[3]:
                raise ValueError(f"preprocess.crop={self.crop} does not fit slices of size {image.shape[2:]}")
            image = image[:, :, r0:r1, c0:c1]
            mask = None if mask is None else mask[:, r0:r1, c0:c1]
        if self.target_size is not None and tuple(image.shape[2:]) != tuple(self.target_size):
            if self.resize_mode == "pad":
                image = _pad_or_crop(image, self.target_size)
                mask = None if mask is None else _pad_or_crop(mask, self.target_size)
            else:
                image, mask = _resize(image, mask, self.target_size)
        return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)

    def restore(self, planes: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_NEAREST_EXACT) -> np.ndarray:
        """Map model-space planes (..., H', W') back onto the decoded slice grid (..., H, W) = `size`.

        The inverse of the geometric steps of `__call__`: undo pad/centre-crop (exact) or resize
        (`interpolation`: nearest for masks, linear for probabilities), then put the crop back in
        place; what lay outside the crop is 0. Used to write predictions in the scan's own geometry.
        """
        if self.crop is not None:
            (r0, r1), (c0, c1) = self.crop
            cropped_size = (r1 - r0, c1 - c0)
        else:
            cropped_size = (int(size[0]), int(size[1]))
        if tuple(planes.shape[-2:]) != cropped_size:
            if self.resize_mode == "pad":
                planes = _pad_or_crop(planes, cropped_size)
            else:
                planes = _resize_planes(planes, cropped_size, interpolation)
        if self.crop is None:
            return np.ascontiguousarray(planes)
        restored = np.zeros((*planes.shape[:-2], *size), dtype=planes.dtype)
        restored[..., r0:r1, c0:c1] = planes
        return restored

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        brain = image != 0
        if self.clip_percentiles is not None and brain.any():
            low, high = np.percentile(image[brain], self.clip_percentiles)
            image = np.where(brain, np.clip(image, low, high), 0.0).astype(np.float32)
        if self.normalisation == "constant":
            return image / np.float32(self.scale)
        if self.normalisation == "max":
            peak = float(np.abs(image).max())
            return image / np.float32(peak) if peak > 0 else image
        if self.normalisation == "zscore":
            if not brain.any():
                return image
            values = image[brain]
            std = float(values.std()) or 1.0
            return np.where(brain, (image - float(values.mean())) / std, 0.0).astype(np.float32)
        return image


def _pad_or_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre zero-pad or centre-crop the last two axes to `size`."""
    for axis, target in zip((-2, -1), size):
        current = array.shape[axis]
        if current < target:
            before = (target - current) // 2
            widths = [(0, 0)] * array.ndim
            widths[axis] = (before, target - current - before)
            array = np.pad(array, widths)
        elif current > target:
            start = (current - target) // 2
            array = np.take(array, np.arange(start, start + target), axis=axis)
    return array


def _resize_planes(planes: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize every (H, W) plane of a (..., H, W) array to `size` with an OpenCV interpolation."""
    height, width = size
    flat = planes.reshape(-1, *planes.shape[-2:])
    dtype = planes.dtype
    working = flat.astype(np.float32) if dtype not in (np.uint8, np.float32) else flat
    resized = np.stack([cv2.resize(plane, (width, height), interpolation=interpolation) for plane in working])
    return resized.astype(dtype, copy=False).reshape(*planes.shape[:-2], height, width)


def _resize(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear image / nearest-neighbour mask resize of every slice to `size` (H, W)."""
    image = _resize_planes(image, size, cv2.INTER_LINEAR)
    return image, None if mask is None else _resize_planes(mask, size, cv2.INTER_NEAREST_EXACT)
