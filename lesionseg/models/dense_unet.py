"""2D Dense-UNet (Li et al., IEEE TMI 2018, "H-DenseUNet: Hybrid Densely Connected UNet for Liver
and Tumor Segmentation from CT Volumes"), the 2D branch used as a baseline in the X-Net comparison,
following the authors' released Keras code (github.com/xmengli/H-DenseUNet, `denseunet.py`).

Encoder: DenseNet-161 (growth rate 48, 96 initial features, dense blocks 6/12/36/24, compression
0.5), taken from torchvision with random weights. Decoder (the code's "upsample-add" path): five
nearest x2 upsamplings; the first four add an encoder feature map (the stem, dense blocks 1-3; the
2112-channel block-3 map first goes through a 1x1 conv to 2208 channels) and apply a 3x3
conv-BN-ReLU to 768/384/96/96 channels; the fifth upsamples to full resolution and applies a
3x3 conv (64) -> dropout 0.3 -> BN -> ReLU; a 1x1 conv gives the logits. Decoder convs keep their
bias as Keras does by default.

With 1 input channel and 1 class: 49,518,305 parameters (encoder 26,462,592, decoder 23,055,713),
1.0% under the 50.0M of X-Net's Table 1. The Keras encoder follows every BatchNorm with a `Scale`
layer, a second learned per-channel affine; counting its gamma/beta (219,936) gives 49,738,241.
A PyTorch BatchNorm's own affine computes the same function, so we do not duplicate it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import densenet161

from lesionseg.models.base import PaddedSegmenter


class UpAddConv(nn.Module):
    """Nearest x2 upsample, add the skip feature map, 3x3 conv (with bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(self.upsample(x) + skip)


class DenseUNet(PaddedSegmenter):
    """DenseNet-161 encoder + upsample-add decoder, logits at input resolution.

    Args:
        in_channels: image channels (the stem conv is rebuilt for anything but 3).
        num_classes: output logit channels.
        dropout: dropout after the last decoder conv (0.3 in the released code).
    """

    stride = 32

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.3) -> None:
        super().__init__()
        features = densenet161(weights=None).features
        if in_channels != 3:
            features.conv0 = nn.Conv2d(in_channels, 96, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(features.conv0, features.norm0, features.relu0)  # 96 ch, 1/2
        self.block1 = nn.Sequential(features.pool0, features.denseblock1)  # 384 ch, 1/4
        self.block2 = nn.Sequential(features.transition1, features.denseblock2)  # 768 ch, 1/8
        self.block3 = nn.Sequential(features.transition2, features.denseblock3)  # 2112 ch, 1/16
        self.block4 = nn.Sequential(features.transition3, features.denseblock4, features.norm5, nn.ReLU(inplace=True))
        self.lift_block3 = nn.Conv2d(2112, 2208, kernel_size=1)  # the code's "line0"
        self.up0 = UpAddConv(2208, 768)
        self.up1 = UpAddConv(768, 384)
        self.up2 = UpAddConv(384, 96)
        self.up3 = UpAddConv(96, 96)
        self.up4 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(96, 64, 3, padding=1),
            nn.Dropout(dropout),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(64, num_classes, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        skip1 = self.block1(stem)
        skip2 = self.block2(skip1)
        skip3 = self.block3(skip2)
        x = self.up0(self.block4(skip3), self.lift_block3(skip3))
        x = self.up1(x, skip2)
        x = self.up2(x, skip1)
        x = self.up3(x, stem)
        return self.head(self.up4(x))
