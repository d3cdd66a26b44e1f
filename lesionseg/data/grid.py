"""Cut slices into a K x K grid of sub-images and put per-tile predictions back together.

Kalmutskiy & Berikov (2021, "Training of deep neural networks with incomplete training
information", seed 003) train their stroke segmenter on the 16 sub-images of a 4 x 4 grid instead
of random crops (16 times more samples from 34 labelled slices) and predict the same way: cut the
slice, predict every tile, reassemble. `merge_grid(split_grid(x, k), k, x.shape[-2:])` returns `x`
exactly; a side not divisible by K is zero-padded at the bottom/right and cropped back on merge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def tile_size(height: int, width: int, grid: int) -> tuple[int, int]:
    """Height and width of one tile when an (height, width) slice is cut into grid x grid tiles."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    return math.ceil(height / grid), math.ceil(width / grid)


def split_grid(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * grid * grid, C, h, w): each image's tiles in row-major order."""
    height, width = images.shape[-2:]
    tile_h, tile_w = tile_size(height, width, grid)
    padded = F.pad(images, (0, tile_w * grid - width, 0, tile_h * grid - height))
    return rearrange(padded, "b c (gy h) (gx w) -> (b gy gx) c h w", gy=grid, gx=grid)


def merge_grid(tiles: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `split_grid`: (B * grid * grid, C, h, w) tiles -> (B, C, H, W) with (H, W) = size."""
    if tiles.shape[0] % (grid * grid):
        raise ValueError(f"{tiles.shape[0]} tiles is not a whole number of {grid}x{grid} grids")
    merged = rearrange(tiles, "(b gy gx) c h w -> b c (gy h) (gx w)", gy=grid, gx=grid)
    return merged[..., : size[0], : size[1]]


def predict_in_grid(model: nn.Module, images: torch.Tensor, grid: int) -> torch.Tensor | dict[str, torch.Tensor]:
    """Run `model` on every tile of `images` and reassemble full-slice logits (the paper's inference).

    A model with a classification head returns `{"seg", "cls"}`; the slice's `cls` logit is the
    largest of its tiles' (a slice holds a lesion when any of its sub-images does).
    """
    outputs = model(split_grid(images, grid))
    size = (images.shape[-2], images.shape[-1])
    if isinstance(outputs, dict):
        tile_cls = outputs["cls"].reshape(images.shape[0], grid * grid, -1)
        return {"seg": merge_grid(outputs["seg"], grid, size), "cls": tile_cls.amax(dim=1)}
    return merge_grid(outputs, grid, size)
