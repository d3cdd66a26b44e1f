"""What a saliency map explains, per slice.

Segmentation output: the model's own predicted lesion mask. Gradient methods (Grad-CAM, Grad-CAM++)
backpropagate the lesion logit summed over that mask (pytorch-grad-cam's
`SemanticSegmentationTarget`); perturbation methods (LIME, occlusion) and the ROAD score measure how
much of the prediction survives a perturbation as the lesion score: the mean lesion probability
inside the original mask (a score against the original mask, in 0..1; soft Dice was tried and is
dominated by the diffuse low probabilities of a briefly trained model far from the lesion).

**Fallback**: when a scan's prediction is empty there is no mask to explain, so the target becomes
the soft lesion probability map (the same formulas with the probabilities as weights), on the
slices with the largest probability mass; rows and figures say `target=probability`.
`cls` output: the classifier's lesion logit (gradients) and probability (perturbations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

MASK, PROBABILITY = "mask", "probability"


@dataclass(frozen=True)
class Target:
    """The thing explained on one slice: `weights` (H, W) over the lesion class `category`."""

    weights: np.ndarray
    kind: str  # MASK or PROBABILITY (the empty-prediction fallback)
    output: str = "seg"
    category: int = 0
    multiclass: bool = False

    def gradient_target(self) -> SemanticSegmentationTarget | ClassifierOutputTarget:
        """pytorch-grad-cam target: the lesion logit summed over the weights (or the `cls` logit)."""
        if self.output == "cls":
            return ClassifierOutputTarget(0)
        return SemanticSegmentationTarget(self.category, self.weights.astype(np.float32))

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """How much of the explained prediction survives in `output` ((K, H, W) or (B, K, H, W)): 0..1."""
        batched = output if output.ndim == (4 if self.output == "seg" else 2) else output[None]
        if self.output == "cls":
            return torch.sigmoid(batched[:, 0])
        if self.multiclass:
            probability = batched.softmax(dim=1)[:, self.category]
        else:
            probability = torch.sigmoid(batched[:, self.category])
        weights = torch.from_numpy(self.weights.astype(np.float32)).to(probability.device)
        scores = (probability * weights).flatten(1).sum(dim=1) / weights.sum().clamp_min(1e-6)
        return scores if output.ndim == batched.ndim else scores[0]

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """pytorch-grad-cam's target interface (ROAD metrics): the score of one sample's output."""
        return self.score(output)


def slice_targets(mask: np.ndarray, probability: np.ndarray, count: int) -> tuple[list[int], str]:
    """Slices to explain (largest predicted lesion area first) and the target kind.

    `mask` (Z, H, W) predicted lesion, `probability` (Z, H, W) lesion probability. An empty
    prediction takes the fallback: the slices with the largest probability mass.
    """
    area = mask.reshape(len(mask), -1).sum(axis=1)
    if area.any():
        order = [int(z) for z in np.argsort(-area, kind="stable") if area[z] > 0]
        return order[:count], MASK
    mass = probability.reshape(len(probability), -1).sum(axis=1)
    return [int(z) for z in np.argsort(-mass, kind="stable")[:count]], PROBABILITY
