"""X-Net (Qi et al., MICCAI 2019, "X-Net: Brain Stroke Lesion Segmentation Based on Depthwise
Separable Convolution and Long-Range Dependencies"), following the authors' released Keras code
(github.com/Andrewsher/X-Net, `model.py` and `FSM.py`).

A U-shaped net whose every stage is an XBlock (a 1x1 conv shortcut plus three depthwise-separable
conv units, added) and whose bottleneck ends in one Feature Similarity Module, a non-local block
capturing long-range dependencies. The decoder upsamples (nearest x2) and convolves instead of
unpooling. Where the code and the paper's figure differ we follow the code:

- every ordinary and pointwise conv keeps its bias, as Keras `Conv2D` does by default, even before
  BatchNorm; depthwise convs have none (`use_bias=False` in the code);
- the FSM first reduces to C/8 channels with a 3x3 conv-BN-ReLU and its theta/phi/g embeddings use
  C/16 channels; its affinity is the dot product divided by the number of positions N (no softmax);
- BatchNorm uses Keras defaults (epsilon 1e-3, momentum 0.99, i.e. PyTorch momentum 0.01);
- `init="keras"` (default) initialises as Keras 2.2.4 built the released model: every conv kernel
  He-normal (`kernel_initializer='he_normal'`, and `depthwise_initializer` for the depthwise ones),
  the output conv Glorot-uniform (Keras' default), every bias zero; `init="pytorch"` keeps torch's
  defaults. The released code's `l2(1e-5)` on the same 73 kernels (all but the output conv) is a
  training choice: `experiment=xnet_recipe` sets it as an optimizer parameter group.

With 1 input channel and 1 class this has 15,072,332 trainable parameters, exactly the count of
the released code (the paper's Table 1 rounds it to 15.1M).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from lesionseg.models.base import UShapedNet

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # Keras momentum 0.99 is the weight of the old running value
TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2], as Keras divides by it

Init = Literal["keras", "pytorch"]


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras' default epsilon and momentum, as the released model was trained."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class KerasConvBNReLU(nn.Sequential):
    """Keras `conv2d_bn_relu`: k x k conv (with bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            keras_batch_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Keras `depth_conv_bn_relu`: depthwise 3x3 (no bias) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            keras_batch_norm(in_channels),
            nn.ReLU(inplace=True),
            KerasConvBNReLU(in_channels, out_channels, kernel_size=1),
        )


class XBlock(nn.Module):
    """1x1 conv-BN-ReLU shortcut + three separable conv units, added (no activation after the add)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shortcut = KerasConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.body = nn.Sequential(
            SeparableConvBNReLU(in_channels, out_channels),
            SeparableConvBNReLU(out_channels, out_channels),
            SeparableConvBNReLU(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class FeatureSimilarityModule(nn.Module):
    """Non-local block at reduced width: Z_i = sum_j f(x_i, x_j) g(x_j) + x_i, f = theta.phi / N.

    channels -> 3x3 conv-BN-ReLU to channels/8 -> dot-product non-local (embeddings channels/16,
    no bias, residual) -> 3x3 conv-BN-ReLU back to channels -> + input.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = channels // 8
        embedding = max(reduced // 2, 1)
        self.reduce = KerasConvBNReLU(channels, reduced, kernel_size=3)
        self.theta = nn.Conv2d(reduced, embedding, 1, bias=False)
        self.phi = nn.Conv2d(reduced, embedding, 1, bias=False)
        self.g = nn.Conv2d(reduced, embedding, 1, bias=False)
        self.project = nn.Conv2d(embedding, reduced, 1, bias=False)
        self.expand = KerasConvBNReLU(reduced, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        batch, _, height, width = reduced.shape
        theta = self.theta(reduced).flatten(2).transpose(1, 2)  # (B, N, E)
        phi = self.phi(reduced).flatten(2)  # (B, E, N)
        g = self.g(reduced).flatten(2).transpose(1, 2)  # (B, N, E)
        affinity = torch.bmm(theta, phi) / (height * width)  # (B, N, N)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(batch, -1, height, width)
        return self.expand(reduced + self.project(y)) + x


def keras_fans(conv: nn.Conv2d) -> tuple[int, int]:
    """Keras' fan-in and fan-out of a conv kernel.

    Keras reads a kernel of shape (kh, kw, in, out) as kh*kw*in inputs and kh*kw*out outputs; a
    DepthwiseConv2D kernel is (kh, kw, channels, multiplier), so its fan-in counts every channel
    (PyTorch's (channels, 1, kh, kw) layout would count one).
    """
    receptive_field = conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return receptive_field * conv.in_channels, receptive_field * (conv.out_channels // conv.in_channels)
    return receptive_field * conv.in_channels // conv.groups, receptive_field * conv.out_channels


@torch.no_grad()
def keras_init(convs: list[nn.Conv2d], output: nn.Conv2d) -> None:
    """He-normal kernels (truncated at 2 std, std sqrt(2 / fan_in) after truncation, as Keras 2.2.4),
    a Glorot-uniform output kernel, zero biases."""
    for conv in [*convs, output]:
        fan_in, fan_out = keras_fans(conv)
        if conv is output:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(conv.weight, -limit, limit)
        else:
            std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(conv.weight, 0.0, std, -2.0 * std, 2.0 * std)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class XNet(UShapedNet):
    """X-Net: XBlock encoder (64..1024, 2x2 max-pool), FSM bottleneck, upsample-conv-concat-XBlock decoder.

    Args:
        in_channels: image channels (1 for T1w ATLAS in the paper).
        num_classes: output logit channels (1: the released code ends in a 1-unit sigmoid conv,
            which we leave to the loss).
        base_channels: width of the first stage; stages double it (64 in the paper).
        depth: number of poolings (4 in the paper); input padded to a multiple of 2**depth.
        init: `keras` (the released model's initialisation, see the module docstring) or `pytorch`.
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64, depth: int = 4, init: Init = "keras") -> None:
        super().__init__()
        if init not in ("keras", "pytorch"):
            raise ValueError(f"init must be 'keras' or 'pytorch', got {init!r}")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.stride = 2**depth
        self.encoder = nn.ModuleList(XBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.pool = nn.MaxPool2d(2)
        self.fsm = FeatureSimilarityModule(widths[-1])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), KerasConvBNReLU(widths[i + 1], widths[i], 3)) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(XBlock(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_channels, num_classes, kernel_size=1)
        if init == "keras":
            keras_init([m for m in self.modules() if isinstance(m, nn.Conv2d) and m is not self.head], self.head)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.fsm(x)
