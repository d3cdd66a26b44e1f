"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017, "SegNet: A Deep Convolutional
Encoder-Decoder Architecture for Image Segmentation"), the baseline of the X-Net comparison.

Encoder: the 13 convolutions of VGG16 with BatchNorm (conv with bias -> BN -> ReLU, the layout of
torchvision's `vgg16_bn`), five 2x2 max-pools that remember their argmax indices. Decoder: the
mirror image; each stage max-unpools with the indices of its encoder stage (no learned upsampling)
and convolves, the last conv of a stage mapping to the next stage's width. As in the authors'
Caffe model the final 3x3 conv produces the class logits without BN or ReLU.

With 1 input channel and 1 class: 29,442,433 parameters, 0.2% under the 29.5M of X-Net's Table 1.
"""

from __future__ import annotations

import torch
from torch import nn

from lesionseg.models.base import PaddedSegmenter

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """VGG16-BN unit: 3x3 conv (with bias, as in VGG) -> BN -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def conv_stack(widths: list[int]) -> nn.Sequential:
    """Consecutive VGG units through `widths` = [in, out1, out2, ...]."""
    return nn.Sequential(*(vgg_conv(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])))


class SegNet(PaddedSegmenter):
    """VGG16-BN encoder with pooling indices, mirrored decoder with max-unpooling, 3x3 logit conv.

    Args:
        in_channels: image channels.
        num_classes: output logit channels.
    """

    stride = 2 ** len(VGG16_STAGES)

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        stage_inputs = [in_channels] + [widths[-1] for widths in VGG16_STAGES[:-1]]
        self.encoder = nn.ModuleList(conv_stack([c_in, *widths]) for c_in, widths in zip(stage_inputs, VGG16_STAGES))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        # Decoder stage i mirrors encoder stage i: same widths, ending at the width that entered it.
        decoder = [conv_stack([*widths, c_in]) for c_in, widths in zip(stage_inputs[1:], VGG16_STAGES[1:])]
        first_width = VGG16_STAGES[0][0]
        decoder.insert(0, nn.Sequential(vgg_conv(first_width, first_width), nn.Conv2d(first_width, num_classes, 3, padding=1)))
        self.decoder = nn.ModuleList(reversed(decoder))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for stage in self.encoder:
            x = stage(x)
            unpooled_size = x.shape[-2:]
            x, indices = self.pool(x)
            pooled.append((indices, unpooled_size))
        for stage in self.decoder:
            indices, unpooled_size = pooled.pop()
            x = stage(self.unpool(x, indices, output_size=unpooled_size))
        return x
