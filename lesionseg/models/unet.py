"""U-Net (Ronneberger et al., MICCAI 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation") with BatchNorm, in the two decoder flavours the literature compares.

- `upsampling="upsample_conv"` (default): nearest x2 upsample -> 3x3 conv-BN-ReLU halving the
  channels, then concat with the skip. This is the U-Net baseline of the X-Net comparison
  (Qi et al., MICCAI 2019, Table 1: 34.5M parameters at 64..1024 channels; we reach 34.53M).
- `upsampling="transposed"`: 2x2 stride-2 transposed conv halving the channels (the classic
  paper's "up-convolution"): ~31.0M at 64 channels, and at `base_channels=32` with 3 input
  channels exactly the 7,763,041-parameter U-Net of Buda et al. 2019 (brain-segmentation-pytorch).
  Buda's decoder concatenates `[upsampled, skip]` (`concat_order="upsampled_first"`, set by
  `experiment=unet_lgg`); `buda_state_dict` renames his released weights' keys to this model's.

Each stage is two 3x3 conv-BN-ReLU; convs followed by BatchNorm carry no bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from lesionseg.models.base import ConcatOrder, UShapedNet
from lesionseg.models.blocks import ConvBNReLU

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


class UNet(UShapedNet):
    """U-Net: `depth` poolings, channels `base_channels * 2**i`, logits at input resolution.

    Args:
        in_channels: image channels.
        num_classes: output logit channels (1 for binary lesion).
        base_channels: channels of the first stage (64 in the paper, 32 in Buda et al.).
        depth: number of 2x2 max-poolings (4 in the paper); the input is padded to a multiple
            of 2**depth and the output cropped back.
        upsampling: decoder upsampling, see the module docstring.
        concat_order: channel order of each decoder stage's input, `skip_first` ([skip, upsampled])
            or `upsampled_first` ([upsampled, skip], as Buda et al.'s released code).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        upsampling: Upsampling = "upsample_conv",
        concat_order: ConcatOrder = "skip_first",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if concat_order not in ("skip_first", "upsampled_first"):
            raise ValueError(f"concat_order must be 'skip_first' or 'upsampled_first', got {concat_order!r}")
        self.concat_order = concat_order
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.stride = 2**depth
        self.encoder = nn.ModuleList(DoubleConv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(up_block(widths[i + 1], widths[i], upsampling) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)


BUDA_DEPTH = 4


def buda_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Buda et al.'s released U-Net weights (brain-segmentation-pytorch `unet.py`) under this model's keys.

    For `UNet(3, 1, base_channels=32, upsampling="transposed", concat_order="upsampled_first")`:
    `encoder1.enc1conv1.weight` -> `encoder.0.0.0.weight`, `bottleneck.*` -> `encoder.4.*`,
    `upconv4.*` -> `ups.0.*`, `decoder4.dec4norm2.*` -> `decoder.0.1.1.*`, `conv.*` -> `head.*`.
    An unknown key is a ValueError naming it.
    """
    renamed = {}
    for key, value in state.items():
        if key.startswith("conv."):
            renamed["head." + key.removeprefix("conv.")] = value
            continue
        match = re.fullmatch(r"upconv(\d)\.(.+)", key)
        if match:
            renamed[f"ups.{BUDA_DEPTH - int(match[1])}.{match[2]}"] = value
            continue
        match = re.fullmatch(r"(encoder|decoder|bottleneck)(\d?)\.(?:enc|dec|bottleneck)\d?(conv|norm)([12])\.(.+)", key)
        if not match:
            raise ValueError(f"not a key of Buda's U-Net: {key!r}")
        part, level, layer, index, rest = match.groups()
        stage = f"encoder.{BUDA_DEPTH}" if part == "bottleneck" else f"encoder.{int(level) - 1}" if part == "encoder" else f"decoder.{BUDA_DEPTH - int(level)}"
        renamed[f"{stage}.{int(index) - 1}.{0 if layer == 'conv' else 1}.{rest}"] = value
    return renamed
