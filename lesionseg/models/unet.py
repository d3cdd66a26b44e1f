"""U-Net (Ronneberger et al., MICCAI 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation") with BatchNorm, in the two decoder flavours the literature compares.

- `upsampling="upsample_conv"` (default): nearest x2 upsample -> 3x3 conv-BN-ReLU halving the
  channels, then concat with the skip. This is the U-Net baseline of the X-Net comparison
  (Qi et al., MICCAI 2019, Table 1: 34.5M parameters at 64..1024 channels; we reach 34.53M).
- `upsampling="transposed"`: 2x2 stride-2 transposed conv halving the channels (the classic
  paper's "up-convolution"): ~31.0M at 64 channels, and at `base_channels=32` with 3 input
  channels exactly the 7,763,041-parameter U-Net of Buda et al. 2019 (brain-segmentation-pytorch).

Each stage is two 3x3 conv-BN-ReLU; convs followed by BatchNorm carry no bias.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lesionseg.models.blocks import ConvBNReLU, crop_to, pad_to_multiple

Upsampling = Literal["upsample_conv", "transposed"]


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU: one U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


def up_block(in_channels: int, out_channels: int, upsampling: Upsampling) -> nn.Module:
    """Double the resolution and map `in_channels` to `out_channels` before the skip concat."""
    if upsampling == "upsample_conv":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(in_channels, out_channels))
    if upsampling == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    raise ValueError(f"upsampling must be 'upsample_conv' or 'transposed', got {upsampling!r}")


class UNet(nn.Module):
    """U-Net: `depth` poolings, channels `base_channels * 2**i`, logits at input resolution.

    Args:
        in_channels: image channels.
        num_classes: output logit channels (1 for binary lesion).
        base_channels: channels of the first stage (64 in the paper, 32 in Buda et al.).
        depth: number of 2x2 max-poolings (4 in the paper); the input is padded to a multiple
            of 2**depth and the output cropped back.
        upsampling: decoder upsampling, see the module docstring.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        upsampling: Upsampling = "upsample_conv",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.stride = 2**depth
        self.encoder = nn.ModuleList(DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(up_block(widths[i + 1], widths[i], upsampling) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = pad_to_multiple(x, self.stride)
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x if level == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is `x` itself
        for up, stage in zip(self.ups, self.decoder):
            x = stage(torch.cat([skips.pop(), up(x)], dim=1))
        return crop_to(self.head(x), size)
