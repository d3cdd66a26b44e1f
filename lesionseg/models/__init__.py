"""Segmentation networks: plain `nn.Module`s, one file per paper, built from `conf/model/*.yaml`.

Every model maps (B, C_in, H, W) images to (B, K, H, W) logits for any H, W (or to a dict with
"seg" logits and "cls" lesion logits); `catalog.py` lists the configs and their papers' figures,
`python -m lesionseg.models` prints them. The classes below import lazily, so importing the
catalog (or one model) does not pull in smp, MONAI and torchvision's model zoo.
"""

from __future__ import annotations

import importlib
from typing import Any

EXPORTS = {
    "XNet": "xnet",
    "UNet": "unet",
    "SegNet": "segnet",
    "DenseUNet": "dense_unet",
    "ResUNet": "resunet",
    "UNeXt": "unext",
    "LRASPPMobileNetV3": "lraspp",
    "SegmentationClassifier": "segclassifier",
    "SMPModel": "generic",
    "NNUNet2D": "generic",
    "MaskDINO": "maskdino",
}
__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{EXPORTS[name]}"), name)
