"""Flip test-time augmentation: the model's logits averaged over the image and its flipped copies.

From the few-label stroke study (horizontal-flip TTA); nnU-Net mirrors along every axis the same
way. Logits are averaged per member; an ensemble then averages the members' probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


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
