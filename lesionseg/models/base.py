"""The frames the hand-written models share: pad -> logits -> crop, and the U-shaped encoder/decoder loop.

`PaddedSegmenter`: any input height and width; the input is padded up to a multiple of the
model's total `stride` (`blocks.pad_to_multiple`) and the logits cropped back, so every model's
output has its input's size. Subclasses compute `logits` of a padded input.

`UShapedNet`: the U-Net family (U-Net, X-Net): encoder stages with a pooling before every stage
but the first, a bottleneck step, then per level an up-sampling, a concatenation with the skip of
the same resolution and a decoder stage, and a 1x1 head. Subclasses build `encoder`, `pool`,
`ups`, `decoder` and `head` (keeping their own parameter names) and may override `bottleneck`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import nn

from lesionseg.models.blocks import crop_to, pad_to_multiple

ConcatOrder = Literal["skip_first", "upsampled_first"]


class PaddedSegmenter(nn.Module, ABC):
    """Pads the input to a multiple of `stride`, computes `logits`, crops them to the input size (abstract: subclasses define `logits`)."""

    stride: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crop_to(self.logits(pad_to_multiple(x, self.stride)), x.shape[-2:])

    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) logits of an input whose H and W are multiples of `stride`."""


class UShapedNet(PaddedSegmenter):
    """Encoder/decoder with skip concatenations; see the module docstring for the attributes to build.

    `concat_order` is the channel order of each decoder stage's input: `[skip, upsampled]`
    (`skip_first`) or `[upsampled, skip]` (`upsampled_first`). Both train alike from scratch,
    but weights trained with one order give wrong outputs under the other.
    """

    encoder: nn.ModuleList
    pool: nn.Module
    ups: nn.ModuleList
    decoder: nn.ModuleList
    head: nn.Module
    concat_order: ConcatOrder = "skip_first"

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Applied to the deepest encoder stage's output (identity unless a model adds a block there)."""
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x if level == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the deepest stage's output is `x` itself
        x = self.bottleneck(x)
        for up, stage in zip(self.ups, self.decoder):
            pair = (skips.pop(), up(x))
            x = stage(torch.cat(pair if self.concat_order == "skip_first" else pair[::-1], dim=1))
        return self.head(x)
