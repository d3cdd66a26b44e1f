"""Unit tests of the inference building blocks: flip TTA, component clean-up, deep-supervision weights."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from lesionseg.inference.cleanup import clean_mask, count_components, min_voxels
from lesionseg.inference.settings import InferenceSettings
from lesionseg.inference.tta import flip_tta
from lesionseg.losses import Dice
from lesionseg.module import SegmentationModule


def column_ramp(image: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits depend on the column: flipping the input changes its output."""
    return image + torch.arange(image.shape[-1], dtype=image.dtype)


def test_flip_tta_averages_the_views_flipped_back() -> None:
    image = torch.randn(2, 1, 5, 7)
    expected = (column_ramp(image) + torch.flip(column_ramp(torch.flip(image, [3])), [3])) / 2
    assert torch.allclose(flip_tta(column_ramp, image, [[3]]), expected)


def test_flip_tta_changes_nothing_for_a_flip_equivariant_model_and_without_flips() -> None:
    image = torch.randn(1, 1, 6, 6)
    equivariant = nn.Conv2d(1, 1, 1)  # a pointwise model commutes with flips
    with torch.no_grad():
        assert torch.allclose(flip_tta(equivariant, image, [[2], [3], [2, 3]]), equivariant(image), atol=1e-6)
        assert torch.equal(flip_tta(column_ramp, image, []), column_ramp(image))


def test_flip_tta_reuses_given_logits() -> None:
    image = torch.randn(1, 1, 4, 4)
    given = torch.zeros(1, 1, 4, 4)
    assert torch.allclose(flip_tta(column_ramp, image, [[3]], logits=given), torch.flip(column_ramp(torch.flip(image, [3])), [3]) / 2)


def two_lesions_touching_at_a_corner() -> np.ndarray:
    volume = np.zeros((4, 8, 8), np.uint8)
    volume[0:2, 0:2, 0:2] = 1  # 8 voxels
    volume[2:4, 2:5, 2:5] = 1  # 18 voxels, shares only a corner with the first
    return volume


def test_keep_largest_follows_the_connectivity() -> None:
    volume = two_lesions_touching_at_a_corner()
    assert clean_mask(volume, InferenceSettings(keep_largest=True)).sum() == 26  # 26-connected: one lesion
    assert clean_mask(volume, InferenceSettings(keep_largest=True, connectivity=6)).sum() == 18
    assert count_components(volume, InferenceSettings()) == 1
    assert count_components(volume, InferenceSettings(connectivity=6)) == 2


def test_min_size_drops_small_components_in_voxels_and_millilitres() -> None:
    volume = two_lesions_touching_at_a_corner()
    kept = clean_mask(volume, InferenceSettings(min_size=10, connectivity=6))
    assert kept.sum() == 18 and kept[0:2, 0:2, 0:2].sum() == 0
    assert min_voxels(InferenceSettings(min_size_ml=0.01), voxel_ml=0.001) == 10  # 10 voxels of 1 mm^3
    assert clean_mask(volume, InferenceSettings(min_size_ml=0.01, connectivity=6), voxel_ml=0.001).sum() == 18
    with pytest.raises(ValueError, match="min_size_ml needs the voxel size"):
        clean_mask(volume, InferenceSettings(min_size_ml=0.01))


def test_slice_space_cleans_every_slice_alone_and_no_cleanup_only_binarises() -> None:
    volume = np.zeros((2, 6, 6), np.uint8)
    volume[0, :2, :2] = 1
    volume[0, 4:, 4:] = 1  # two lesions on slice 0: keep-largest per slice keeps one
    volume[1, 1:4, 1:4] = 3
    cleaned = clean_mask(volume, InferenceSettings(keep_largest=True, cleanup_space="slice"))
    assert cleaned[0].sum() == 4 and cleaned[1].sum() == 9
    assert set(np.unique(clean_mask(volume, InferenceSettings()))) == {0, 1}


def test_keep_largest_drops_a_largest_lesion_below_the_minimum() -> None:
    picture = np.zeros((8, 8), np.uint8)
    picture[:2, :2] = 1
    assert clean_mask(picture, InferenceSettings(keep_largest=True, min_size=5)).sum() == 0
