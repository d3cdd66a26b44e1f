"""Connected-component clean-up of binary masks, on the object the lesion lives in.

For a volumetric scan the mask is cleaned as one 3D volume (Z, H, W): "keep the largest lesion"
keeps one 3D component, not one per axial slice. Connectivity defaults to 26 in 3D (faces, edges
and corners, as ISLES'22's scorer and nnU-Net's post-processing label) and 8 in 2D; 6 or 18 (3D) and
4 (2D) are options. Sizes are voxels (`min_size`) or millilitres (`min_size_ml`, from the voxel
size; both may be set: a component must pass both). `cleanup_space: slice` cleans every slice
alone (for series of unrelated 2D slices, as in the few-label stroke study's DICOM slices).

The component logic is MONAI's (`KeepLargestConnectedComponent`, `RemoveSmallObjects`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects
from scipy import ndimage

from lesionseg.inference.settings import InferenceSettings

# Neighbourhood size -> MONAI/scikit-image connectivity (number of axes a neighbour may differ in).
CONNECTIVITY_RANK = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}
DEFAULT_CONNECTIVITY = {2: 8, 3: 26}


def _rank(connectivity: int | None, ndim: int) -> int:
    """MONAI's connectivity for an ndim-dimensional mask; ValueError for a 3D size on 2D masks."""
    size = DEFAULT_CONNECTIVITY[ndim] if connectivity is None else connectivity
    if (ndim == 2) != (size in (4, 8)):
        raise ValueError(f"inference.connectivity={size} does not apply to {ndim}D masks (2D: 4 or 8; 3D: 6, 18 or 26)")
    return CONNECTIVITY_RANK[size]


def min_voxels(settings: InferenceSettings, voxel_ml: float | None) -> int:
    """The smallest component size kept, in voxels: `min_size`, and `min_size_ml` converted by the voxel size."""
    smallest = settings.min_size
    if settings.min_size_ml > 0:
        if voxel_ml is None:
            raise ValueError("inference.min_size_ml needs the voxel size, which this scan does not have; use inference.min_size (voxels)")
        smallest = max(smallest, math.ceil(settings.min_size_ml / voxel_ml - 1e-9))
    return smallest


def clean_mask(mask: np.ndarray, settings: InferenceSettings, voxel_ml: float | None = None) -> np.ndarray:
    """Clean-up of a binary (H, W) picture or (Z, H, W) volume; returns a new uint8 array.

    With `keep_largest` only the largest component remains, and is dropped when smaller than the
    minimum size; otherwise every component smaller than the minimum size is removed.
    """
    if not settings.cleans_up:
        return (np.asarray(mask) > 0).astype(np.uint8)
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.ndim == 3 and (settings.cleanup_space == "slice" or len(binary) == 1):
        return np.stack([clean_mask(plane, settings, voxel_ml) for plane in binary]) if len(binary) else binary
    rank = _rank(settings.connectivity, binary.ndim)
    smallest = min_voxels(settings, voxel_ml)
    tensor = torch.from_numpy(binary)[None]  # MONAI wants a channel axis
    if settings.keep_largest:
        kept = KeepLargestConnectedComponent(applied_labels=[1], independent=True, connectivity=rank)(tensor.clone())
        result = np.asarray(kept[0], dtype=np.uint8)
        return result if int(result.sum()) >= smallest else np.zeros_like(result)
    if smallest <= 1:
        return binary
    with warnings.catch_warnings():  # scikit-image >= 0.26 deprecates the min_size that MONAI passes on
        warnings.filterwarnings("ignore", message=".*min_size.*", category=FutureWarning)
        kept = RemoveSmallObjects(min_size=smallest, connectivity=rank)(tensor.clone())
    return np.asarray(kept[0], dtype=np.uint8)


def count_components(mask: np.ndarray, settings: InferenceSettings) -> int:
    """Number of lesions under the clean-up's own convention: 3D components at `inference.connectivity`
    (26 by default) for a volume, components per slice (8 by default) for `cleanup_space: slice` or a picture."""
    binary = np.asarray(mask) > 0
    if binary.ndim == 3 and (settings.cleanup_space == "slice" or len(binary) == 1):
        return sum(count_components(plane, settings) for plane in binary)
    structure = ndimage.generate_binary_structure(binary.ndim, _rank(settings.connectivity, binary.ndim))
    return int(ndimage.label(binary, structure=structure)[1])
