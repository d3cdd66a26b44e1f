"""Layers shared by several model files: conv-BN-ReLU and pad-to-stride / crop-back.

Every model accepts any input height and width: it pads the input up to a multiple of its total
stride (zeros at the bottom and right, so pixel (0, 0) stays aligned) and crops the logits back
to the input size, so the output size always equals the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """k x k convolution (no bias: BatchNorm follows) -> BatchNorm -> ReLU, size-preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of `x` (B, C, H, W) so H and W are multiples of `multiple`."""
    height, width = x.shape[-2:]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return x
    return F.pad(x, (0, pad_right, 0, pad_bottom))


def crop_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Crop `x` (B, C, H', W') to its top-left `size` = (H, W): undoes `pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
