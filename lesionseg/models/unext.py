"""UNeXt: a convolutional + tokenised-MLP U-shaped network (Valanarasu & Patel, MICCAI 2022,
"UNeXt: MLP-based Rapid Medical Image Segmentation Network", arXiv:2203.04967).

Three convolutional stages (conv 3x3 -> BatchNorm -> 2x2 max-pool -> ReLU), then two tokenised
shifted-MLP stages (3x3 stride-2 patch embedding + LayerNorm -> shifted-MLP block -> LayerNorm);
the decoder mirrors it with 3x3 conv -> BatchNorm -> bilinear x2 -> ReLU and *adds* the skips.

We follow the authors' released code (github.com/jeya-maria-jose/UNeXt-pytorch, `archs.py`), which
differs from the paper in these ways:

- widths: conv stages 16/32/128 and MLP stages 160/256 (`UNext`), or 8/16/32 and 64/128
  (`UNext_S`); the paper states 32/64/128/160/256. This gives exactly 1,471,921 and 253,561
  trainable parameters for 3 input channels and 1 class (the paper's "1.47M"); at 256x256 UNeXt
  costs 0.562 GMACs (the paper's "0.57 GFLOPs").
- the shifted MLP shifts channel groups along the *height* first (before fc1) and along the
  *width* second (before fc2), with fc1 -> depthwise 3x3 conv -> GELU in between; LayerNorm is
  applied *before* the MLP (pre-norm residual), not after as the paper's figure draws it.
- the last decoder conv (16 -> 16) has no BatchNorm; there is no final activation (logits).
- drop-path and dropout (both 0 in the released configuration) are left out; the released code
  also builds an unused `Softmax` (no parameters) which we omit. Every parameter is used in the
  forward pass, so every parameter receives a gradient.
- the released first conv ignores `input_channels` and always takes 3; ours takes `in_channels`.

Any input size works: the input is zero-padded to a multiple of 32 (five halvings) and the logits
are cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.models.base import PaddedSegmenter

SHIFT_GROUPS = 5
"""Channels are split into 5 groups shifted by -2, -1, 0, 1, 2 pixels (released code)."""


def shift_channel_groups(tokens: torch.Tensor, axis: int, groups: int = SHIFT_GROUPS) -> torch.Tensor:
    """Shift channel group g of `tokens` (B, H, W, C) by g - groups // 2 pixels along `axis` (1 = H,
    2 = W), filling with zeros: the "shift" of UNeXt's shifted MLP."""
    reach = groups // 2
    padding = [0, 0, 0, 0, 0, 0]  # F.pad order: C, W, H (last dimension first)
    padding[2 * (3 - axis)] = padding[2 * (3 - axis) + 1] = reach
    padded = F.pad(tokens, padding)
    chunks = padded.chunk(groups, dim=-1)
    shifted = torch.cat([chunk.roll(offset, dims=axis) for chunk, offset in zip(chunks, range(-reach, reach + 1))], dim=-1)
    return shifted.narrow(axis, reach, tokens.shape[axis])


def init_token_layers(module: nn.Module) -> None:
    """The released code's initialisation of the MLP stages: truncated-normal Linear weights
    (std 0.02), unit LayerNorms, He-normal (fan-out) convolutions, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map: the per-token norm of the MLP stages."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ShiftedMLPBlock(nn.Module):
    """Tokenised shifted-MLP block on a (B, C, H, W) map, residual and pre-normalised:
    x + fc2(shift_W(GELU(dwconv(fc1(shift_H(LN(x)))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, channels)
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x.permute(0, 2, 3, 1))
        tokens = self.fc1(shift_channel_groups(tokens, axis=1))
        tokens = self.act(self.dwconv(tokens.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        tokens = self.fc2(shift_channel_groups(tokens, axis=2))
        return x + tokens.permute(0, 3, 1, 2)


class TokenizedStage(nn.Sequential):
    """Encoder MLP stage: 3x3 stride-2 patch embedding + LayerNorm, shifted-MLP block, LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
            ChannelLayerNorm(out_channels),
            ShiftedMLPBlock(out_channels),
            ChannelLayerNorm(out_channels),
        )
        self.apply(init_token_layers)


class ConvStage(nn.Sequential):
    """Encoder conv stage: 3x3 conv -> BatchNorm -> 2x2 max-pool -> ReLU (released order)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )


class UpStage(nn.Module):
    """Decoder stage: 3x3 conv (-> BatchNorm) -> bilinear x2 -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.norm(self.conv(x)), scale_factor=2, mode="bilinear")
        return F.relu(x)


class DecoderMLP(nn.Sequential):
    """Decoder MLP stage after the skip add: shifted-MLP block, LayerNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__(ShiftedMLPBlock(channels), ChannelLayerNorm(channels))
        self.apply(init_token_layers)


class UNeXt(PaddedSegmenter):
    """UNeXt as released: `conv_widths` (3 conv stages) and `token_widths` (2 MLP stages).

    Args:
        in_channels: image channels.
        num_classes: output logit channels (1 for binary lesion).
        conv_widths: widths of the conv stages, (16, 32, 128) for UNeXt, (8, 16, 32) for UNeXt-S.
        token_widths: widths of the MLP stages, (160, 256) for UNeXt, (64, 128) for UNeXt-S.
    """

    stride = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_widths: tuple[int, int, int] = (16, 32, 128),
        token_widths: tuple[int, int] = (160, 256),
    ) -> None:
        super().__init__()
        c1, c2, c3 = conv_widths
        t1, t2 = token_widths
        self.encoder = nn.ModuleList([ConvStage(in_channels, c1), ConvStage(c1, c2), ConvStage(c2, c3), TokenizedStage(c3, t1)])
        self.bottleneck = TokenizedStage(t1, t2)
        self.up = nn.ModuleList([UpStage(t2, t1), UpStage(t1, c3), UpStage(c3, c2), UpStage(c2, c1), UpStage(c1, c1, batch_norm=False)])
        self.decoder_mlps = nn.ModuleList([DecoderMLP(t1), DecoderMLP(c3)])
        self.head = nn.Conv2d(c1, num_classes, kernel_size=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(x)
        for level, up in enumerate(self.up):
            x = up(x)
            if skips:
                x = x + skips.pop()
            if level < len(self.decoder_mlps):
                x = self.decoder_mlps[level](x)
        return self.head(x)
