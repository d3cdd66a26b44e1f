"""Brain-like phantoms with lesion blobs: the synthetic data every dataset writer draws from.

A skull-stripped ellipsoid brain (background exactly 0) with cortical grey matter around textured
white matter, two ventricles, a smooth multiplicative bias field and noise, plus 1-3 irregular
lesions (T1-hypointense by default, as ATLAS stroke lesions). Arrays are indexed like NIfTI voxels,
(x, y) or (x, y, z), with the ventricles side by side along x: the ATLAS writers use 3D volumes, and
slice-based writers (TIFF, DICOM, image folders) take 2D phantoms or cut 3D ones with
`nifti.axial_slices` (rows = y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WHITE_MATTER, GREY_MATTER, CSF = 110.0, 72.0, 28.0


@dataclass
class Phantom:
    """A phantom image (float32, T1-like units: white matter ~110, background 0) and its uint8 mask."""

    image: np.ndarray
    mask: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation.

    Smoothed on a grid coarser by about sigma/1.5, then linearly upsampled: same look, a fraction of the cost.
    """
    step = max(1, round(sigma / 1.5))
    coarse = rng.standard_normal([-(-n // step) + 1 for n in shape]).astype(np.float32)
    field = ndimage.gaussian_filter(coarse, sigma / step, mode="reflect")
    if step > 1:
        mode = "bilinear" if len(shape) == 2 else "trilinear"
        upsampled = F.interpolate(torch.from_numpy(field)[None, None], scale_factor=step, mode=mode)
        field = upsampled[0, 0].numpy()
    field = field[tuple(slice(0, n) for n in shape)]
    return field / (field.std() + 1e-8)


def _lesion(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: float, roughness: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """An irregular blob around `centre` (always containing it): a few overlapping jittered ellipsoids
    with a rough (noise-perturbed) edge. `radius` is in units of the first axis' voxels; `spacing` is
    each axis' voxel size in those units (thick slices: a lesion spans fewer of them)."""
    reach = 2.5 * radius / spacing
    box = tuple(slice(max(0, int(c - r)), min(n, int(c + r) + 1)) for c, r, n in zip(centre, reach, shape))
    coords = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij")
    blob = np.zeros(shape, dtype=bool)
    blob[tuple(int(c) for c in centre)] = True
    for _ in range(int(rng.integers(2, 5))):
        offset = rng.normal(0.0, 0.45 * radius, size=len(shape)) / spacing
        axes = radius * rng.uniform(0.55, 1.0, size=len(shape)) / spacing
        distance = sum(((c - (centre[i] + offset[i])) / axes[i]) ** 2 for i, c in enumerate(coords))
        blob[box] |= distance + 0.25 * roughness[box] < 1.0
    return blob


def phantom(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    num_lesions: tuple[int, int] = (1, 3),
    lesion_radius: tuple[float, float] = (0.06, 0.12),
    lesion_intensity: float = 45.0,
    noise: float = 4.0,
    spacing: tuple[float, ...] | None = None,
) -> Phantom:
    """A brain phantom of `shape` ((x, y) or (x, y, z)) with `num_lesions` (min, max) lesions, at least one.

    `lesion_radius` is a fraction of the smallest in-plane size; `lesion_intensity` is in the same
    units as white matter (110): below grey matter for T1-hypointense stroke, above 110 for
    FLAIR-hyperintense tumours. `spacing` gives each axis' voxel size relative to the first (default
    isotropic): lesions are drawn in physical units, so with 5x thicker slices one spans a fifth as
    many. Deterministic for a given `rng` state.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"phantom shape must be 2D or 3D, got {shape}")
    voxel = np.ones(len(shape), dtype=np.float32) if spacing is None else np.asarray(spacing, dtype=np.float32)
    if voxel.shape != (len(shape),) or (voxel <= 0).any():
        raise ValueError(f"phantom spacing {spacing} must give one positive size per axis of {shape}")
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre = np.array([(n - 1) / 2 for n in shape], dtype=np.float32)
    radii = np.array([0.44 * n for n in shape], dtype=np.float32) * rng.uniform(0.92, 1.0, size=len(shape))
    radius = sum(((c - centre[i]) / radii[i]) ** 2 for i, c in enumerate(coords)) ** 0.5
    sigma = max(1.0, min(shape[:2]) / 16)
    outline = radius + 0.03 * _smooth_noise(rng, shape, 2 * sigma)
    brain = outline < 1.0

    texture = _smooth_noise(rng, shape, sigma / 2)
    white = outline + 0.07 * _smooth_noise(rng, shape, sigma) < 0.8
    image = np.where(white, WHITE_MATTER + 4.0 * texture, GREY_MATTER + 6.0 * texture).astype(np.float32)

    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        middle = centre.copy()
        middle[0] += side * 0.12 * shape[0]
        axes = np.array([0.07, 0.22, 0.25][: len(shape)]) * np.array(shape)
        ventricles |= sum(((c - middle[i]) / axes[i]) ** 2 for i, c in enumerate(coords)) < 1.0
    image[ventricles] = CSF

    mask = np.zeros(shape, dtype=bool)
    eligible = np.argwhere((outline < 0.72) & ~ndimage.binary_dilation(ventricles, iterations=3))
    if not len(eligible):  # tiny phantoms: anywhere in the brain
        eligible = np.argwhere(brain)
    size = min(shape[:2])
    for _ in range(int(rng.integers(num_lesions[0], num_lesions[1] + 1))):
        lesion_centre = eligible[rng.integers(len(eligible))].astype(np.float32)
        blob = _lesion(rng, shape, lesion_centre, rng.uniform(*lesion_radius) * size, texture, voxel) & brain
        mask |= blob
    core = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
    image = image * (1 - core) + (lesion_intensity + 8.0 * texture) * core

    bias = 1.0 + 0.12 * _smooth_noise(rng, shape, 4 * sigma)
    image = image * bias + rng.normal(0.0, noise, size=shape).astype(np.float32)
    image = np.where(brain, np.maximum(image, 1.0), 0.0).astype(np.float32)
    return Phantom(image=image, mask=(mask & brain).astype(np.uint8))
