"""Inference-time refinements: flip test-time augmentation and connected-component clean-up.

Both are from the few-label stroke study (horizontal-flip TTA; keep the largest lesion component
and drop it when smaller than 1200 px) and are what nnU-Net also evaluates before trusting a mask.
The component logic is MONAI's `KeepLargestConnectedComponent`, applied to a copy because that
transform edits its input in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects


def flip_tta(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    flip_dims: Sequence[Sequence[int]],
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average the logits of the image and of each flipped copy (flipped back).

    `flip_dims=[[3]]` is the left-right flip of (B, C, H, W) input; `logits` of the unflipped image
    may be passed when already computed.
    """
    total = (logits if logits is not None else logits_fn(image)).float()
    for dims in flip_dims:
        dims = [int(d) for d in dims]
        total = total + torch.flip(logits_fn(torch.flip(image, dims)).float(), dims)
    return total / (1 + len(flip_dims))


class LesionCleanup:
    """Per-slice clean-up of a binary mask (B, H, W), bool or 0/1.

    `keep_largest`: keep only the largest component, and drop it when below `min_size` px.
    Otherwise `min_size > 0` removes every component below `min_size` px (MONAI's
    RemoveSmallObjects). `keep_largest=False, min_size=0` is the identity.
    """

    def __init__(self, keep_largest: bool = False, min_size: int = 0) -> None:
        self.keep_largest = keep_largest
        self.min_size = min_size
        self._largest = KeepLargestConnectedComponent(applied_labels=[1], independent=True, connectivity=2)
        self._small = RemoveSmallObjects(min_size=max(min_size, 1), connectivity=2)

    @property
    def active(self) -> bool:
        return self.keep_largest or self.min_size > 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return masks
        cleaned = masks.clone().long()
        for index in range(len(cleaned)):
            if self.keep_largest:
                cleaned[index] = self._largest(cleaned[index][None].clone())[0]
                if int(cleaned[index].sum()) < self.min_size:
                    cleaned[index] = 0
            else:
                cleaned[index] = torch.as_tensor(self._small(cleaned[index][None].clone())[0])
        return cleaned.to(masks.dtype)
