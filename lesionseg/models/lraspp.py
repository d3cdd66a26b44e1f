"""MobileNetV3 + LR-ASPP, the lightweight brain-tumour segmenter of the LGG study (Scognamiglio,
"Building a Convolutional Network for Brain Tumor Segmentation", seed 001: ~310 thousand
parameters, and ~312 thousand "with extra skip connections").

Backbone: torchvision's MobileNetV3 (Howard et al., ICCV 2019, "Searching for MobileNetV3"),
random init, with the segmentation settings of that paper: the last stage dilated (output stride
16) and optionally the "reduced tail" (last stage at half width). Head: torchvision's Lite R-ASPP
(same paper): a 1x1 conv-BN-ReLU branch gated by a global-pool -> 1x1 -> sigmoid branch on the
deepest features, upsampled and classified, plus a 1x1 classifier on the stride-8 features.

Configuration chosen (defaults): **MobileNetV3-Small** (the table the study shows), width
multiplier 0.75, reduced tail, head width 72: 310,106 parameters with 3 input channels and
1 class (310 thousand reported). The study gives no widths. Keeping its Small backbone and the
MobileNetV3 paper's segmentation setting (reduced tail, dilated last stage), width 0.75 is the
multiplier that leaves room for a head under the figure (backbone 275,304 parameters; width 1.0
alone has 438,704, width 0.5 only 131,960), and a head width of 72 lands on 310 thousand (64
gives 306,242; torchvision's default 128 gives 337,154).

Extra skips (`skip_strides=(4, 2)`): the head's gated features are upsampled to stride 8, then to
the stride-4 and stride-2 encoder stages, adding a 1x1 conv-BN-ReLU projection of each stage's
features (to the head width) at every step; both classifiers then run at stride 2. Each skip
costs (stage channels + 2) x head width = 1,296 parameters: 312,698 in all (312 thousand
reported). The study describes the skips only in words; this is our reading of it.

We tap the *last* block of each stride (torchvision's LR-ASPP taps the first stride-8 block;
both have the same width). Any input size works without padding: every upsampling goes to the
exact size of the map it joins, and the logits to the input size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.models.segmentation.lraspp import LRASPPHead
from torchvision.ops.misc import Conv2dNormActivation

LOW_STRIDE = 8
"""The LR-ASPP low-level branch reads the stride-8 features."""

BACKBONES = {"small": mobilenet_v3_small, "large": mobilenet_v3_large}


def block_strides(features: nn.Sequential) -> list[int]:
    """Output stride of every block of a MobileNetV3 `features`, from its convolutions' strides
    (a dilated block keeps its input's stride)."""
    strides, total = [], 1
    for block in features:
        total *= math.prod(conv.stride[0] for conv in block.modules() if isinstance(conv, nn.Conv2d))
        strides.append(total)
    return strides


class LRASPPMobileNetV3(nn.Module):
    """MobileNetV3 backbone + Lite R-ASPP head, optionally with extra skips from `skip_strides`.

    Args:
        in_channels: image channels (the stem conv is rebuilt for them).
        num_classes: output logit channels (1 for binary lesion).
        variant: "small" or "large" MobileNetV3.
        width_mult: MobileNetV3 width multiplier.
        reduced_tail: halve the width of the last stage (MobileNetV3's segmentation setting).
        dilated: dilate the last stage instead of striding it (output stride 16).
        inter_channels: width of the LR-ASPP head.
        skip_strides: encoder strides (4 and/or 2) whose features join the head, deepest first.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        variant: Literal["small", "large"] = "small",
        width_mult: float = 0.75,
        reduced_tail: bool = True,
        dilated: bool = True,
        inter_channels: int = 72,
        skip_strides: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if variant not in BACKBONES:
            raise ValueError(f"variant must be one of {sorted(BACKBONES)}, got {variant!r}")
        skip_strides = tuple(skip_strides)
        if any(stride not in (2, 4) for stride in skip_strides) or list(skip_strides) != sorted(set(skip_strides), reverse=True):
            raise ValueError(f"skip_strides must be distinct values of (4, 2), deepest first, got {skip_strides}")
        backbone = BACKBONES[variant](weights=None, width_mult=width_mult, reduced_tail=reduced_tail, dilated=dilated)
        self.features = backbone.features
        stem = self.features[0][0]
        self.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=2, padding=1, bias=False)
        nn.init.kaiming_normal_(self.features[0][0].weight, mode="fan_out")

        strides = block_strides(self.features)
        channels = [block.out_channels for block in self.features]
        # Last block at each stride: index of the tap, keyed by stride; the deepest block is "high".
        self.taps = {stride: index for index, stride in enumerate(strides) if stride in (2, 4, LOW_STRIDE)}
        self.skip_strides = skip_strides
        self.head = LRASPPHead(channels[self.taps[LOW_STRIDE]], channels[-1], num_classes, inter_channels)
        self.skip_projections = nn.ModuleList(Conv2dNormActivation(channels[self.taps[stride]], inter_channels, kernel_size=1) for stride in skip_strides)

    def encode(self, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Backbone features at the tapped strides, and the deepest features."""
        tapped = {}
        wanted = {index: stride for stride, index in self.taps.items()}
        for index, block in enumerate(self.features):
            x = block(x)
            if index in wanted:
                tapped[wanted[index]] = x
        return tapped, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        tapped, high = self.encode(x)
        low = tapped[LOW_STRIDE]
        y = self.head.cbr(high) * self.head.scale(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear")
        for stride, projection in zip(self.skip_strides, self.skip_projections):
            skip = tapped[stride]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear") + projection(skip)
        low_logits = F.interpolate(self.head.low_classifier(low), size=y.shape[-2:], mode="bilinear")
        logits = self.head.high_classifier(y) + low_logits
        return F.interpolate(logits, size=size, mode="bilinear")
