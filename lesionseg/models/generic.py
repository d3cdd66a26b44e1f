"""Generic networks from the field's libraries, behind our model contract (any input size, logits).

- `SMPModel`: any segmentation_models_pytorch architecture and encoder (Iakubovskii, 2019,
  github.com/qubvel-org/segmentation_models.pytorch), random init or a local weights file, never a
  download. DeepLabV3+ (Chen et al., ECCV 2018, "Encoder-Decoder with Atrous Separable Convolution
  for Semantic Image Segmentation") is this wrapper with ASPP rates 6/12/18 at output stride 16.
- `NNUNet2D`: MONAI's DynUNet configured as nnU-Net's 2D network (Isensee et al., Nature Methods
  2021, "nnU-Net: a self-configuring method for deep learning-based biomedical image
  segmentation"): the pooling and kernel plan follows nnU-Net's rule for the patch size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from monai.networks.nets import DynUNet
from torch import nn

from lesionseg.models.blocks import crop_to, pad_to_multiple


class SMPModel(nn.Module):
    """A segmentation_models_pytorch model: `arch` (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ...)
    on `encoder_name`, padded to the encoder's output stride and cropped back.

    Args:
        in_channels: image channels.
        num_classes: output logit channels.
        arch: smp architecture name (case-insensitive, as `smp.create_model` takes it).
        encoder_name: smp encoder name (`resnet34`, `efficientnet-b0`, `tu-<timm model>`, ...).
        encoder_weights: must stay None: smp would download them. Use `weights_path` instead.
        weights_path: optional local file holding a state dict of the whole model or of its encoder.
        **arch_kwargs: further arguments of the smp architecture (e.g. `decoder_atrous_rates`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        arch: str = "Unet",
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        weights_path: str | None = None,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__()
        if encoder_weights is not None:
            raise ValueError(
                f"encoder_weights={encoder_weights!r} would download weights; this project never downloads: "
                "save them to a file and set weights_path=<file> instead"
            )
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            **arch_kwargs,
        )
        if weights_path is not None:
            load_weights(self.net, Path(weights_path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return crop_to(self.net(pad_to_multiple(x, self.net.encoder.output_stride)), size)


def load_weights(net: nn.Module, path: Path) -> None:
    """Load a state dict of the whole smp model, or of its encoder, from the local file `path`.

    The file's keys decide which: whichever of model and encoder shares more keys with it.
    Raises FileNotFoundError / ValueError naming the file when it is missing or does not fit.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or non-tensor files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable PyTorch state dict ({reason})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    model_overlap = len(state.keys() & net.state_dict().keys())
    encoder = net.encoder
    assert isinstance(encoder, nn.Module)
    encoder_overlap = len(state.keys() & encoder.state_dict().keys())
    target, name = (net, "model") if model_overlap > encoder_overlap else (encoder, "encoder")
    try:
        target.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"{path}: does not fit the {name}: {key_mismatch(state, target.state_dict())}") from None


def key_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """One line naming the first few missing, unexpected and wrongly shaped keys of `state`."""
    problems = {
        "missing": [key for key in expected if key not in state],
        "unexpected": [key for key in state if key not in expected],
        "wrong shape": [key for key in expected if key in state and state[key].shape != expected[key].shape],
    }
    return "; ".join(f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for kind, keys in problems.items() if keys)


def nnunet_2d_plan(patch_size: Sequence[int], min_feature_map_size: int = 4) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's 2D pooling plan for a patch: (kernel sizes, strides), one entry per stage.

    Each axis is halved while its feature map stays >= `min_feature_map_size` (nnU-Net's 4), so
    an axis of size s is pooled floor(log2(s / 4)) times; the first stage has stride 1 and all
    kernels are 3x3 (isotropic 2D spacing).
    """
    if len(patch_size) != 2 or min(patch_size) < 2 * min_feature_map_size:
        raise ValueError(f"patch_size must be 2 sizes >= {2 * min_feature_map_size}, got {list(patch_size)}")
    pools_per_axis = [int(math.log2(size / min_feature_map_size)) for size in patch_size]
    strides = [[1, 1]] + [[2 if stage <= pools else 1 for pools in pools_per_axis] for stage in range(1, max(pools_per_axis) + 1)]
    kernels = [[3, 3] for _ in strides]
    return kernels, strides


class NNUNet2D(nn.Module):
    """MONAI DynUNet as nnU-Net's 2D U-Net for `patch_size`: two 3x3 conv-InstanceNorm-LeakyReLU
    per stage, widths 32 * 2**stage capped at 512, strided-conv downsampling, transposed-conv
    upsampling. Inputs are zero-padded to a multiple of the total stride and cropped back.

    Deep supervision (off by default) adds nnU-Net's auxiliary heads: one per decoder stage except
    the two coarsest (nnU-Net gives the coarsest output weight 0). In training mode the forward
    then returns `{"seg": full-resolution logits, "deep_supervision": (B, N, K, H, W) auxiliary
    logits upsampled to the input size}`; the loss must add their terms (nnU-Net weights them
    1/2, 1/4, ... and normalises). In eval mode it always returns the logits tensor.

    Args:
        in_channels: image channels.
        num_classes: output logit channels.
        patch_size: the training patch (H, W) the plan is made for; any size runs.
        deep_supervision: add the auxiliary heads, see above.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: Sequence[int] = (224, 192),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        kernels, strides = nnunet_2d_plan(patch_size)
        self.stride = max(math.prod(axis) for axis in zip(*strides))
        self.deep_supervision = deep_supervision
        self.net = DynUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            deep_supervision=deep_supervision,
            deep_supr_num=max(len(strides) - 3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        out = crop_to(self.net(pad_to_multiple(x, self.stride)), size)
        if self.training and self.deep_supervision:  # DynUNet stacks full-res and auxiliary outputs
            return {"seg": out[:, 0], "deep_supervision": out[:, 1:]}
        return out
