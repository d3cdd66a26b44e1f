"""Paper figures for every model config: the single source for `python -m lesionseg.models` and tests.

Each entry names a `conf/model/<config>.yaml`, the input the paper measured at, and the parameter
count the paper (or released code) reports. `tolerance` is relative (0.0 means exact); `target=None`
means "report only" (no published figure to match).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperFigure:
    """What a model config must reproduce."""

    config: str
    source: str
    target_params: int | None
    tolerance: float
    in_channels: int = 1
    num_classes: int = 1
    input_size: tuple[int, int] = (224, 192)
    overrides: tuple[str, ...] = ()
    loss: str | None = None  # the `conf/loss` config a model trains with when it is not a plain logits loss


CATALOG: tuple[PaperFigure, ...] = (
    PaperFigure("xnet", "X-Net, Qi et al. MICCAI 2019 (released Keras code)", 15_072_332, 0.005),
    PaperFigure("unet", "U-Net baseline of the X-Net comparison", 34_500_000, 0.01),
    PaperFigure("unet_small", "the same U-Net at 16 base channels (CPU default; no paper)", None, 0.0),
    PaperFigure("segnet", "SegNet, Badrinarayanan et al. 2017 (X-Net table)", 29_500_000, 0.01),
    PaperFigure("dense_unet", "2D Dense-UNet, Li et al. 2018 H-DenseUNet (X-Net table)", 50_000_000, 0.015),
    PaperFigure("resunet", "ResUNet, Zhang et al. 2018 (paper: 7.8M, shortcut projections not counted)", None, 0.0),
    PaperFigure("unext", "UNeXt, Valanarasu & Patel 2022 (released code)", 1_471_921, 0.0, 3, 1, (256, 256)),
    PaperFigure("unext_s", "UNeXt-S, Valanarasu & Patel 2022 (released code)", 253_561, 0.0, 3, 1, (256, 256)),
    PaperFigure("lraspp_mnv3", "MobileNetV3-Small + LR-ASPP, LGG study (seed 001)", 310_000, 0.03, 3, 1, (256, 256)),
    PaperFigure("lraspp_mnv3_skip", "the same with extra stride-4/2 skips (seed 001)", 312_000, 0.03, 3, 1, (256, 256)),
    PaperFigure("deeplabv3plus", "DeepLabV3+, Chen et al. ECCV 2018 (smp, ResNet-34, ASPP 6/12/18)", None, 0.0),
    PaperFigure("segclassifier", "dilated U-Net + lesion classifier, few-label stroke study (seed 003)", None, 0.0),
    PaperFigure("smp", "segmentation_models_pytorch (any arch/encoder)", None, 0.0),
    PaperFigure("dynunet", "MONAI DynUNet as nnU-Net 2D, Isensee et al. 2021", None, 0.0),
    # 13,697,907 parameters, 2.62 GMACs at 224x192 (the paper: ResNet-50 or Swin-L, 256 wide, 6 + 9 layers).
    PaperFigure("maskdino", "Mask DINO, Li et al. CVPR 2023 (small: ResNet-18, 128 wide, 3 + 6 layers)", None, 0.0, loss="mask_set"),
)
