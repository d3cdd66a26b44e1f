"""Dilated segmenter + lesion classifier, after the few-label stroke study (Kalmutskiy & Berikov,
"Training of deep neural networks with incomplete training information on the example of
recognition of tomographic images", 2021; seed 003).

The study's model has two parts: a segmenter, "an encoder and a decoder with skip-connections and
higher dilation parameter", and a classifier, "a linear layer with sigmoid at the output of the
encoder"; segmentation is kept only where the classifier sees a stroke (gating happens at
inference, outside the model: `inference.cls_gate`). The study gives no widths, so we build it from
segmentation_models_pytorch: a U-Net decoder on a ResNet encoder whose deep stages are dilated
instead of strided (`output_stride=8`: the stride-16 and stride-32 stages run at stride 8 with
dilation 2 and 4), and smp's classification head on the deepest encoder features (global average
pool -> linear). The sigmoid is left to the loss and the inference path, as for every model here.

Default (ResNet-18 encoder, output stride 8, decoder 256/128/64/32/16): 14,322,450 parameters for
1 input channel and 1 class. Random init; no weights are downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from lesionseg.models.blocks import crop_to, pad_to_multiple


class SegmentationClassifier(nn.Module):
    """U-Net with a dilated encoder and an image-level lesion classifier.

    Returns `{"seg": (B, num_classes, H, W) logits, "cls": (B, 1) lesion-present logit}`.

    Args:
        in_channels: image channels.
        num_classes: segmentation logit channels (1 for binary lesion).
        encoder_name: any segmentation_models_pytorch encoder (random init).
        output_stride: 8 or 16: the encoder's deepest stride, the stages below it are dilated.
        decoder_channels: widths of the U-Net decoder blocks, one per encoder stage.
        classifier_dropout: dropout before the classifier's linear layer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet18",
        output_stride: int = 8,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        classifier_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.net = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            decoder_channels=tuple(decoder_channels),
            aux_params={"classes": 1, "pooling": "avg", "dropout": classifier_dropout},
            output_stride=output_stride,
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        seg, cls = self.net(pad_to_multiple(x, self.net.encoder.output_stride))
        return {"seg": crop_to(seg, size), "cls": cls}
