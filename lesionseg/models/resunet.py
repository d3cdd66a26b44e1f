"""Deep Residual U-Net (Zhang, Liu & Wang, IEEE GRSL 2018, "Road Extraction by Deep Residual U-Net").

A U-Net of full pre-activation residual units (He et al. 2016, BN -> ReLU -> conv, twice, plus a
shortcut): an encoder of three units (64/128/256; units 2-3 downsample with a stride-2 first conv),
a bridge unit (512, stride 2) and a decoder of three units (256/128/64), each fed the nearest x2
upsampled previous output concatenated with the encoder skip; a 1x1 conv gives the logits. The
first unit sees the raw image, so it starts with its conv (conv -> BN -> ReLU -> conv).

Parameters: the paper states 7.8M (vs 30.6M for its U-Net); its Table 1 lists only the 15
convolutions, which with their BatchNorms hold 7,789,313 (3 input channels, 1 class). Where a unit
changes width or resolution the paper does not say how the shortcut matches the shapes; we use the
usual projection (1x1 conv with the unit's stride, + BN; He et al. 2016), which adds 434,496: the
model has 8,223,809 parameters with 3 input channels, 8,222,529 with 1 input channel (5.4% over
the paper's figure, all of it in the shortcuts).
"""

from __future__ import annotations

import torch
from torch import nn

from lesionseg.models.base import PaddedSegmenter


def pre_activation(channels: int) -> nn.Sequential:
    """BN -> ReLU, the pre-activation in front of each conv of a residual unit."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class ResidualUnit(nn.Module):
    """Full pre-activation residual unit: [BN-ReLU]-conv3x3(stride)-BN-ReLU-conv3x3 + shortcut.

    `first=True` drops the leading BN-ReLU (the unit that reads the image). The shortcut is the
    identity when shape is kept, else a 1x1 conv with the unit's stride followed by BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Identity() if first else pre_activation(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            pre_activation(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ResUNet(PaddedSegmenter):
    """Deep ResUnet: 3 encoder units, a bridge, 3 decoder units, 1x1 logit conv.

    Args:
        in_channels: image channels.
        num_classes: output logit channels.
        base_channels: width of the first level, doubled per level (64 in the paper).
    """

    stride = 8

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(4)]  # 64, 128, 256, bridge 512
        self.encoder = nn.ModuleList(
            [
                ResidualUnit(in_channels, widths[0], first=True),
                ResidualUnit(widths[0], widths[1], stride=2),
                ResidualUnit(widths[1], widths[2], stride=2),
            ]
        )
        self.bridge = ResidualUnit(widths[2], widths[3], stride=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList(ResidualUnit(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(3)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        x = self.bridge(x)
        for unit in self.decoder:
            x = unit(torch.cat([self.upsample(x), skips.pop()], dim=1))
        return self.head(x)
